"""Cached reference scores: the reference model's scores of every completion in a group file.

DPO-style losses compare the policy with a frozen reference. Scoring the reference once per data
set and storing `SeqScores(logp_sum, n_tokens)` in the records (`ref` on each completion,
`gold_ref` for the gold solution) keeps a second model out of memory for a whole sweep.

Rows are tokenized exactly as the training datamodule does (`lnrl.data.tokenize`), so a cached ref
equals what a live reference would compute for the same row; the lnrl-refscores and lnrl-prefs
apps take `max_length` and `system_prompt` from the `data` config training reads. Resumable:
groups whose provenance already records this model and these settings are skipped, and work is
written every `chunk_size` groups (atomically), so a kill loses at most one chunk. Outside preference
rows in TRL's formats (lnrl.data.trl_format) get `ref_chosen` / `ref_rejected` the same way
(`score_trl_file`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lnrl.data.records import GroupRecord, read_groups, ref_to_json, write_groups
from lnrl.data.tokenize import encode_completion, encode_prompt, join
from lnrl.scoring import score_rows

log = logging.getLogger(__name__)

GOLD = -1  # member index of the gold solution in a group's row list


def model_id(model_cfg: Mapping[str, Any]) -> str:
    """A stable name for the weights a config loads (stored as provenance.ref_model)."""
    # Where files live, not what they hold; and LoRA, whose fresh adapters leave the weights as they are.
    skip = {"cache_dir", "tokenizer_path", "lora"}
    return ",".join(f"{k}={v}" for k, v in sorted(dict(model_cfg).items()) if k not in skip)


def ref_settings(ref_model: str, max_length: int, system_prompt: str | None) -> dict[str, Any]:
    """What a cached ref depends on; stored in each group's provenance and compared on resume."""
    # ref_truncated_eos: refs cached before truncated completions lost their eos must be recomputed.
    return {"ref_model": ref_model, "ref_max_length": int(max_length), "ref_system_prompt": system_prompt,
            "ref_truncated_eos": False}


def is_scored(group: GroupRecord, settings: Mapping[str, Any]) -> bool:
    return all(group.provenance.get(k) == v for k, v in settings.items())


def compute_ref_scores(model, tokenizer, groups: Sequence[GroupRecord], batch_size: int = 8,
                       max_length: int = 512, system_prompt: str | None = None,
                       progress: bool = False) -> list[GroupRecord]:
    """Return copies of `groups` with `ref` on every completion and `gold_ref` filled.

    A row whose prompt alone fills max_length can never be trained on (the datamodule drops it);
    it gets no ref.
    """
    keys: list[tuple[int, int]] = []  # (group index, member index or GOLD) of each row
    rows: list[dict | None] = []
    for gi, g in enumerate(groups):
        prompt = encode_prompt(tokenizer, g.question, system_prompt)
        # A completion cut at the token limit is scored without an eos, as training encodes it.
        texts = [(GOLD, g.gold_solution, False)] + [(ci, c.text, bool(c.truncated)) for ci, c in enumerate(g.completions)]
        for ci, text, truncated in texts:
            keys.append((gi, ci))
            rows.append(join(prompt, encode_completion(tokenizer, text, eos=not truncated), max_length, "truncate"))
    scored = score_rows(model, rows, pad_id=tokenizer.pad_token_id, batch_size=batch_size, progress=progress,
                        desc="refscores")
    # min: a rounding error must not give log p > 0
    scores = {key: (min(s[0], 0.0), s[1]) for key, s in zip(keys, scored) if s is not None}
    return [replace(g, gold_ref=scores.get((gi, GOLD)),
                    completions=[replace(c, ref=scores.get((gi, ci))) for ci, c in enumerate(g.completions)])
            for gi, g in enumerate(groups)]


def score_file(model, tokenizer, input: str | Path, output: str | Path | None = None, *, ref_model: str,
               batch_size: int = 8, max_length: int = 512, system_prompt: str | None = None,
               chunk_size: int = 64, progress: bool = True) -> dict[str, int]:
    """Score every group of `input` not yet scored with these settings; write `output` (default: input).

    Resume: when `output` already exists, groups there that carry matching provenance are kept
    as they are. The whole file is rewritten atomically after each chunk of groups.
    """
    input = Path(input)
    output = Path(output) if output else input
    settings = ref_settings(ref_model, max_length, system_prompt)
    groups = read_groups(input)
    if output != input and output.exists():
        done = {g.id: g for g in read_groups(output) if is_scored(g, settings)}
        groups = [done.get(g.id, g) for g in groups]
    todo = [i for i, g in enumerate(groups) if not is_scored(g, settings)]
    log.info("%s: %d groups, %d already scored with %s", input, len(groups), len(groups) - len(todo), ref_model)
    bar = tqdm(total=len(todo), desc="refscores (groups)", disable=not progress)
    for start in range(0, len(todo), chunk_size):
        idx = todo[start:start + chunk_size]
        scored = compute_ref_scores(model, tokenizer, [groups[i] for i in idx], batch_size, max_length,
                                    system_prompt)
        for i, g in zip(idx, scored):
            groups[i] = replace(g, provenance={**g.provenance, **settings})
        write_groups(output, groups)
        bar.update(len(idx))
    bar.close()
    if not todo and output != input:  # nothing to score: output still gets the (scored) groups
        write_groups(output, groups)
    return {"groups": len(groups), "scored": len(todo), "skipped": len(groups) - len(todo)}


