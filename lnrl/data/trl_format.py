"""Outside preference data: prompt / chosen / rejected rows in the formats TRL users already have.

One row is one pair. Four forms are read (TRL's "standard" and "conversational" preference formats,
each with an explicit or an implicit prompt):

    standard        {"prompt": "What is 2+2?", "chosen": "2+2 = 4\\n#### 4", "rejected": "#### 5"}
    conversational  {"prompt": [{"role": "user", "content": "What is 2+2?"}],
                     "chosen": [{"role": "assistant", "content": "#### 4"}],
                     "rejected": [{"role": "assistant", "content": "#### 5"}]}
    implicit        {"chosen": [user..., {"role": "assistant", "content": "#### 4"}],
                     "rejected": [user..., {"role": "assistant", "content": "#### 5"}]}
                    (also with plain strings: the prompt is their common prefix, cut at a space)

As in TRL, a `prompt` whose format differs from `chosen`'s (a string next to message lists, as some hub
datasets carry) is ignored and the prompt taken from the conversations.

Tokenization is lnrl's own (lnrl/data/tokenize.py), not TRL's: the prompt goes through the chat template
with the assistant turn opened (a standard prompt is the user turn, exactly like an lnrl question, with
`data.system_prompt`; a conversational prompt keeps its messages and gets `data.system_prompt` only when
it has no system message of its own), and the completion is the assistant text + eos. So a standard row
whose prompt is an lnrl question encodes to the same ids as that question's lnrl pair.

Optional columns: `data.weight_field` (a dotted path into the row, e.g. `weight`) gives per-pair
weights, checked and scaled to mean 1 like lnrl's (lnrl.data.pairs); `ref_chosen` / `ref_rejected`
(`{"logp_sum", "n_tokens"}`, written by lnrl-refscores) are cached reference scores.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lnrl.data.pairs import _scale_weights, resolve
from lnrl.data.records import DataError, check_on_error, parse_ref, warn_skipped
from lnrl.data.sources.files import is_hub_id, read_rows
from lnrl.data.tokenize import encode_chat, encode_completion, join, messages

log = logging.getLogger(__name__)

PREFS_FORMATS = ("auto", "lnrl", "trl")
# A hub id with a split: "trl-lib/ultrafeedback_binarized:test" (default split: train).
_HUB_SPLIT = re.compile(r"(?P<id>[\w.-]+/[\w.-]+):(?P<split>[\w.-]+)")


@dataclass(frozen=True)
class PrefRecord:
    """One outside preference pair, its prompt as chat messages and its completions as assistant text."""

    id: str
    prompt: tuple[dict, ...]          # messages, without data.system_prompt (added at encoding)
    chosen: str
    rejected: str
    form: str                         # standard | conversational | standard_implicit | conversational_implicit
    weight: float = 1.0               # raw, or scaled to mean 1 by read_trl_prefs
    ref_chosen: tuple[float, int] | None = None
    ref_rejected: tuple[float, int] | None = None
    loc: str | None = None            # "path:line" for messages

    @property
    def question(self) -> str:
        """The last user turn: what the held-out leakage check compares with lnrl questions."""
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


def check_prefs_format(fmt: str) -> str:
    if fmt not in PREFS_FORMATS:
        raise ValueError(f"data.prefs_format={fmt!r}; expected one of {PREFS_FORMATS} (auto: from the file's first "
                         f"record: 'completions' = lnrl groups, 'chosen'/'rejected' = TRL preference rows)")
    return fmt


def split_source(path: str) -> tuple[str, str]:
    """(local path or hub id, hub split): "owner/name:test" reads the hub split `test`."""
    m = _HUB_SPLIT.fullmatch(str(path))
    if m and not Path(path).exists() and is_hub_id(m["id"]):
        return m["id"], m["split"]
    return str(path), "train"


def detect_format(path: str | Path | None, fmt: str = "auto") -> str:
    """'lnrl' (group records) or 'trl' (prompt/chosen/rejected rows) for a preference file or hub id.

    auto: a hub id is TRL data (lnrl groups are local files); a local file is judged by its first
    record. A file that cannot be read is left to the group reader, whose errors name it.
    """
    check_prefs_format(fmt)
    if fmt != "auto" or path is None:
        return "lnrl" if fmt == "auto" else fmt
    source, _ = split_source(str(path))
    if not Path(source).exists():
        return "trl" if is_hub_id(source) else "lnrl"
    try:
        _, first, _ = next(read_rows(source, on_error="skip"))
    except (StopIteration, DataError, OSError):
        return "lnrl"
    return "trl" if "chosen" in first and "rejected" in first and "completions" not in first else "lnrl"


# ----------------------------------------------------------------------------- parsing

def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _messages(value: Any, loc: str, name: str) -> tuple[dict, ...]:
    """A non-empty list of {"role": str, "content": str} (extra keys dropped)."""
    if not _is_messages(value):
        raise DataError(f"{loc}: field '{name}': expected a non-empty list of {{role, content}} messages, "
                        f"got {type(value).__name__}")
    out = []
    for i, m in enumerate(value):
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                raise DataError(f"{loc}: field '{name}[{i}].{key}': expected str, got {type(m.get(key)).__name__} "
                                f"(text messages only)")
        out.append({"role": m["role"], "content": m["content"]})
    return tuple(out)


def _answer(msgs: tuple[dict, ...], loc: str, name: str) -> str:
    """The text of a completion that must be exactly one assistant message."""
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        roles = [m["role"] for m in msgs]
        raise DataError(f"{loc}: field '{name}': expected one assistant message (one completion per pair), "
                        f"got roles {roles}")
    return msgs[0]["content"]


def _nonempty(text: str, loc: str, name: str) -> str:
    if not text.strip():
        raise DataError(f"{loc}: field '{name}': empty completion")
    return text


def _split_conversations(chosen: tuple[dict, ...], rejected: tuple[dict, ...], loc: str):
    """Implicit prompt: the messages both conversations share; each must then end in one assistant message."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    if k == 0:
        raise DataError(f"{loc}: fields 'chosen'/'rejected': no 'prompt' and no shared first message to take "
                        f"the prompt from")
    return chosen[:k], _answer(chosen[k:], loc, "chosen"), _answer(rejected[k:], loc, "rejected")


