"""One LightningModule per method; each arranges its batch, scores it and calls a registry loss."""

from lnrl.methods.aft import AFTModule
from lnrl.methods.base import LnrlModule
from lnrl.methods.dpo import DPOModule, WeightedDPOModule
from lnrl.methods.vft import VFTModule

__all__ = ["AFTModule", "DPOModule", "LnrlModule", "VFTModule", "WeightedDPOModule"]
