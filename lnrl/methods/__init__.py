"""LightningModules named for the batches they eat; each arranges its batch, scores it and combines
registry losses (`base.LnrlModule`).

    SFTModule    SFT rows                 token losses (VFT)
    PairModule   chosen/rejected pairs    pairwise losses (DPO, length-averaged DPO, IPO, SimPO, weighted DPO, RPO)
    GroupModule  k responses per question group losses (AFT, KTO)
"""

from lnrl.methods.base import LnrlModule, Objective, Term
from lnrl.methods.groups import GroupModule
from lnrl.methods.pairs import PairModule
from lnrl.methods.sft import SFTModule

# Former names, kept so configs that name them in `_target_` still work: the same classes.
VFTModule = SFTModule
DPOModule = PairModule
WeightedDPOModule = PairModule  # weighted DPO is now a preset: conf/method/wdpo.yaml
AFTModule = GroupModule

__all__ = ["AFTModule", "DPOModule", "GroupModule", "LnrlModule", "Objective", "PairModule", "SFTModule", "Term",
           "VFTModule", "WeightedDPOModule"]
