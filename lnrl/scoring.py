"""Logits -> per-sequence log-likelihoods of completion tokens.

The token at position t is scored by the logits at position t-1, and only positions where
`completion_mask` is 1 count (the mask is aligned with `input_ids`, so the first token can never be
scored). Everything is computed in float32 (float64 for float64 logits) whatever the logits' dtype.

Memory: a [B, T, V] float32 log-softmax is the largest tensor in a preference step. We never build
it. A custom autograd function computes log p(target) = logit[target] - logsumexp(logits) over
blocks of at most `chunk_tokens` positions, saves only the (bf16) logits and the float32 logsumexp
[B, T], and recomputes the softmax block by block in backward.

Model level: `score_batch(model, batch)` (training) and `score_rows(model, rows)` (evaluation,
reference scores) return the same SeqScores as `sequence_logps(model(...).logits, ...)` without
running the LM head on prompt and padding positions, with each shared prompt run once and little
padding (see "the model-level fast path" below).
"""

from __future__ import annotations

import inspect
import logging
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

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


# -- the model-level fast path ------------------------------------------------------------------
#
# `score_batch(model, batch)` returns what `sequence_logps(model(**batch).logits, ...)` returns, with the
# same gradients, while doing less work:
#   head     the LM head and log-softmax run only on the hidden states that score a completion token,
#            in chunks (`_HeadTargetLogProb`); no [B, T, V] tensor exists, forward or backward;
#   prompts  rows with identical prompt ids (a pair's chosen and rejected, a group's k completions and
#            its gold row) run the prompt once; their completions attend to its keys and values,
#            gathered per row, so gradients reach the prompt computation from every completion; the
#            prefix all prompts share (the chat template's system turn) runs once per batch, when the
#            tokens it saves outweigh a call (CALL_COST_TOKENS: on CPU, not on GPU);
#   buckets  rows run without padding to the batch's longest row: sorted by length and cut into
#            sub-batches where padding costs more than another forward call.
# Models the split cannot reproduce (logit soft-capping or scaling, sliding windows, sharded heads)
# fall back to the plain path; `_capabilities` checks each model once on a 5-token probe.

HEAD_CHUNK_TOKENS = 256  # scored positions per [n, V] float32 block: 256 x 49152 x 4 B = 50 MB
# What one more forward+backward call costs, in padded token slots: sub-batches are cut where padding
# costs more. CPU, SmolLM2-135M fp32: ~0.25 s per call (every call's backward writes all weight
# gradients) vs ~8 ms per token, so ~30 tokens. GPU: launches and weight traffic dominate small calls.
CALL_COST_TOKENS = {"cpu": 32, "default": 4096}


