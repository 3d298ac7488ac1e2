"""lnrl: align language models to reason better at math (VFT, AFT, DPO, weighted DPO)."""

__version__ = "0.1.0"