# ----------------------------------------------------------------------------- outside (TRL) preference rows

def compute_pref_ref_scores(model, tokenizer, records: Sequence, batch_size: int = 8, max_length: int = 512,
                            system_prompt: str | None = None, progress: bool = False) -> list[tuple]:
    """(ref_chosen, ref_rejected) of each `lnrl.data.trl_format.PrefRecord`, tokenized as training does
    (`encode_pref`); None for a row whose prompt alone fills max_length (training drops it)."""
    from lnrl.data.trl_format import encode_pref

    rows = [row for r in records for row in encode_pref(tokenizer, r, max_length, system_prompt, "truncate")]
    scored = score_rows(model, rows, pad_id=tokenizer.pad_token_id, batch_size=batch_size, progress=progress,
                        desc="refscores")
    scored = [None if s is None else (min(s[0], 0.0), s[1]) for s in scored]  # rounding must not give log p > 0
    return list(zip(scored[0::2], scored[1::2]))


def score_trl_file(model, tokenizer, input: str | Path, output: str | Path | None = None, *, ref_model: str,
                   batch_size: int = 8, max_length: int = 512, system_prompt: str | None = None,
                   chunk_size: int = 64, progress: bool = True) -> dict[str, int]:
    """Cache `ref_chosen` / `ref_rejected` ({logp_sum, n_tokens}) on every row of a TRL preference file or
    hub split (lnrl.data.trl_format), keeping the row's own fields; write `output` (default: input).

    Each scored row records `ref_provenance` (model, max_length, system prompt). Resume as `score_file`:
    rows of an existing `output` that match the input row and carry these settings are kept; the file is
    rewritten atomically after each chunk.
    """
    import json

    from lnrl.atomic import atomic_open
    from lnrl.data.sources import is_hub_id
    from lnrl.data.trl_format import iter_trl_rows, parse_trl_row, split_source

    if output is None:
        if is_hub_id(split_source(str(input))[0]):
            raise ValueError(f"lnrl-refscores input={input}: a hub dataset cannot be overwritten; "
                             f"give output=<local .jsonl>")
        output = input
    input, output = str(input), Path(output)
    settings = ref_settings(ref_model, max_length, system_prompt)
    source = list(iter_trl_rows(input))
    rows = [row for _, row, _ in source]
    records = [parse_trl_row(row, loc, default_id) for loc, row, default_id in source]  # checks every row first
    if str(output) != input and output.exists():
        done = [row for _, row, _ in iter_trl_rows(output)]
        same = ("prompt", "chosen", "rejected")
        if len(done) == len(rows):
            rows = [d if d.get("ref_provenance") == settings and all(d.get(k) == r.get(k) for k in same) else r
                    for d, r in zip(done, rows)]
    todo = [i for i, row in enumerate(rows) if row.get("ref_provenance") != settings]
    log.info("%s: %d rows, %d already scored with %s", input, len(rows), len(rows) - len(todo), ref_model)

    def write() -> None:
        with atomic_open(output, "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    bar = tqdm(total=len(todo), desc="refscores (rows)", disable=not progress)
    for start in range(0, len(todo), chunk_size):
        idx = todo[start:start + chunk_size]
        refs = compute_pref_ref_scores(model, tokenizer, [records[i] for i in idx], batch_size, max_length,
                                       system_prompt)
        for i, (ref_c, ref_r) in zip(idx, refs):
            row = {k: v for k, v in rows[i].items() if k not in ("ref_chosen", "ref_rejected")}
            row.update({k: ref_to_json(v) for k, v in (("ref_chosen", ref_c), ("ref_rejected", ref_r)) if v})
            rows[i] = {**row, "ref_provenance": settings}
        write()
        bar.update(len(idx))
    bar.close()
    if not todo and str(output) != input:
        write()
    return {"rows": len(rows), "scored": len(todo), "skipped": len(rows) - len(todo)}