class _HeadTargetLogProb(torch.autograd.Function):
    """out[i] = log_softmax(hidden[i] @ weight.T + bias)[targets[i]], blockwise, never storing [N, V].

    The logits are computed in the model's dtype (as its LM head would) and scored in float32.
    Backward recomputes each block's logits from the saved hidden states; with G = d out / d logits =
    g * (onehot(target) - softmax), grad_hidden = G @ weight and grad_weight = G.T @ hidden, block by
    block. The weight arrives as an ordinary autograd input, so a head tied to the input embedding
    receives this gradient once, summed with the embedding's by autograd.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int) -> Tensor:
        N = hidden.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        out = torch.empty(N, dtype=dtype, device=hidden.device)
        lse = torch.empty_like(out)
        for s in range(0, N, chunk):
            logits = torch.nn.functional.linear(hidden[s:s + chunk], weight, bias).to(dtype)
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            out[s:s + chunk] = logits.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - lse[s:s + chunk]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk = chunk
        # Under autocast (trainer precision bf16-mixed) the logits above were bf16: backward, which runs
        # outside autocast, must recompute them the same way or its softmax disagrees with `lse`.
        dev = hidden.device.type
        ctx.autocast = (dev, torch.get_autocast_dtype(dev)) if torch.is_autocast_enabled(dev) else None
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = lse.dtype  # accumulate the weight gradient in float32 even for a bf16 head
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        for s in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[s:s + ctx.chunk]
            g = grad_out[s:s + ctx.chunk, None].to(acc)
            if ctx.autocast is None:
                logits = torch.nn.functional.linear(h, weight, bias).to(acc)
            else:
                with torch.autocast(ctx.autocast[0], dtype=ctx.autocast[1]):
                    logits = torch.nn.functional.linear(h, weight, bias)
                logits = logits.to(acc)
            G = torch.exp(logits.sub_(lse[s:s + ctx.chunk, None])).mul_(-g)  # -g * softmax
            G.scatter_add_(-1, targets[s:s + ctx.chunk, None], g)             # + g at the target
            if need_b:
                grad_b += G.sum(0)
            G = G.to(weight.dtype)
            if need_h:
                grad_h[s:s + ctx.chunk] = G @ weight
            if need_w:
                grad_w.addmm_(G.t().to(acc), h.to(acc))
        return (grad_h, grad_w.to(weight.dtype) if need_w else None,
                grad_b.to(bias.dtype) if need_b else None, None, None)


def head_logps(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
               chunk_tokens: int = HEAD_CHUNK_TOKENS) -> Tensor:
    """[N] float32 log p(targets[i] | hidden[i]) under the LM head (weight [V, H], bias [V] or None)."""
    if hidden.shape[0] == 0:
        return hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
    return _HeadTargetLogProb.apply(hidden, weight, bias, targets.long(), max(1, int(chunk_tokens)))


def buckets(lengths: Sequence[int], call_cost: int) -> list[list[int]]:
    """Indices grouped into sub-batches minimising sum(rows x longest row) + call_cost per sub-batch.

    Rows are sorted by length and cut into contiguous runs (optimal for sorted lengths, O(n^2) DP).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    L = [lengths[i] for i in order]
    best = [0.0] + [math.inf] * len(L)  # best[j]: cost of the first j rows
    cut = [0] * (len(L) + 1)
    for j in range(1, len(L) + 1):
        for i in range(j):  # rows i..j-1 in one sub-batch, padded to L[j-1]
            c = best[i] + (j - i) * L[j - 1] + call_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    out, j = [], len(L)
    while j > 0:
        out.append(order[cut[j]:j])
        j = cut[j]
    return out[::-1]


@dataclass
class _Caps:
    split: bool   # head(decoder(x)) reproduces model(x).logits
    share: bool   # a completion run on gathered prompt keys/values reproduces the full-row hidden states
    reason: str


_CAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _parts(model):
    """(decoder, head) of a Hugging Face causal LM, or None."""
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def _capabilities(model) -> _Caps:
    """What the fast path may do with this model, decided once per model on a tiny probe."""
    caps = _CAPS.get(model)
    if caps is None:
        caps = _probe(model)
        _CAPS[model] = caps
        if not caps.split:
            log.warning("score_batch: %s falls back to the plain path (%s)", type(model).__name__, caps.reason)
        elif not caps.share:
            log.warning("score_batch: %s does not share prompts (%s)", type(model).__name__, caps.reason)
    return caps


