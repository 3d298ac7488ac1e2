"""PairModule: training on (chosen, rejected) pairs, for every pairwise loss of the registry.

DPO (sum or length-averaged), IPO, SimPO, weighted DPO and RPO are config presets of this module
(`conf/method/*.yaml`); the loss decides the objective. A batch holds B pairs as 2B rows, chosen rows
first (pair i = rows i and B+i), scored in one call (the fast path, `method.fast_scoring`, runs
each pair's prompt once for both rows; the plain path, one padded forward).

Per-pair weights are always passed to the pairwise terms: the data layer's weights when
`data.weight_field` is set (scaled to mean 1 over the data set), all ones otherwise, so weighted DPO is
plain DPO on weighted data. A pairwise loss that ignores weights is refused when the data has them.

Extra token terms (`method.extra_losses`, e.g. RPO's NLL) use the chosen rows' scores of the same call.

Papers: DPO arXiv 2305.18290; length-averaged DPO arXiv 2406.19188; weighted DPO on verifier-mined
hard negatives arXiv 2512.19728; RPO (DPO + NLL on the chosen side) arXiv 2404.19733.
"""

from __future__ import annotations

from lnrl.methods.base import LnrlModule, Objective


class PairModule(LnrlModule):
    data_kind = "pairs"
    loss_kind = "pairwise"
    takes_weights = True

    def objective(self, batch) -> Objective:
        chosen, rejected = self.score(batch).chunk(2)
        inputs = {"pairwise": {"policy_chosen": chosen, "policy_rejected": rejected, "weights": batch["weights"]},
                  "token": {"scores": chosen}}
        refs = {}
        if self.ref_kinds:
            ref_chosen, ref_rejected = self.reference_scores(batch).chunk(2)
            refs = {"pairwise": {"ref_chosen": ref_chosen, "ref_rejected": ref_rejected},
                    "token": {"ref_scores": ref_chosen}}
        return self.combine(inputs, refs)

    def batch_size(self, batch) -> int:
        return batch["input_ids"].shape[0] // 2
