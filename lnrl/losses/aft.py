"""AFT's constrained alignment loss: Wang et al. 2023, "Making Large Language Models Better
Reasoners with Alignment", https://arxiv.org/abs/2309.02144 (Sec. 3).

Each question (one `group_ids` value) has k sampled chains of thought, scored by the policy as
s = normalize(log pi(c|q)) (the paper: mean over tokens). With positives P (correct answer) and
negatives N, the paper's alignment term and its two proposed constraints:

    none       L_q = log(1 + sum_{p in P} sum_{n in N} exp(s_n - s_p))             (alignment term L_A alone)
    detached   the same with s_n held constant (stop-gradient): only positives are pushed up
    boundary   L_q = log(1 + sum_p sum_n [exp(s_n - s_p) + exp(T_p - s_n)]),
               B = min_{p in P} s_p - boundary,  T_p = 2B - s_p,   B and T_p held constant

`detached` and `boundary` are the paper's constrained alignment losses (both keep negative scores
from collapsing); `none` is the unconstrained ablation the paper uses to show that dropping the
constraint degrades the model.

For boundary, dL_q/ds_n = sum_p [exp(s_n - s_p) - exp(T_p - s_n)] / (1 + ...), and each bracket is 0
exactly when s_n - s_p = T_p - s_n, i.e. s_n = (T_p + s_p)/2 = B. Sign convention: dL/ds_n > 0 for
s_n > B (gradient descent lowers s_n) and dL/ds_n < 0 for s_n < B (descent raises it), so negative
scores settle at the boundary instead of collapsing, which is what keeps the model from degenerating.

Ranking variant (`ranks`, 1 = best, instead of `is_positive`): the same terms are summed inside one
log over every pair of rank levels a better than b, level a playing P and level b playing N, with
B_a = min_{p in a} s_p - boundary. Two levels give exactly the positive/negative form.

L = mean of L_q over questions with at least two levels; the others are counted in
"aft/skipped_groups" and contribute nothing (a batch with none gives a zero that is still in the graph).
`per_example` holds L_q per question in sorted group id order (0 for skipped ones).

Metrics: "scores/positive" and "scores/negative" (mean s; with ranks, positive = the question's best
level), "aft/boundary" (mean B), "aft/below_boundary" (share of compared negatives with s_n < B),
"aft/skipped_groups", "aft/groups". B is reported whatever the constraint, so the constraints and the
unconstrained ablation can be compared on it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lnrl.losses.registry import LossOutput, check_param, register_loss
from lnrl.scoring import SeqScores, check_normalize, normalize

CONSTRAINTS = ("none", "detached", "boundary")


@register_loss("aft")
class AFT:
    kind = "group"
    needs_reference = False
    uses_weights = False

    def __init__(self, constraint: str = "boundary", boundary: float = 0.5, normalize: str = "mean"):
        self.constraint = check_param("aft", "constraint", constraint, constraint in CONSTRAINTS,
                                      " | ".join(CONSTRAINTS))
        self.boundary = float(boundary)
        self.normalize = check_normalize(normalize, "loss 'aft': normalize")

    def __call__(self, scores: SeqScores, group_ids: Tensor, is_positive: Tensor | None = None,
                 ranks: Tensor | None = None) -> LossOutput:
        levels = _levels(len(scores), group_ids, is_positive, ranks)
        s = normalize(scores, self.normalize)
        # One host sync for the bookkeeping; the math below stays on s's device and in its graph.
        gids, lv = group_ids.tolist(), levels.tolist()
        members: dict = {}
        for i, g in enumerate(gids):
            members.setdefault(g, []).append(i)

        per_group, contributing, boundaries, below = [], [], [], []
        if ranks is None:
            positive = is_positive.bool().cpu()
        else:  # "positive" for the score metrics: at its question's best level
            best = {g: min(lv[i] for i in idx) for g, idx in members.items()}
            positive = torch.tensor([lv[i] == best[g] for i, g in enumerate(gids)], dtype=torch.bool)
        n_compared = 0
        zero = s.sum() * 0.0  # grad-connected zero: never NaN, never detached
        for g in sorted(members):
            idx = members[g]
            order = sorted({lv[i] for i in idx})
            if len(order) < 2:
                per_group.append(zero)
                continue
            terms = []
            for a in order[:-1]:
                p = s[[i for i in idx if lv[i] == a]]
                n = s[[i for i in idx if lv[i] > a]]
                b = p.detach().min() - self.boundary
                boundaries.append(b)
                below.append((n.detach() < b).sum())
                n_compared += n.numel()
                n_align = n.detach() if self.constraint == "detached" else n
                terms.append((n_align[None, :] - p[:, None]).flatten())  # s_n - s_p for every (p, n)
                if self.constraint == "boundary":
                    t = 2 * b - p.detach()
                    terms.append((t[:, None] - n[None, :]).flatten())  # T_p - s_n for every (p, n)
            lse = torch.logsumexp(torch.cat(terms), dim=0)
            per_group.append(torch.logaddexp(torch.zeros_like(lse), lse))  # log(1 + sum exp(terms))
            contributing.append(per_group[-1])

        loss = torch.stack(contributing).mean() if contributing else zero
        count = lambda x: torch.tensor(float(x), device=s.device)  # noqa: E731
        metrics = {"aft/skipped_groups": count(len(members) - len(contributing)), "aft/groups": count(len(members))}
        positive = positive.to(s.device)
        if positive.any():
            metrics["scores/positive"] = s.detach()[positive].mean()
        if (~positive).any():
            metrics["scores/negative"] = s.detach()[~positive].mean()
        if boundaries:
            metrics["aft/boundary"] = torch.stack(boundaries).mean()
            metrics["aft/below_boundary"] = torch.stack(below).sum() / n_compared
        per_example = torch.stack(per_group) if per_group else s.new_zeros(0)
        return LossOutput(loss, per_example, metrics)


def _levels(n: int, group_ids: Tensor, is_positive: Tensor | None, ranks: Tensor | None) -> Tensor:
    """Rank level per response, 1 = best: from `ranks`, or 1 for positives and 2 for negatives."""
    if (is_positive is None) == (ranks is None):
        raise ValueError("loss 'aft': pass exactly one of is_positive= (correct answer or not) or ranks= (1 = best)")
    given = ("is_positive", is_positive) if ranks is None else ("ranks", ranks)
    for name, t in (("group_ids", group_ids), given):
        if t.shape != (n,):
            raise ValueError(f"loss 'aft': {name} must be [N]={n} like scores, got {tuple(t.shape)}")
    if ranks is None:
        return 2 - is_positive.long()
    if ranks.is_floating_point() or (n and int(ranks.min()) < 1):
        raise ValueError("loss 'aft': ranks must be integers >= 1 (1 = best)")
    return ranks.long()
