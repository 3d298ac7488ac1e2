"""Batched generation with the KV cache, shared by evaluation and sampling (one way to generate).

`generate` drives the model's forward with a transformers `DynamicCache` itself (the engine below)
instead of calling `model.generate`, because sampling k completions per question and greedy evaluation
are most of the project's compute:

- one prefill per question: its prompt is run once and the cache repeated k times on the batch
  dimension, where `num_return_sequences=k` prefills k copies (prefill is most of the cost on CPU);
- the prefix every prompt of a call shares (the chat template's system turn, about a quarter of a GSM
  prompt's tokens) is run once per call, and its cache is copied into every prefill;
- the cache reserves max_new_tokens free columns per row, and a decode step writes its keys/values
  there in place (transformers' DynamicLayer concatenates, copying the whole cache every step);
- rows leave the batch when they finish (EOS or max_new_tokens): the rows after them move up in place,
  and padding columns no remaining row uses are cut, so late steps cost only the rows still running;
- the freed rows are refilled with the next questions (continuous batching), so a step keeps the
  whole batch busy instead of finishing with a long tail of a few rows;
- a batch is bounded by rows (`batch_size` questions x k) and by a token budget (`max_batch_tokens`:
  each row reserves its prompt plus `max_new_tokens` cache slots).

Sampling keeps the tokens transformers' warpers keep (temperature, then top-k, then top-p with
min_tokens_to_keep=1) and draws among them in proportion to their probability, as `generate` does. Its
randomness is counter-based: token t of sample j of question i (its index in the call) is drawn with
noise that is a hash of (seed, i, j, t, token id), so a question gets the same samples whatever batch
it lands in, whatever `batch_size` or token budget, and a run with a smaller `max_new_tokens` gives
prefixes of a longer run's samples. The draw is an exponential race (the kept token maximising
p / Exp(1) noise, an exact sample of p), which changes only if the two best ratios swap. What is not
bit-identical: a row's logits carry floating-point noise from the batch it is computed in (matmul
shapes, padding width; about 1e-6 relative in fp32), so a near-tie between the two best ratios (or a
top-p boundary token that is kept in one batching and winning, or a greedy argmax near-tie) can
resolve differently in another batching: rare per token, not never. Greedy decoding equals HF
`generate(do_sample=False)` on the same prompts up to that noise. Sampled tokens are not the ones
`generate` would draw for the same seed: it uses the global RNG through torch.multinomial.

Sharded (FSDP) models, whose forward is a collective that needs `synced_gpus`, and models whose cache
is not a plain per-layer DynamicCache (sliding-window or linear-attention layers) use HF `generate`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from lnrl.data.tokenize import encode_prompt
from lnrl.distributed import is_sharded
from lnrl.scoring import shared_prefix_len

# Cache slots (rows x (prompt + max_new_tokens)) a batch may reserve: a memory guard. The fp32 cache of
# SmolLM2-135M costs 46 KB a slot, so 32k slots is about 1.5 GB. It should not bind before the callers'
# row caps do: on this project's 2-core CPU a decode step has a fixed cost of about 50 ms (reading the
# weights; 1 thread) on top of about 7 ms a row, so the cost per row keeps falling up to 32-64 rows
# (GSM prompts of about 105 tokens plus 128 new tokens: 64 rows reserve about 15k slots).
MAX_BATCH_TOKENS = 32768
# A shared prompt prefix shorter than this is fed with each prompt: its own forward would cost more.
MIN_SHARED_PREFIX = 4
# Prompt tokens (rows x padded width) per prefill forward. The admitted questions are prefilled in runs of
# similar length, not as one batch padded to the longest: on 2 CPU cores a forward of 16 x 90 tokens runs
# at about 660 tokens/s and one of 64 x 90 at about 510 (cache locality), and one batch of GSM prompts of
# 69-157 tokens would be 40% padding.
PREFILL_TOKENS = 2048


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    truncated: bool          # hit max_new_tokens before the end-of-turn token


def generate(
    model,
    tokenizer,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    system_prompt: str | None = None,
    seed: int | None = None,
    max_batch_tokens: int = MAX_BATCH_TOKENS,
    desc: str = "generate",
    progress: bool = True,
) -> list[list[Generation]]:
    """Return `num_return_sequences` generations per question, in question order.

    batch_size: questions decoded at once (each with its num_return_sequences rows);
    max_batch_tokens: cache slots the running rows may reserve (see MAX_BATCH_TOKENS);
    top_k: 0 keeps every token (transformers' generate adds top_k=50 unless told otherwise);
    seed: None draws one from torch's global RNG, so torch.manual_seed upstream still fixes the samples.
    A generation's text is decoded without special tokens and stripped; n_tokens counts the tokens
    before the end-of-turn token; truncated means no end-of-turn token within max_new_tokens.
    """
    _check(max_new_tokens=max_new_tokens, batch_size=batch_size, num_return_sequences=num_return_sequences,
           do_sample=do_sample, temperature=temperature, top_p=top_p, top_k=top_k,
           max_batch_tokens=max_batch_tokens)
    was_training = model.training
    model.eval()
    try:
        prompts = [encode_prompt(tokenizer, q, system_prompt=system_prompt) for q in questions]
        eos_id = tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
        sampling = Sampling(do_sample, temperature, top_p, top_k)
        bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="q")
        if is_sharded(model) or not _plain_dynamic_cache(model):
            tokens = _generate_hf(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                  k=num_return_sequences, sampling=sampling, seed=seed, eos_id=eos_id,
                                  pad_id=pad_id, on_done=bar.update)
        else:
            if seed is None:
                seed = int(torch.randint(0, 2**62, ()).item())
            tokens = decode_tokens(model, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                   k=num_return_sequences, sampling=sampling, seed=seed, eos_id=eos_id,
                                   max_batch_tokens=max_batch_tokens, on_done=bar.update)
        bar.close()
    finally:
        model.train(was_training)
    return [[_to_generation(tokenizer, toks, eos_id) for toks in rows] for rows in tokens]


def _check(**kw) -> None:
    def bad(name: str, accepts: str):
        raise ValueError(f"generate(): {name}={kw[name]!r}; expected {accepts}")

    for name in ("max_new_tokens", "batch_size", "num_return_sequences", "max_batch_tokens"):
        if not isinstance(kw[name], int) or kw[name] < 1:
            bad(name, "an integer >= 1")
    if kw["do_sample"]:
        if not kw["temperature"] > 0:
            bad("temperature", "a number > 0 when do_sample=True (use do_sample=False for greedy)")
        if not 0 < kw["top_p"] <= 1:
            bad("top_p", "a number in (0, 1]")
        if not isinstance(kw["top_k"], int) or kw["top_k"] < 0:
            bad("top_k", "an integer >= 0 (0 = no top-k filter)")


def _to_generation(tokenizer, toks: list[int], eos_id: int) -> Generation:
    finished = eos_id in toks
    toks = toks[: toks.index(eos_id)] if finished else toks
    return Generation(tokenizer.decode(toks, skip_special_tokens=True).strip(), len(toks), truncated=not finished)


# ----------------------------------------------------------------------------------------------------
# Sampling: transformers' warpers, with counter-based noise per (row, token)

# Top-p (and top-k) look for the kept tokens among this many most likely ones and sort the whole
# vocabulary only for a row whose nucleus is larger: a full sort of 49k logits per row costs more than
# the model's step on CPU (transformers' TopPLogitsWarper sorts every row at every step).
CANDIDATES = 128


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


def token_key(seed: int, question: int, sample: int, step: int) -> int:
    """The 63-bit key of token `step` of sample `sample` of question `question` (its index in the
    generate call): a hash, so nearby seeds and indices give unrelated noise."""
    digest = hashlib.blake2b(f"lnrl/{seed}/{question}/{sample}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for int64 x, c < 2**32, in halves so no product overflows int64."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _M32


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' lowbias32 integer hash (a bijection of 32-bit values with low avalanche bias)."""
    x = _mul32(x ^ (x >> 16), 0x7FEB352D)
    x = _mul32(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def exp_noise(keys: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Exp(1) noise [B, n] (float64) for token ids [B, n] under per-row keys [B] (token_key).

    Counter-based: a token's noise depends on its row, step and id only, not on which other tokens
    are candidates or in what order, so logit noise that reorders near-equal candidates changes nothing.
    """
    lo, hi = (keys & _M32).unsqueeze(1), (keys >> 32).unsqueeze(1)
    h = _lowbias32(_lowbias32(ids ^ lo) ^ hi)
    return -torch.log((h.double() + 0.5) / 2**32)


def pick_tokens(logits: torch.Tensor, keys: torch.Tensor | None, sampling: Sampling) -> torch.Tensor:
    """Next token per row from fp32 logits [B, V]: the argmax, or a sample drawn with keys [B] (token_key).

    The kept tokens are transformers' (TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper:
    top-p keeps a token when the tokens more likely than it hold less than top_p of the mass, so the
    most likely token always stays; top-p renormalises after top-k). The winner is the kept token with
    the largest p / E, E ~ Exp(1) i.i.d. per token (exp_noise): P(i wins) = p_i / (kept mass), the
    renormalised probability `generate` samples from (an exponential race, as in Gumbel-max).
    """
    if not sampling.do_sample:
        return logits.argmax(dim=-1)
    scores = logits / sampling.temperature if sampling.temperature != 1.0 else logits
    probs = scores.softmax(dim=-1)
    keys = keys.to(probs.device)
    vocab = probs.shape[-1]
    if not sampling.top_k and sampling.top_p >= 1.0:
        ids = torch.arange(vocab, device=probs.device).expand(len(probs), -1)
        return (probs / exp_noise(keys, ids)).argmax(dim=-1)
    m = min(sampling.top_k or CANDIDATES, vocab)
    vals, idx = probs.topk(m, dim=-1)                                                 # descending
    n_kept = (_nucleus_size(vals, sampling.top_p, renormalise=bool(sampling.top_k))
              if sampling.top_p < 1.0 else torch.full((len(vals),), m, device=vals.device))
    ratio = (vals / exp_noise(keys, idx)).masked_fill(torch.arange(m, device=vals.device) >= n_kept.unsqueeze(1), -1)
    out = idx.gather(1, ratio.argmax(dim=1, keepdim=True)).squeeze(1)
    if not sampling.top_k and m < vocab:
        for r in (n_kept == m).nonzero().flatten().tolist():   # the nucleus may reach past the candidates
            svals, sidx = probs[r].sort(descending=True)
            n = int(_nucleus_size(svals.unsqueeze(0), sampling.top_p, renormalise=False))
            out[r] = sidx[(svals[:n] / exp_noise(keys[r:r + 1], sidx[:n].unsqueeze(0))[0]).argmax()]
    return out


def _nucleus_size(vals: torch.Tensor, top_p: float, *, renormalise: bool) -> torch.Tensor:
    """How many of the descending probabilities `vals` [B, m] top-p keeps (transformers' rule, above)."""
    mass = vals.sum(dim=-1, keepdim=True) if renormalise else 1.0   # after top-k, top-p renormalises
    return ((vals.cumsum(dim=-1) - vals) / mass < top_p).sum(dim=-1)


# ----------------------------------------------------------------------------------------------------
# The engine


def _plain_dynamic_cache(model) -> bool:
    """True when the model's DynamicCache is one plain DynamicLayer per layer: the engine index-selects,
    left-pads and cuts those tensors itself."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    config = getattr(model, "config", None)
    if config is None or "cache" not in inspect.signature(model.forward).parameters:
        return False
    try:
        cache = DynamicCache(config=config)
    except Exception:  # a config DynamicCache cannot read: let generate() handle the model
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)


@dataclass
class _Row:
    question: int
    sample: int
    prompt_len: int
    tokens: list[int] = field(default_factory=list)


def _left_pad(t: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return t
    shape = list(t.shape)
    shape[dim] = n
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@functools.cache
def _slot_layer_class():
    """SlotLayer, defined on first use: this module imports transformers only when it runs a model."""
    from transformers.cache_utils import DynamicLayer

    class SlotLayer(DynamicLayer):
        """A DynamicLayer whose keys/values [B, H, n, D] are views of buffers with `spare` free columns, so
        a decode step writes its column in place where DynamicLayer concatenates (a copy of the whole cache
        per layer per step: ~15% of a decode step on 2 CPU cores). Rows leave by compaction in place;
        anything that changes the columns (cutting padding, appending rows) places the result in new
        buffers with `spare` free columns again."""

        def __init__(self, spare: int):
            super().__init__()
            self.spare = spare
            self._k = self._v = None

        def place(self, keys: torch.Tensor, values: torch.Tensor, spare: int | None = None) -> None:
            B, H, n, D = keys.shape
            extra = self.spare if spare is None else spare
            self._k = keys.new_empty((B, H, n + extra, D))
            self._v = values.new_empty((B, values.shape[1], n + extra, values.shape[3]))
            self._k[:, :, :n] = keys
            self._v[:, :, :n] = values
            self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]
            self.device, self.is_initialized = keys.device, True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.place(key_states, value_states)
                return self.keys, self.values
            n, m = self.keys.shape[2], key_states.shape[2]
            if n + m > self._k.shape[2]:   # more columns than reserved: grow (a copy, as DynamicLayer's)
                self.place(torch.cat([self.keys, key_states], 2), torch.cat([self.values, value_states], 2))
                return self.keys, self.values
            B = self.keys.shape[0]
            self._k[:B, :, n:n + m] = key_states
            self._v[:B, :, n:n + m] = value_states
            self.keys, self.values = self._k[:B, :, :n + m], self._v[:B, :, :n + m]
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized:
                self.place(self.keys.repeat_interleave(repeats, 0), self.values.repeat_interleave(repeats, 0),
                           spare=self._k.shape[2] - self.keys.shape[2])

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep rows `indices` (increasing): the rows after the first dropped one move up in place."""
            if not self.is_initialized:
                return
            keep = indices.tolist()
            if any(b <= a for a, b in zip(keep, keep[1:])):
                raise ValueError("batch_select_indices: indices must be increasing")
            first = next((i for i, r in enumerate(keep) if r != i), len(keep))
            n = self.keys.shape[2]
            if first < len(keep):
                src = indices[first:]
                self._k[first:len(keep), :, :n] = self._k.index_select(0, src)[:, :, :n]
                self._v[first:len(keep), :, :n] = self._v.index_select(0, src)[:, :, :n]
            self.keys, self.values = self._k[:len(keep), :, :n], self._v[:len(keep), :, :n]

    return SlotLayer


def _slot_cache(config, spare: int):
    """A DynamicCache of SlotLayers reserving `spare` free columns per placement."""
    from transformers import DynamicCache

    cache = DynamicCache(config=config)
    cls = _slot_layer_class()
    cache.layers = [cls(spare) for _ in cache.layers]
    return cache


class _Batch:
    """Rows decoding together: their KV cache (SlotLayers), the attention mask over its columns (0 on
    left padding) and the rows themselves. Every row's last token is pending: generated, not yet fed."""

    def __init__(self, cache, mask: torch.Tensor, rows: list[_Row]):
        self.cache, self.mask, self.rows = cache, mask, rows

    def __len__(self) -> int:
        return len(self.rows)

    def select(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.cache.batch_select_indices(idx)
        self.mask = self.mask[idx]
        self.rows = [self.rows[i] for i in keep]
        # Cut the padding columns no remaining row attends to: they would cost every later step.
        used = self.mask.any(dim=0)
        if not bool(used.all()):
            cols = used.nonzero().flatten()
            self.mask = self.mask[:, cols]
            for layer in self.cache.layers:
                layer.place(layer.keys.index_select(2, cols), layer.values.index_select(2, cols))

    def extend(self, other: _Batch) -> None:
        """Append other's rows, left-padding the shorter cache so the columns line up."""
        width = max(self.mask.shape[1], other.mask.shape[1])
        for a, b in zip(self.cache.layers, other.cache.layers):
            pa, pb = width - a.keys.shape[2], width - b.keys.shape[2]
            a.place(torch.cat([_left_pad(a.keys, pa, 2), _left_pad(b.keys, pb, 2)]),
                    torch.cat([_left_pad(a.values, pa, 2), _left_pad(b.values, pb, 2)]))
        self.mask = torch.cat([_left_pad(self.mask, width - self.mask.shape[1], 1),
                               _left_pad(other.mask, width - other.mask.shape[1], 1)])
        self.rows += other.rows


class _Engine:
    def __init__(self, model, *, max_new_tokens: int, sampling: Sampling, seed: int, eos_id: int):
        self.model, self.max_new_tokens, self.sampling, self.seed, self.eos_id = (
            model, max_new_tokens, sampling, seed, eos_id)
        self.device = next(model.parameters()).device
        self.keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
        self.prefix: list[tuple[torch.Tensor, torch.Tensor]] = []   # per layer (keys, values) [1, H, P, D]
        self.prefix_len = 0

    def share_prefix(self, prefix: list[int]) -> None:
        """Run the tokens every prompt starts with once; prefill then feeds each prompt's rest only."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        ids = torch.tensor([prefix], device=self.device)
        self._forward(ids, torch.ones_like(ids), torch.arange(len(prefix), device=self.device).unsqueeze(0), cache)
        self.prefix = [(layer.keys, layer.values) for layer in cache.layers]
        self.prefix_len = len(prefix)

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        # Like generate(): no mask at all when nothing is padded, so the same attention kernel runs.
        kwargs = {"logits_to_keep": 1} if self.keep_last else {}
        out = self.model(input_ids=ids, attention_mask=mask if not bool(mask.all()) else None,
                         position_ids=positions, cache=cache, use_cache=True, **kwargs)
        return out.logits[:, -1, :].float()

    def prefill(self, questions: list[int], prompts: list[list[int]], k: int) -> tuple[_Batch, torch.Tensor]:
        """Run each prompt once (left-padded), then repeat its cache k times: rows and their logits.

        With a shared prefix (share_prefix) each row's cache starts with the prefix's and only the rest
        of its prompt is fed, left-padded after the prefix: columns [prefix | padding | rest].
        """
        n, shared = len(prompts), self.prefix_len
        rests = [p[shared:] for p in prompts]
        width = max(len(p) for p in rests)
        ids = torch.zeros((n, width), dtype=torch.long)   # padding is masked: its id is moot
        mask = torch.zeros((n, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for r, p in enumerate(rests):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, shared + width - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Position ids as generate() builds them for left-padded prompts: count real tokens only.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)[:, shared:]
        cache = _slot_cache(self.model.config, spare=self.max_new_tokens)
        for layer, (keys, values) in zip(cache.layers, self.prefix):
            layer.place(keys.expand(n, -1, -1, -1), values.expand(n, -1, -1, -1), spare=width + self.max_new_tokens)
        logits = self._forward(ids, mask, positions, cache)
        if k > 1:
            cache.batch_repeat_interleave(k)
            mask, logits = mask.repeat_interleave(k, dim=0), logits.repeat_interleave(k, dim=0)
        rows = [_Row(q, j, len(p)) for q, p in zip(questions, prompts) for j in range(k)]
        return _Batch(cache, mask, rows), logits

    def step(self, batch: _Batch) -> torch.Tensor:
        """Feed every row's pending token; logits for the next one."""
        ids = torch.tensor([[r.tokens[-1]] for r in batch.rows], device=self.device)
        positions = torch.tensor([[r.prompt_len + len(r.tokens) - 1] for r in batch.rows], device=self.device)
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((len(batch), 1))], dim=1)
        return self._forward(ids, batch.mask, positions, batch.cache)

    def append(self, batch: _Batch, logits: torch.Tensor) -> list[_Row]:
        """Pick and append each row's next token; drop the rows that finished and return them."""
        keys = None
        if self.sampling.do_sample:
            keys = torch.tensor([token_key(self.seed, r.question, r.sample, len(r.tokens)) for r in batch.rows])
        keep, done = [], []
        for i, (row, tok) in enumerate(zip(batch.rows, pick_tokens(logits, keys, self.sampling).tolist())):
            row.tokens.append(tok)
            if tok == self.eos_id or len(row.tokens) >= self.max_new_tokens:
                done.append(row)
            else:
                keep.append(i)
        batch.select(keep)
        return done


def decode_tokens(model, prompts: Sequence[list[int]], *, max_new_tokens: int, batch_size: int, k: int,
                  sampling: Sampling, seed: int, eos_id: int, max_batch_tokens: int = MAX_BATCH_TOKENS,
                  refill: bool = True, share_prefix: bool = True, prefill_tokens: int = PREFILL_TOKENS,
                  on_done=None) -> list[list[list[int]]]:
    """The engine: k token lists per prompt (each ends at its EOS, or has max_new_tokens tokens).

    At most batch_size * k rows run at once, reserving at most max_batch_tokens cache slots (a
    question that alone needs more still runs, alone). refill=False waits for the batch to empty
    before admitting new questions (static batching; kept for the benchmark and tests).
    share_prefix=False feeds every prompt whole instead of running their common prefix once.
    prefill_tokens: the admitted questions are prefilled in runs of similar length of at most this many
    (padded) prompt tokens (prefill_chunks).
    """
    engine = _Engine(model, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed, eos_id=eos_id)
    shared = common_prefix(prompts) if share_prefix else 0
    shared = shared if shared >= MIN_SHARED_PREFIX else 0
    # Shortest prompts first: a prefill chunk pads little, and admitted questions fit the running width.
    queue = deque(sorted(range(len(prompts)), key=lambda i: len(prompts[i])))
    out: list[list[list[int] | None]] = [[None] * k for _ in prompts]
    left = [k] * len(prompts)
    max_rows = batch_size * k
    batch: _Batch | None = None
    with torch.inference_mode():
        if shared:
            engine.share_prefix(list(prompts[0][:shared]))
        while queue or batch:
            running = len(batch) if batch else 0
            if queue and (refill or running == 0):
                reserved = sum(r.prompt_len + max_new_tokens for r in batch.rows) if batch else 0
                admit = []
                while queue and running + k * (len(admit) + 1) <= max_rows:
                    cost = k * (len(prompts[queue[0]]) + max_new_tokens)
                    if admit or running:
                        if reserved + cost > max_batch_tokens:
                            break
                    admit.append(queue.popleft())
                    reserved += cost
                for chunk in prefill_chunks([len(prompts[i]) - shared for i in admit], prefill_tokens):
                    part = [admit[i] for i in chunk]
                    new, logits = engine.prefill(part, [prompts[i] for i in part], k)
                    finished = engine.append(new, logits)
                    if batch and len(new):
                        batch.extend(new)
                    elif len(new):
                        batch = new
                    _collect(finished, out, left, on_done)
            if batch and len(batch):
                logits = engine.step(batch)
                _collect(engine.append(batch, logits), out, left, on_done)
            if batch is not None and not len(batch):
                batch = None
    return out  # type: ignore[return-value]


def prefill_chunks(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Split positions 0..n-1 into consecutive runs whose padded size (rows x longest) is at most
    max_tokens; a longer prompt runs alone. The queue admits prompts shortest first, so a run pads little."""
    chunks: list[list[int]] = []
    width = 0
    for i, n in enumerate(lengths):
        if chunks and (len(chunks[-1]) + 1) * max(n, width) <= max_tokens:
            chunks[-1].append(i)
            width = max(n, width)
        else:
            chunks.append([i])
            width = n
    return chunks


def common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """Length of the token prefix all prompts share, leaving each at least one token of its own (the
    prefill needs a token per row to return its logits); 0 for fewer than two prompts."""
    if len(prompts) < 2:
        return 0
    return shared_prefix_len(prompts, min(len(p) for p in prompts) - 1)


def _collect(rows: list[_Row], out, left: list[int], on_done) -> None:
    for row in rows:
        out[row.question][row.sample] = row.tokens
        left[row.question] -= 1
        if not left[row.question] and on_done is not None:
            on_done(1)


# ----------------------------------------------------------------------------------------------------
# transformers' generate: sharded models (and the benchmark's baseline)


def _generate_hf(model, prompts: Sequence[list[int]], *, max_new_tokens: int, batch_size: int, k: int,
                 sampling: Sampling, seed: int | None, eos_id: int, pad_id: int,
                 on_done=None) -> list[list[list[int]]]:
    """Token lists per prompt from `model.generate`, batch_size prompts (x k return sequences) a call."""
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[list[list[int]] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        input_ids, attention = left_pad([prompts[i] for i in idx], pad_id)
        width = input_ids.shape[1]
        if seed is not None:
            # Seed per batch so a resumed run reproduces the same samples for the same questions.
            torch.manual_seed(seed + start)
        kwargs = dict(do_sample=sampling.do_sample, max_new_tokens=max_new_tokens, num_return_sequences=k,
                      pad_token_id=pad_id, eos_token_id=eos_id,
                      # A sharded model's forward is a collective: a rank whose batch finished keeps
                      # stepping until every rank has, or the others hang waiting for its all-gather.
                      synced_gpus=is_sharded(model))
        if sampling.do_sample:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
        with torch.no_grad():
            seqs = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        new = seqs[:, width:].cpu().tolist()
        for row, i in enumerate(idx):
            out[i] = [_cut(new[row * k + j], eos_id) for j in range(k)]
        if on_done is not None:
            on_done(len(idx))
    return out  # type: ignore[return-value]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, longest] of token lists, left-padded as `generate` expects."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        if p:
            input_ids[row, width - len(p):] = torch.tensor(list(p))
            attention[row, width - len(p):] = 1
    return input_ids, attention


def _cut(toks: list[int], eos_id: int) -> list[int]:
    """Tokens up to and including the first EOS (generate pads finished rows after it)."""
    return toks[: toks.index(eos_id) + 1] if eos_id in toks else toks