def _split_texts(chosen: str, rejected: str, loc: str) -> tuple[str, str, str]:
    """Implicit standard prompt: the common prefix, cut at its last whitespace so no word is split
    (TRL cuts at the first differing character; under a chat template a split word is noise)."""
    k = 0
    while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
        k += 1
    cut = max((i + 1 for i in range(k) if chosen[i].isspace()), default=0)
    prompt = chosen[:cut].strip()
    if not prompt:
        raise DataError(f"{loc}: fields 'chosen'/'rejected': no 'prompt' and no shared leading words to take "
                        f"the prompt from")
    return prompt, chosen[cut:], rejected[cut:]


def parse_trl_row(row: dict, loc: str, default_id: str, weight_field: str | None = None) -> PrefRecord:
    """One TRL preference row as a PrefRecord, or DataError naming loc and the field."""
    for key in ("chosen", "rejected"):
        if row.get(key) is None:
            raise DataError(f"{loc}: field '{key}': missing (a TRL preference row has prompt/chosen/rejected)")
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    kinds = ["messages" if _is_messages(v) else "str" if isinstance(v, str) else None for v in (chosen, rejected)]
    if None in kinds or kinds[0] != kinds[1]:
        raise DataError(f"{loc}: fields 'chosen'/'rejected': expected two strings or two message lists, got "
                        f"{type(chosen).__name__} and {type(rejected).__name__}")
    conversational = kinds[0] == "messages"
    # TRL's rule: a prompt of the other format (a str beside message lists) is ignored; the prompt is implicit.
    explicit = prompt is not None and (_is_messages(prompt) if conversational else isinstance(prompt, str))
    if conversational:
        c_msgs, r_msgs = _messages(chosen, loc, "chosen"), _messages(rejected, loc, "rejected")
        if explicit:
            msgs = _messages(prompt, loc, "prompt")
            # Some datasets repeat the prompt at the head of each conversation: drop it there.
            c_msgs, r_msgs = (m[len(msgs):] if m[:len(msgs)] == msgs else m for m in (c_msgs, r_msgs))
            c, r = _answer(c_msgs, loc, "chosen"), _answer(r_msgs, loc, "rejected")
        else:
            msgs, c, r = _split_conversations(c_msgs, r_msgs, loc)
    elif explicit:
        if not prompt.strip():
            raise DataError(f"{loc}: field 'prompt': empty")
        msgs, c, r = tuple(messages(prompt)), chosen, rejected
    else:
        text, c, r = _split_texts(chosen, rejected, loc)
        msgs = tuple(messages(text))
    if not any(m["role"] == "user" for m in msgs):
        raise DataError(f"{loc}: field 'prompt': no user message")
    if msgs[-1]["role"] == "assistant":
        raise DataError(f"{loc}: field 'prompt': ends with an assistant message; the completion must be the "
                        f"assistant's next turn")
    weight = 1.0
    if weight_field is not None:
        try:
            weight = resolve(row, weight_field)
        except KeyError:
            raise DataError(f"{loc}: field '{weight_field}': missing (data.weight_field names the weight "
                            f"column of every row, e.g. data.weight_field=weight)") from None
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise DataError(f"{loc}: field '{weight_field}': expected a finite number >= 0, got {weight!r}")
    rid = row.get("id")
    return PrefRecord(
        id=rid if isinstance(rid, str) and rid else default_id, prompt=msgs,
        chosen=_nonempty(c, loc, "chosen"), rejected=_nonempty(r, loc, "rejected"),
        form=("conversational" if conversational else "standard") + ("" if explicit else "_implicit"),
        weight=float(weight), ref_chosen=parse_ref(row.get("ref_chosen"), loc, "ref_chosen"),
        ref_rejected=parse_ref(row.get("ref_rejected"), loc, "ref_rejected"), loc=loc)


