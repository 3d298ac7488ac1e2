"""lm-evaluation-harness's ``gsm8k`` protocol on lnrl's held-out questions (``eval.protocol=harness_gsm8k``).

Beside lnrl's zero-shot chat evaluation (`answer_accuracy`), so that a number from lnrl can sit next to
one published as "GSM8K (lm-eval-harness, 5-shot)": each held-out question is prompted as plain text
(no chat template) with the harness's 5-shot prompt, its shots drawn from the data source's training
split as the harness draws them (`lnrl.verify.harness_gsm8k.prompts`), decoded greedily up to
`max_new_tokens` (the harness: 256), cut before the first stop string and scored by strict-match and
flexible-extract exact match (`harness_gsm8k.score`). docs/evaluation_protocols.md says what is and is
not identical to the harness.

    metrics, records = harness_accuracy(model, tokenizer, examples, shots_from=train_examples)
    metrics["val/harness_strict_match"], metrics["val/harness_flexible_extract"]

A record per question (harness.jsonl): id, gold (the reference as the metric compares it), shots (ids
of the shot examples), prompt_tokens, prompt_truncated, completion (cut at the stop strings),
strict_pred, flexible_pred (the filters' outputs), strict_match, flexible_extract (bools), n_tokens,
truncated.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from lnrl.data.records import Example
from lnrl.distributed import is_sharded
from lnrl.generation import Generation, generate, left_pad
from lnrl.verify import harness_gsm8k as hg

log = logging.getLogger(__name__)

# The harness's HF backend falls back to this context length when neither the model config nor the
# tokenizer gives one (lm_eval/models/utils.py, resolve_max_length and DEFAULT_MAX_LENGTH).
_DEFAULT_CONTEXT = 2048
_CONTEXT_ATTRS = ("n_positions", "max_position_embeddings", "n_ctx")  # the order the harness reads them in
_UNSET = int(1e30)  # transformers' model_max_length when the tokenizer sets none


def gold_text(example: Example) -> str:
    """What the harness compares against: the full "... #### N" solution (its normalisation keeps the
    number after the last "#### "), or the reference answer for a source whose solutions lack that line."""
    return example.solution if "#### " in example.solution else example.answer


def context_limit(model, tokenizer) -> int:
    """Tokens of prompt plus generation the harness's HF backend allows: the model config's length (a
    composite config's `text_config` first), else the tokenizer's unless unset, else 2048."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in _CONTEXT_ATTRS:
        if getattr(config, attr, None) is not None:
            return int(getattr(config, attr))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit is not None and limit != _UNSET else _DEFAULT_CONTEXT


def harness_accuracy(model, tokenizer, examples: Sequence[Example], shots_from: Sequence[Example], *,
                     max_new_tokens: int = 256, batch_size: int = 16,
                     progress: bool = True) -> tuple[dict[str, float], list[dict]]:
    """Greedy 5-shot plain-text generation scored as the harness scores it: (metrics, one record per example).

    `shots_from`: the training split the shots come from. The shots are the harness's own only when it is
    GSM8K's train split in its published order (data=gsm8k with the hub dataset, or data.path=<train.jsonl>
    with data.source.eval_path=<test.jsonl>: no hold-out, no n_train) and `examples` are the test split
    in order (eval.n_examples=n is the harness's --limit n).
    """
    if len(shots_from) < hg.FEWSHOT:
        raise ValueError(f"eval.protocol=harness_gsm8k: {hg.FEWSHOT} shots per question need a training split of "
                         f"at least {hg.FEWSHOT} examples, got {len(shots_from)}")
    pool = [(e.question, e.solution) for e in shots_from]
    texts = hg.prompts([e.question for e in examples], pool)
    shots = hg.fewshot_indices(len(pool), len(examples))  # the draws `prompts` made, for the records
    # The harness's HF backend encodes with the tokenizer's default special tokens (a BOS where the
    # tokenizer adds one) and keeps the last (context - max_new_tokens) tokens of a longer prompt.
    keep = context_limit(model, tokenizer) - max_new_tokens
    if keep < 1:
        raise ValueError(f"eval.max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
                         f"context of {keep + max_new_tokens} tokens")
    full = [list(tokenizer(t)["input_ids"]) for t in texts]
    prompt_ids = [ids[-keep:] for ids in full]
    cut = sum(len(a) != len(b) for a, b in zip(full, prompt_ids))
    if cut:
        log.warning("harness_gsm8k: %d of %d prompts are longer than %d tokens and lose their first tokens "
                    "(as the harness truncates them)", cut, len(full), keep)
    gens = generate_from_ids(model, tokenizer, texts, prompt_ids, stop=hg.STOP, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, progress=progress)
    records = []
    for ex, idx, ids, ids_full, g in zip(examples, shots, prompt_ids, full, gens):
        text = hg.cut_at_stop(g.text)
        gold = gold_text(ex)
        scored = hg.score(text, gold)
        records.append({"id": ex.id, "gold": hg.normalize(gold), "shots": [shots_from[j].id for j in idx],
                        "prompt_tokens": len(ids), "prompt_truncated": len(ids) != len(ids_full),
                        "completion": text, "strict_pred": hg.strict_match(text),
                        "flexible_pred": hg.flexible_extract(text),
                        "strict_match": scored["strict-match"] == 1.0,
                        "flexible_extract": scored["flexible-extract"] == 1.0,
                        "n_tokens": g.n_tokens, "truncated": g.truncated})
    n = max(len(records), 1)
    metrics = {"val/harness_strict_match": sum(r["strict_match"] for r in records) / n,
               "val/harness_flexible_extract": sum(r["flexible_extract"] for r in records) / n,
               "val/harness_questions": float(len(records))}
    return metrics, records


def generate_from_ids(model, tokenizer, texts: Sequence[str], prompt_ids: Sequence[list[int]], *,
                      stop: Sequence[str], max_new_tokens: int, batch_size: int,
                      progress: bool = True) -> list[Generation]:
    """One greedy generation per raw prompt (token ids, no chat template), stopped at `stop` strings.

    Uses `lnrl.generation.generate(..., prompt_ids=, stop=)` when it takes them (`texts` are then passed
    as its questions, one per prompt); until then the private fallback below.
    """
    params = inspect.signature(generate).parameters
    if "prompt_ids" in params and "stop" in params:
        out = generate(model, tokenizer, list(texts), prompt_ids=list(prompt_ids), stop=list(stop),
                       max_new_tokens=max_new_tokens, batch_size=batch_size, desc="eval: harness_gsm8k",
                       progress=progress)
        return [rows[0] for rows in out]
    return _fallback_generate(model, tokenizer, prompt_ids, stop=stop, max_new_tokens=max_new_tokens,
                              batch_size=batch_size, progress=progress)


# TODO(lnrl.generation rewrite): delete `_fallback_generate` once `generate()` takes `prompt_ids=` (token ids
# used instead of the chat template) and `stop=` (stop strings); `generate_from_ids` then calls it alone.
def _fallback_generate(model, tokenizer, prompt_ids: Sequence[list[int]], *, stop: Sequence[str],
                       max_new_tokens: int, batch_size: int, progress: bool = True) -> list[Generation]:
    """Greedy HF `model.generate` over left-padded batches of raw prompts, stopped by `stop_strings`.

    text: the continuation decoded without special tokens and cut before the first stop string;
    n_tokens: generated tokens before the end-of-turn token (a stop string's own tokens included);
    truncated: max_new_tokens reached with neither an end-of-turn token nor a stop string.
    """
    was_training = model.training
    model.eval()
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    out: list[Generation | None] = [None] * len(prompt_ids)
    bar = tqdm(total=len(prompt_ids), desc="eval: harness_gsm8k", disable=not progress, unit="q")
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            ids, mask = left_pad([prompt_ids[i] for i in idx], pad_id)
            width = ids.shape[1]
            with torch.no_grad():
                seqs = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                      max_new_tokens=max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                                      stop_strings=list(stop), tokenizer=tokenizer,
                                      synced_gpus=is_sharded(model))  # a sharded forward is a collective
            for row, i in enumerate(idx):
                out[i] = _to_generation(tokenizer, seqs[row, width:].tolist(), eos_id, pad_id, stop, max_new_tokens)
            bar.update(len(idx))
    finally:
        bar.close()
        model.train(was_training)
    return out  # type: ignore[return-value]


def _to_generation(tokenizer, toks: list[int], eos_id: int, pad_id: int, stop: Sequence[str],
                   max_new_tokens: int) -> Generation:
    ended = eos_id in toks
    toks = toks[: toks.index(eos_id)] if ended else toks
    while pad_id != eos_id and toks and toks[-1] == pad_id:  # a row that stopped early is padded to the batch
        toks = toks[:-1]
    raw = tokenizer.decode(toks, skip_special_tokens=True)
    text = hg.cut_at_stop(raw, stop)
    stopped = ended or text != raw
    return Generation(text, len(toks), truncated=not stopped and len(toks) >= max_new_tokens)
