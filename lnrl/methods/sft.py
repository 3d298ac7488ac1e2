"""SFTModule: training on SFT rows (question + gold solution), e.g. VFT, the AFT paper's step 1.

The primary loss is a token loss over the rows' completion tokens (`nll`: token-level NLL, the prompt
masked out). Extra terms (`method.extra_losses`) are token losses on the same rows.
"""

from __future__ import annotations

from lnrl.methods.base import LnrlModule, Objective


class SFTModule(LnrlModule):
    data_kind = "sft"
    loss_kind = "token"

    def objective(self, batch) -> Objective:
        scores = self.score(batch)
        refs = {"token": {"ref_scores": self.reference_scores(batch)}} if "token" in self.ref_kinds else {}
        return self.combine({"token": {"scores": scores}}, refs)