def iter_trl_rows(path: str | Path, on_error: str = "raise", stats: dict | None = None):
    """(location, row, default id) of each row of a local .jsonl / .json file or a hub split ("id" or
    "id:split"). The default id names the row's place ("line 3", "item 2", "row 7"), so skipping a bad
    line renumbers nothing."""
    source, split = split_source(str(path))
    for i, (loc, row, meta) in enumerate(read_rows(source, split, on_error=on_error, stats=stats)):
        yield loc, row, next((f"{k} {meta[k]}" for k in ("line", "item", "row") if k in meta), f"row {i}")


def read_trl_prefs(path: str | Path, on_error: str = "raise", stats: dict | None = None,
                   weight_field: str | None = None, weight_clip: float | None = None) -> list[PrefRecord]:
    """Every pair of a TRL preference file or hub dataset; with weight_field, weights clipped (weight_clip,
    as in lnrl.data.pairs.make_pairs) and scaled to mean 1.

    A bad row raises DataError("path:line: field 'x': ..."), or with on_error="skip" is counted in
    stats["skipped"]. stats also gets prefs_forms (how many rows of each form).
    """
    check_on_error(on_error)
    stats = {} if stats is None else stats
    stats.setdefault("skipped", 0)
    out: list[PrefRecord] = []
    for loc, row, default_id in iter_trl_rows(path, on_error, stats):
        try:
            out.append(parse_trl_row(row, loc, default_id, weight_field))
        except DataError:
            if on_error == "raise":
                raise
            stats["skipped"] += 1
    warn_skipped(path, stats)
    if weight_field is not None and out:
        weights, _ = _scale_weights([r.weight for r in out], weight_field, weight_clip)
        out = [replace(r, weight=w) for r, w in zip(out, weights)]
    forms: dict[str, int] = {}
    for r in out:
        forms[r.form] = forms.get(r.form, 0) + 1
    stats["prefs_forms"] = forms
    return out


# ----------------------------------------------------------------------------- tokenization

def prompt_messages(rec: PrefRecord, system_prompt: str | None = None) -> list[dict]:
    """The prompt as the chat template sees it: data.system_prompt first unless the row has its own."""
    msgs = list(rec.prompt)
    if system_prompt is not None and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def encode_pref(tokenizer, rec: PrefRecord, max_length: int, system_prompt: str | None = None,
                overlong: str = "truncate", stats: dict | None = None) -> tuple[dict | None, dict | None]:
    """(chosen row, rejected row) as lnrl encodes its own rows: chat-template prompt + completion + eos,
    completion_mask on the completion; a row is None when the overlong policy drops it."""
    prompt = encode_chat(tokenizer, prompt_messages(rec, system_prompt))
    return tuple(join(prompt, encode_completion(tokenizer, text), max_length, overlong, stats)
                 for text in (rec.chosen, rec.rejected))
