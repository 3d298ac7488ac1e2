"""Logits -> per-sequence log-likelihoods of completion tokens.

The token at position t is scored by the logits at position t-1, and only positions where
`completion_mask` is 1 count (the mask is aligned with `input_ids`, so the first token can never be
scored). Everything is computed in float32 (float64 for float64 logits) whatever the logits' dtype.

Memory: a [B, T, V] float32 log-softmax is the largest tensor in a preference step. We never build
it. A custom autograd function computes log p(target) = logit[target] - logsumexp(logits) over
blocks of at most `chunk_tokens` positions, saves only the (bf16) logits and the float32 logsumexp
[B, T], and recomputes the softmax block by block in backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

NORMALIZE_MODES = ("sum", "mean")
CHUNK_TOKENS = 1024  # positions per float32 block: 1024 x 49152 x 4 B = 200 MB for SmolLM2's vocabulary


@dataclass(frozen=True, eq=False)
class SeqScores:
    """Per-sequence log-likelihood: `logp_sum[b] = sum_t log p(x_t | x_<t)` over the `n_tokens[b]`
    completion tokens of sequence b. Indexing slices the batch: `scores[:2]`, `scores[mask]`."""

    logp_sum: Tensor  # [B] float32
    n_tokens: Tensor  # [B] token counts (int64 from sequence_logps; any numeric dtype accepted)

    def __post_init__(self) -> None:
        if self.logp_sum.shape != self.n_tokens.shape or self.logp_sum.dim() != 1:
            raise ValueError(f"SeqScores: logp_sum and n_tokens must both be [B]; got "
                             f"{tuple(self.logp_sum.shape)} and {tuple(self.n_tokens.shape)}")

    def __len__(self) -> int:
        return self.logp_sum.shape[0]

    def __getitem__(self, index) -> SeqScores:
        if isinstance(index, int):  # keep the batch dimension
            index = slice(index, index + 1 if index != -1 else None)
        return SeqScores(self.logp_sum[index], self.n_tokens[index])

    def chunk(self, chunks: int = 2) -> tuple[SeqScores, ...]:
        """Split the batch, e.g. `chosen, rejected = scores.chunk(2)` for a [chosen; rejected] batch."""
        if len(self) % chunks:
            raise ValueError(f"SeqScores.chunk: batch of {len(self)} does not split into {chunks} equal parts")
        return tuple(SeqScores(lp, n) for lp, n in zip(self.logp_sum.chunk(chunks), self.n_tokens.chunk(chunks)))

    @staticmethod
    def cat(items: Sequence[SeqScores]) -> SeqScores:
        return SeqScores(torch.cat([s.logp_sum for s in items]), torch.cat([s.n_tokens for s in items]))

    def detach(self) -> SeqScores:
        return SeqScores(self.logp_sum.detach(), self.n_tokens.detach())

    def to(self, device: torch.device | str) -> SeqScores:
        return SeqScores(self.logp_sum.to(device), self.n_tokens.to(device))

    def normalized(self, mode: str) -> Tensor:
        return normalize(self, mode)


def check_normalize(mode: str, where: str = "normalize") -> str:
    if mode not in NORMALIZE_MODES:
        raise ValueError(f"{where}={mode!r} is not one of {', '.join(NORMALIZE_MODES)}")
    return mode


def normalize(scores: SeqScores, mode: str) -> Tensor:
    """`sum`: logp_sum. `mean`: logp_sum / max(n_tokens, 1), the per-token average log-likelihood
    (the length-averaged score of arXiv 2406.19188 and the AFT paper's s = (1/|c|) sum log p)."""
    check_normalize(mode)
    if mode == "sum":
        return scores.logp_sum
    return scores.logp_sum / scores.n_tokens.clamp(min=1).to(scores.logp_sum.dtype)


class _TargetLogProb(torch.autograd.Function):
    """out[b, t] = log_softmax(logits[b, t])[targets[b, t]] in float32 (float64 for float64 logits), t < T-1.

    d out[b,t] / d logits[b,t,v] = 1[v = target] - softmax(logits[b,t])[v], so backward needs only the
    logits and the saved logsumexp; the softmax is rebuilt one block at a time.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk_tokens: int) -> Tensor:
        B, T1 = targets.shape
        dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16/fp16 -> fp32; fp64 stays fp64
        out = torch.empty(B, T1, dtype=dtype, device=logits.device)
        lse = torch.empty_like(out)
        for rows, cols in _blocks(B, T1, chunk_tokens):
            block = logits[rows, cols].to(dtype)  # the only float32 copy alive, one block at a time
            lse[rows, cols] = torch.logsumexp(block, dim=-1)
            out[rows, cols] = block.gather(-1, targets[rows, cols, None]).squeeze(-1) - lse[rows, cols]
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk_tokens = chunk_tokens
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        logits, targets, lse = ctx.saved_tensors
        B, T1 = targets.shape
        grad = torch.empty_like(logits)
        grad[:, T1:] = 0  # the last position predicts nothing that is scored
        for rows, cols in _blocks(B, T1, ctx.chunk_tokens):
            g_out = grad_out[rows, cols, None].to(lse.dtype)
            g = torch.exp(logits[rows, cols].to(lse.dtype) - lse[rows, cols, None]).mul_(-g_out)
            g.scatter_add_(-1, targets[rows, cols, None], g_out)
            grad[rows, cols] = g.to(grad.dtype)
        return grad, None, None


def _blocks(B: int, T1: int, chunk_tokens: int):
    """(row slice, column slice) blocks of at most max(chunk_tokens, 1) positions covering [B, T1]."""
    cols = max(1, min(T1, chunk_tokens))
    rows = max(1, chunk_tokens // max(T1, 1))
    for r in range(0, B, rows):
        for c in range(0, T1, cols):
            yield slice(r, min(r + rows, B)), slice(c, min(c + cols, T1))


def _check_shapes(logits: Tensor, input_ids: Tensor, completion_mask: Tensor) -> None:
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2] or completion_mask.shape != input_ids.shape:
        raise ValueError(
            "sequence_logps: expected logits [B,T,V] with input_ids and completion_mask [B,T]; got "
            f"logits {tuple(logits.shape)}, input_ids {tuple(input_ids.shape)}, "
            f"completion_mask {tuple(completion_mask.shape)}")
    if not logits.is_floating_point():
        raise TypeError(f"sequence_logps: logits must be floating point, got {logits.dtype}")


def token_logps(logits: Tensor, input_ids: Tensor, completion_mask: Tensor,
                chunk_tokens: int = CHUNK_TOKENS) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of the scored tokens.

    Returns `(logps, mask)`, both [B, T-1]: `logps[b, t] = log p(input_ids[b, t+1] | input_ids[b, :t+1])`
    in float32, zero where `mask[b, t] = completion_mask[b, t+1]` is 0.
    """
    _check_shapes(logits, input_ids, completion_mask)
    mask = completion_mask[:, 1:] != 0
    # Masked-out targets may be any id (padding, -100 labels); point them at 0 so gather stays in range.
    targets = input_ids[:, 1:].masked_fill(~mask, 0).long()
    if targets.shape[1] == 0:
        return logits.new_zeros(targets.shape, dtype=torch.promote_types(logits.dtype, torch.float32)), mask
    logps = _TargetLogProb.apply(logits, targets, int(chunk_tokens))
    return logps * mask, mask


def sequence_logps(logits: Tensor, input_ids: Tensor, completion_mask: Tensor,
                   chunk_tokens: int = CHUNK_TOKENS) -> SeqScores:
    """SeqScores(logp_sum [B] float32, n_tokens [B] int64) of the completion tokens of each row."""
    logps, mask = token_logps(logits, input_ids, completion_mask, chunk_tokens)
    return SeqScores(logps.sum(-1), mask.sum(-1))