def _probe(model) -> _Caps:
    parts = _parts(model)
    if parts is None:
        return _Caps(False, False, "no get_decoder() / Linear get_output_embeddings()")
    decoder, head = parts
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    windowed = bool(getattr(text_config, "sliding_window", None)) and getattr(text_config, "use_sliding_window", True)
    device, dtype = head.weight.device, head.weight.dtype
    V = head.weight.shape[0]
    ids = torch.tensor([[1, 5, 7, 11, 13], [1, 5, 7, 17, 19]], device=device) % V
    was_training = model.training
    model.eval()
    try:
        # Autocast off: the probe checks the model's math, not bf16 rounding (the first call may come
        # from a bf16-mixed training step, and the answer is kept for the model's lifetime).
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            full = model(input_ids=ids).logits.float()
            hidden = decoder(input_ids=ids, use_cache=False).last_hidden_state
            tol = 1e-4 if dtype == torch.float32 or dtype == torch.float64 else 3e-2
            scale = 1.0 + full.abs().max().item()
            if (head(hidden).float() - full).abs().max().item() > tol * scale:
                return _Caps(False, False, "head(decoder(x)) != model(x).logits (logit scaling or capping?)")
            if windowed:
                return _Caps(True, False, "sliding-window attention")
            cache = _new_cache()
            p = decoder(input_ids=ids[:1, :3], use_cache=True, **{_cache_kw(decoder): cache})
            bank = [(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in _cache_kv(cache)]
            rest = _decode_on(decoder, bank, ids[:, 3:], torch.ones(2, 5, dtype=torch.long, device=device),
                              torch.tensor([[3, 4]], device=device).expand(2, -1))
            got = torch.cat([p.last_hidden_state[:, :3].expand(2, -1, -1), rest], 1)
            if (head(got).float() - full).abs().max().item() > tol * scale:
                return _Caps(True, False, "completions on a gathered prompt cache disagree with full rows")
    except Exception as e:  # noqa: BLE001 - any failure of the split means: use the plain path
        return _Caps(False, False, f"probe failed: {type(e).__name__}: {e}")
    finally:
        model.train(was_training)
    return _Caps(True, True, "")


def _cache_kw(decoder) -> str:
    # transformers >= 5.2x names the cache argument `cache`; earlier 5.x `past_key_values`.
    return "cache" if "cache" in inspect.signature(type(decoder).forward).parameters else "past_key_values"


def _new_cache():
    from transformers import DynamicCache

    return DynamicCache()


def _cache_kv(cache) -> list[tuple[Tensor, Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _decode_on(decoder, bank: list[tuple[Tensor, Tensor]], ids: Tensor, attention_mask: Tensor,
               position_ids: Tensor, cache=None) -> Tensor:
    """Hidden states of `ids` [n, L] attending to per-row prompt keys/values (`bank`, one (k, v) per
    layer, [n, heads, P, d]) and to themselves; attention_mask [n, P + L], position_ids [n, L].
    `cache` (empty) receives the bank's and ids' keys/values; by default a fresh one is dropped."""
    cache = _new_cache() if cache is None else cache
    for layer, (k, v) in enumerate(bank):
        cache.update(k, v, layer)
    out = decoder(input_ids=ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
                  **{_cache_kw(decoder): cache})
    return out.last_hidden_state


def shared_prefix_len(seqs: Sequence[Sequence[int]], limit: int) -> int:
    """Length of the token prefix all of `seqs` start with, at most `limit` (0 for a limit below 0).
    The one prefix scan of lnrl: score_batch's shared system turn and the generation engine's."""
    n = max(0, min(limit, *(len(q) for q in seqs)))
    first = seqs[0]
    for q in seqs[1:]:
        i = 0
        while i < n and q[i] == first[i]:
            i += 1
        n = i
    return n


def _require_cache(cache) -> None:
    if not _cache_kv(cache):
        raise RuntimeError("score_batch: the decoder filled no key/value cache (gradient checkpointing?); "
                           "call with share_prompt=False")


def _pad(seqs: Sequence[Sequence[int]], value: int, device) -> Tensor:
    L = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (L - len(s)) for s in seqs], dtype=torch.long, device=device)


def _compact_rows(parts: Sequence[tuple[Tensor, Tensor, Tensor]]) -> list[tuple[list[int], list[int]]]:
    """Each row's real tokens (attention_mask 1, any padding side) and their completion mask."""
    rows = []
    for input_ids, attention_mask, completion_mask in parts:
        if not (input_ids.shape == attention_mask.shape == completion_mask.shape) or input_ids.dim() != 2:
            raise ValueError("score_batch: input_ids, attention_mask and completion_mask must be [B, T] alike; got "
                             f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(completion_mask.shape)}")
        if ((completion_mask != 0) & (attention_mask == 0)).any():
            raise ValueError("score_batch: completion_mask is 1 on a padding position (attention_mask 0)")
        for ids, am, cm in zip(input_ids.tolist(), attention_mask.tolist(), completion_mask.tolist()):
            keep = [t for t, a in enumerate(am) if a]
            rows.append(([ids[t] for t in keep], [1 if cm[t] else 0 for t in keep]))
    return rows


def _score_split(decoder, head, rows: list[tuple[list[int], list[int]]], *, share_prompt: bool,
                 call_cost: int, chunk_tokens: int) -> SeqScores:
    device = head.weight.device
    B = len(rows)
    scored = [[j for j in range(1, len(ids)) if cm[j]] for ids, cm in rows]
    n_tokens = torch.tensor([len(s) for s in scored], dtype=torch.long, device=device)

    # Phase A units: a shared prompt, or a whole row. Phase B: the completion part of a shared row.
    units: list[list[int]] = []
    prompt_unit: dict[tuple[int, ...], int] = {}
    row_unit, row_plen = [-1] * B, [0] * B
    if share_prompt:
        by_prompt: dict[tuple[int, ...], list[int]] = {}
        for r, (ids, cm) in enumerate(rows):
            if scored[r]:
                p = max(1, cm.index(1))  # the first token is never scored: it can always join the prompt
                row_plen[r] = p
                by_prompt.setdefault(tuple(ids[:p]), []).append(r)
        for prompt, members in by_prompt.items():
            if len(members) > 1:
                prompt_unit[prompt] = len(units)
                units.append(list(prompt))
                for r in members:
                    row_unit[r] = prompt_unit[prompt]
    shared = [r for r in range(B) if row_unit[r] >= 0]
    unit_row = {}  # unit -> row, for rows that run whole
    for r in range(B):
        if scored[r] and row_unit[r] < 0:
            unit_row[len(units)] = r
            units.append(rows[r][0])
    is_prompt = [False] * len(units)
    for u in prompt_unit.values():
        is_prompt[u] = True

    # Phase 0: the prefix every unit starts with (the chat template's system turn) runs once, when that
    # saves more tokens than a call costs; phase A runs each unit's rest on its keys/values. It stops
    # before the first hidden state any unit needs (a prompt's last, a whole row's first scored - 1).
    S = 0
    if share_prompt and len(units) > 1:
        need = [len(units[u]) - 1 if is_prompt[u] else scored[unit_row[u]][0] - 1 for u in range(len(units))]
        S = shared_prefix_len(units, min(need))
        if S * (len(units) - 1) <= call_cost:
            S = 0
    prefix_kv: list[tuple[Tensor, Tensor]] = []
    if S:
        cache = _new_cache()
        decoder(input_ids=torch.tensor([units[0][:S]], device=device), use_cache=True,
                **{_cache_kw(decoder): cache})
        _require_cache(cache)
        prefix_kv = _cache_kv(cache)

    # (hidden [n*L, H] flattened, flat indices, targets, row ids) gathered per sub-batch
    picks: list[tuple[Tensor, list[int], list[int], list[int]]] = []
    unit_loc: dict[int, tuple[int, int]] = {}  # unit -> (phase-A sub-batch, index in it)
    a_runs = []  # per phase-A sub-batch: (hidden, cache or None, unit list); hidden starts at position S
    for run in buckets([len(u) - S for u in units], call_cost):
        seqs = [units[u][S:] for u in run]
        ids = _pad(seqs, 0, device)
        n, L = ids.shape
        mask = _pad([[1] * len(s) for s in seqs], 0, device)
        want_cache = any(is_prompt[u] for u in run)
        if S:
            cache = _new_cache()
            bank = [(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix_kv]
            mask = torch.cat([mask.new_ones(n, S), mask], 1)
            hidden = _decode_on(decoder, bank, ids, mask, S + torch.arange(L, device=device).expand(n, -1), cache)
        else:
            kw = {"use_cache": False}  # never a cache by default: a checkpointed block's replay would append to it
            cache = _new_cache() if want_cache else None
            if want_cache:
                kw = {"use_cache": True, _cache_kw(decoder): cache}
            hidden = decoder(input_ids=ids, attention_mask=None if bool(mask.all()) else mask, **kw).last_hidden_state
        a_runs.append((hidden, cache if want_cache else None, run))
        if want_cache:
            _require_cache(cache)
        flat, tgt, rid = [], [], []
        for i, u in enumerate(run):
            unit_loc[u] = (len(a_runs) - 1, i)
            r = unit_row.get(u)
            for j in scored[r] if r is not None else ():
                flat.append(i * L + j - 1 - S)  # token j is scored by the hidden state at j - 1
                tgt.append(rows[r][0][j])
                rid.append(r)
        picks.append((hidden.reshape(-1, hidden.shape[-1]), flat, tgt, rid))

    if shared:
        # One bank of prompt keys/values per layer (rows = prompt units, right-padded to the longest).
        P = max(len(units[u]) for u in prompt_unit.values())
        bank_rows: dict[int, int] = {}
        per_layer: list[list[tuple[Tensor, Tensor]]] = []
        for a, (hidden, cache, run) in enumerate(a_runs):
            sel = [i for i, u in enumerate(run) if is_prompt[u]]
            if not sel:
                continue
            for i in sel:
                bank_rows[run[i]] = len(bank_rows)
            idx = torch.tensor(sel, device=device)
            kv = []
            for k, v in _cache_kv(cache):
                grow = P - k.shape[-2]
                k, v = k.index_select(0, idx), v.index_select(0, idx)
                if grow:
                    k = torch.nn.functional.pad(k, (0, 0, 0, grow))
                    v = torch.nn.functional.pad(v, (0, 0, 0, grow))
                kv.append((k, v))
            per_layer.append(kv)
        bank = [(torch.cat([kv[l][0] for kv in per_layer]), torch.cat([kv[l][1] for kv in per_layer]))
                for l in range(len(per_layer[0]))]
        bank_mask = torch.zeros(len(bank_rows), P, dtype=torch.long, device=device)
        for u, b in bank_rows.items():
            bank_mask[b, :len(units[u])] = 1
        # The first completion token is scored by the prompt's last hidden state.
        for r in shared:
            a, i = unit_loc[row_unit[r]]
            if scored[r][0] == row_plen[r]:
                _, flat, tgt, rid = picks[a]
                flat.append(i * a_runs[a][0].shape[1] + row_plen[r] - 1 - S)
                tgt.append(rows[r][0][row_plen[r]])
                rid.append(r)
        comp = {r: rows[r][0][row_plen[r]:] for r in shared}
        for run in buckets([len(comp[shared[i]]) for i in range(len(shared))], call_cost):
            rs = [shared[i] for i in run]
            ids = _pad([comp[r] for r in rs], 0, device)
            L = ids.shape[1]
            brow = torch.tensor([bank_rows[row_unit[r]] for r in rs], device=device)
            plen = torch.tensor([row_plen[r] for r in rs], device=device)
            mask = torch.cat([bank_mask.index_select(0, brow), _pad([[1] * len(comp[r]) for r in rs], 0, device)], 1)
            pos = plen[:, None] + torch.arange(L, device=device)
            hidden = _decode_on(decoder, [(k.index_select(0, brow), v.index_select(0, brow)) for k, v in bank],
                                ids, mask, pos)
            flat, tgt, rid = [], [], []
            for i, r in enumerate(rs):
                for j in scored[r]:
                    if j > row_plen[r]:
                        flat.append(i * L + j - 1 - row_plen[r])
                        tgt.append(rows[r][0][j])
                        rid.append(r)
            picks.append((hidden.reshape(-1, hidden.shape[-1]), flat, tgt, rid))

    picks = [p for p in picks if p[1]]
    dtype = torch.promote_types(head.weight.dtype, torch.float32)
    logp_sum = torch.zeros(B, dtype=dtype, device=device)
    if not picks:  # nothing scored: a zero still in the graph, as the plain path's would be
        trainable = (p for m in (head, decoder) for p in m.parameters() if p.requires_grad)
        anchor = next(trainable, None) if torch.is_grad_enabled() else None
        if anchor is not None:
            logp_sum = logp_sum + 0 * anchor.sum()
        return SeqScores(logp_sum, n_tokens)
    h = torch.cat([hf.index_select(0, torch.tensor(flat, device=device)) for hf, flat, _, _ in picks])
    targets = torch.tensor([t for p in picks for t in p[2]], dtype=torch.long, device=device)
    row_ids = torch.tensor([r for p in picks for r in p[3]], dtype=torch.long, device=device)
    logps = head_logps(h, head.weight, head.bias, targets, chunk_tokens)
    return SeqScores(logp_sum.index_add(0, row_ids, logps), n_tokens)


def score_sequences(model, parts: Sequence[tuple[Tensor, Tensor, Tensor]], *, share_prompt: bool = True,
                    trim: bool = True, chunk_tokens: int = HEAD_CHUNK_TOKENS,
                    call_cost_tokens: int | None = None) -> SeqScores:
    """SeqScores of the rows of every (input_ids, attention_mask, completion_mask) part, in order.

    Equal (to float rounding, forward and backward) to `sequence_logps(model(input_ids,
    attention_mask).logits, input_ids, completion_mask)` of each part for right-padded rows. A row is
    its attention_mask-1 tokens at positions 0..n-1, so a left-padded row scores as its unpadded self.
    share_prompt: run identical prompts once (off by itself under activation checkpointing). trim: cut
    rows into sub-batches by length (False: one sub-batch per phase, padded to its longest row).
    call_cost_tokens: overrides CALL_COST_TOKENS. chunk_tokens: scored positions per LM-head block.
    """
    # Checked per call, not probed once: sharding (FSDP2's fully_shard) changes a model in place. A
    # sharded head's weight is whole only inside model.forward, so such a model takes the plain path.
    split = _parts(model)
    sharded = split is not None and any(type(p).__name__ == "DTensor" for p in split[1].parameters())
    caps = None if sharded else _capabilities(model)
    if caps is None or not caps.split:
        return SeqScores.cat([sequence_logps(model(input_ids=i, attention_mask=a).logits, i, c) for i, a, c in parts])
    decoder, head = split
    device = head.weight.device
    if call_cost_tokens is None:
        call_cost_tokens = CALL_COST_TOKENS.get(device.type, CALL_COST_TOKENS["default"])
    rows = _compact_rows(parts)
    share = share_prompt and caps.share and not _checkpointed(model)
    return _score_split(decoder, head, rows, share_prompt=share,
                        call_cost=int(call_cost_tokens) if trim else 10**12, chunk_tokens=chunk_tokens)


def _checkpointed(model) -> bool:
    """Activation checkpointing replays a layer in backward: Hugging Face's drops the cache, torch's
    checkpoint_wrapper would append to it twice. Either way prompts cannot be shared. (Hugging Face
    marks checkpointed modules with `gradient_checkpointing = True`, in every 5.x release.)"""
    return any(getattr(m, "gradient_checkpointing", False) is True or type(m).__name__ == "CheckpointWrapper"
               for m in model.modules())


def score_batch(model, batch: dict[str, Tensor], *, prefixes: Sequence[str] = ("",), share_prompt: bool = True,
                trim: bool = True, chunk_tokens: int = HEAD_CHUNK_TOKENS,
                call_cost_tokens: int | None = None) -> SeqScores:
    """Scores of a collated batch (lnrl.data.collate): the rows `{prefix}input_ids`, `{prefix}attention_mask`,
    `{prefix}completion_mask` of each prefix, concatenated in order. `prefixes=("", "gold_")` scores a
    group batch's members and gold rows in one pass (a gold row shares its group's prompt).
    See `score_sequences` for the options."""
    parts = []
    for p in prefixes:
        keys = [f"{p}input_ids", f"{p}attention_mask", f"{p}completion_mask"]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise KeyError(f"score_batch: batch has no {', '.join(missing)} (prefixes={list(prefixes)}; "
                           f"batch keys: {', '.join(sorted(batch))})")
        parts.append(tuple(batch[k] for k in keys))
    return score_sequences(model, parts, share_prompt=share_prompt, trim=trim, chunk_tokens=chunk_tokens,
                           call_cost_tokens=call_cost_tokens)


def score_rows(model, rows: Sequence[dict | None], *, pad_id: int, batch_size: int = 8, progress: bool = False,
               desc: str = "score") -> list[tuple[float, int] | None]:
    """(logp_sum, n_tokens) of each row's completion tokens under `model`; None for a None (dropped) row.

    rows: {"input_ids", "completion_mask"} dicts as `lnrl.data.tokenize.encode` / `join` return them.
    The one scoring loop of assessment accuracy, gold NLL and the reference-score cache: rows are
    batched `batch_size` at a time, rows of one prompt together (the fast path runs it once) and
    prompts in length order, right-padded, moved to the model's device and scored by `score_sequences`
    under no_grad in eval mode; the model's training mode is restored afterwards.
    """
    # Imported here: lnrl.data's package import pulls in Lightning, which the losses (that import
    # this module) and their users should not pay for.
    from lnrl.data.collate import pad_rows

    if batch_size < 1:
        raise ValueError(f"score_rows: batch_size must be >= 1, got {batch_size}")
    out: list[tuple[float, int] | None] = [None] * len(rows)
    keys = {}
    for i, r in enumerate(rows):
        if r is not None:
            p = r["completion_mask"].index(1) if 1 in r["completion_mask"] else len(r["input_ids"])
            keys[i] = (p, r["input_ids"][:p], len(r["input_ids"]))
    order = sorted(keys, key=keys.get)
    if not order:
        return out
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
                idx = order[start:start + batch_size]
                batch = {k: v.to(device) for k, v in pad_rows([rows[i] for i in idx], pad_id).items()}
                s = score_batch(model, batch)
                for i, lp, n in zip(idx, s.logp_sum.tolist(), s.n_tokens.tolist()):
                    out[i] = (float(lp), int(n))
    finally:
        model.train(was_training)
    return out
