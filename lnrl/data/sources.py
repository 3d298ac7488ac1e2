"""Data sources: each turns a config node into train and held-out `Example`s.

A source is a function registered in SOURCES; `build_source({"name": ..., **options})` calls it.
Adding one is a function returning `SourceSplit` plus `@register_source("name")` (docs/data.md).
Every loader names file, line and field on bad input; `on_error="skip"` skips and counts instead.
"""

from __future__ import annotations

import inspect
import json
import logging
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lnrl.data.records import DataError, Example, check_on_error, get_field, iter_jsonl

log = logging.getLogger(__name__)


@dataclass
class SourceSplit:
    train: list[Example]
    eval: list[Example]
    info: dict = field(default_factory=dict)  # how the split was made; the trainer writes it to the run dir


Loader = Callable[..., SourceSplit]
SOURCES: dict[str, Loader] = {}


def register_source(name: str) -> Callable[[Loader], Loader]:
    def deco(fn: Loader) -> Loader:
        if name in SOURCES:
            raise ValueError(f"source {name!r} is already registered")
        SOURCES[name] = fn
        return fn
    return deco


def build_source(cfg: dict, on_error: str | None = None) -> SourceSplit:
    """Load the source named by cfg["name"] with the remaining keys as options.

    on_error (from the datamodule) applies unless the source config sets its own.
    """
    cfg = dict(_plain(cfg))
    name = cfg.pop("name", None)
    if name not in SOURCES:
        raise ValueError(f"data.source.name={name!r}; registered sources: {sorted(SOURCES)}")
    if on_error is not None:
        cfg.setdefault("on_error", on_error)
    fn = SOURCES[name]
    params = inspect.signature(fn).parameters
    unknown = sorted(set(cfg) - set(params))
    if unknown:
        raise ValueError(f"data.source ({name}): unknown option(s) {unknown}; accepted: {sorted(params)}")
    split = fn(**cfg)
    split.info = {"source": name, **split.info, "n_train": len(split.train), "n_eval": len(split.eval)}
    if split.info.get("skipped"):
        log.warning("source %s: skipped %d bad record(s) (on_error=skip)", name, split.info["skipped"])
    return split


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    return cfg


def normalize_answer(answer: str) -> str:
    """Canonical plain numbers ("1,080" -> "1080", "16.0" -> "16"); anything else stripped as written."""
    from lnrl.verify.answers import normalize_number

    answer = answer.strip()
    return normalize_number(answer) or answer


# ----------------------------------------------------------------------------- gsm_symbolic

GSM_SYMBOLIC_SUFFIX = " Give the result as your final answer. Do not include units."
_HASH_LINE = re.compile(r"\n####[ \t]*([^\n]*)\s*$")


def _symbolic_example(raw: dict, template: int, k: int, split: str) -> Example:
    """One generator output as an Example; ValueError when it is unusable."""
    answer = normalize_answer(str(raw["answer"]))
    cot = str(raw["metadata"]["answer_cot"]).rstrip()
    m = _HASH_LINE.search(cot)
    if not answer or m is None:
        raise ValueError("no answer or no '#### N' line")
    # A few templates print "#### 16.0" for answer 16: end every gold CoT with the normalized answer
    # so the model learns one format.
    if normalize_answer(m.group(1)) != answer:
        raise ValueError(f"CoT ends with {m.group(1)!r} but the answer is {answer!r}")
    cot = cot[: m.start()] + f"\n#### {answer}"
    return Example(id=f"gsm_symbolic/t{template}/{k}", question=str(raw["question"]) + GSM_SYMBOLIC_SUFFIX,
                   solution=cot, answer=answer, source="gsm_symbolic",
                   meta={"template": template, "index": k, "split": split})


def _generate_round_robin(generators: dict, templates: list[int], n: int, seed: int, split: str,
                          difficulty: float, counts: dict, max_tries: int = 50) -> list[Example]:
    """n unique examples, one per template in turn; example k of template t uses rng key (seed, t, k).

    A generator that raises (some do for some rngs) or repeats a question is counted and retried with
    the next k; a template that fails max_tries times in a row is retired.
    """
    next_k = {t: 0 for t in templates}
    alive = list(templates)
    seen: set[str] = set()
    out: list[Example] = []
    while len(out) < n:
        if not alive:
            raise DataError(f"gsm_symbolic: the {split} templates {templates} gave only {len(out)} unique "
                            f"examples of the {n} asked; lower n_{split} or raise eval_fraction")
        for t in list(alive):
            if len(out) >= n:
                break
            for _ in range(max_tries):
                k = next_k[t]
                next_k[t] += 1
                try:
                    # A str seed is hashed with sha512: the same key gives the same example everywhere.
                    ex = _symbolic_example(generators[t](random.Random(f"gsm_symbolic/{seed}/{t}/{k}"), difficulty),
                                           t, k, split)
                except Exception:  # noqa: BLE001 - third-party generators raise anything
                    counts["generator_failures"] += 1
                    continue
                if ex.question in seen:
                    counts["duplicates_skipped"] += 1
                    continue
                seen.add(ex.question)
                out.append(ex)
                break
            else:
                alive.remove(t)
    return out


@register_source("gsm_symbolic")
def gsm_symbolic(seed: int = 0, n_train: int = 256, n_eval: int = 64, eval_fraction: float = 0.2,
                 difficulty: float = 1.0, on_error: str = "raise") -> SourceSplit:
    """reasoning-gym's GSM-Symbolic templates, split by template id.

    The held-out templates are the first round(eval_fraction * #templates) of a shuffle of
    `tasks_ok` seeded by `seed`, so evaluation measures transfer to unseen templates.
    (on_error is accepted for a uniform interface; generator failures are always counted and skipped.)
    """
    from reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic import (
        GSMSymbolicDataset,
        GSMSymbolicDatasetConfig,
        tasks_ok,
    )

    check_on_error(on_error)
    if not 0 < eval_fraction < 1:
        raise ValueError(f"data.source.eval_fraction={eval_fraction}; expected 0 < eval_fraction < 1")
    order = sorted(tasks_ok)
    random.Random(seed).shuffle(order)
    n_held = min(max(1, round(eval_fraction * len(order))), len(order) - 1)
    eval_t, train_t = sorted(order[:n_held]), sorted(order[n_held:])
    generators = GSMSymbolicDataset(GSMSymbolicDatasetConfig(seed=seed, size=1)).generators
    counts = {"generator_failures": 0, "duplicates_skipped": 0}
    train = _generate_round_robin(generators, train_t, n_train, seed, "train", difficulty, counts)
    held = _generate_round_robin(generators, eval_t, n_eval, seed, "eval", difficulty, counts)
    return SourceSplit(train, held, {"seed": seed, "eval_fraction": eval_fraction, "train_templates": train_t,
                                     "eval_templates": eval_t, **counts})


# ----------------------------------------------------------------------------- file / hub rows

_FILE_SUFFIXES = (".jsonl", ".json", ".txt")
_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def is_hub_id(path: str) -> bool:
    return not Path(path).exists() and bool(_HUB_ID.fullmatch(path)) and not path.endswith(_FILE_SUFFIXES)


def read_rows(path: str, split: str = "train", hub_config: str | None = None, on_error: str = "raise",
              stats: dict | None = None) -> Iterator[tuple[str, dict, dict]]:
    """(location for messages, row, meta) for each row of a local .jsonl / .json-list file or a hub split."""
    p = Path(path)
    if p.is_file():
        if p.suffix == ".json":
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{e.lineno}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(data, list):
                raise DataError(f"{p}: expected a JSON list of objects, got {type(data).__name__}")
            for i, obj in enumerate(data):
                if not isinstance(obj, dict):
                    if on_error == "raise":
                        raise DataError(f"{p}: item {i}: expected an object, got {type(obj).__name__}")
                    if stats is not None:
                        stats["skipped"] = stats.get("skipped", 0) + 1
                    continue
                yield f"{p}: item {i}", obj, {"file": str(p), "item": i}
        else:
            for lineno, obj in iter_jsonl(p, on_error, stats):
                yield f"{p}:{lineno}", obj, {"file": str(p), "line": lineno}
        return
    if p.exists():
        raise DataError(f"{p}: not a file (expected a .jsonl or .json file, or a hub dataset id)")
    if not is_hub_id(path):
        raise DataError(f"{p}: no such file")
    try:
        import datasets

        ds = datasets.load_dataset(path, hub_config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, unknown id, missing split: one clear message
        raise DataError(f"{path}: could not load split {split!r} from the hub ({type(e).__name__}: {e}); "
                        f"pass a local .jsonl path instead") from e
    for i, row in enumerate(ds):
        yield f"hub:{path}[{split}]: row {i}", dict(row), {"hub": path, "split": split, "row": i}


def _parse_rows(rows: Iterator[tuple[str, dict, dict]], parse: Callable[[dict, str], tuple[str, str, str, dict]],
                name: str, tag: str, on_error: str, stats: dict) -> list[Example]:
    out = []
    for i, (loc, row, meta) in enumerate(rows):
        # The id follows the row's place in the file (line - 1, item, hub row), so skipping a bad
        # line does not renumber the rest.
        index = meta["line"] - 1 if "line" in meta else meta.get("item", meta.get("row", i))
        try:
            question, solution, answer, extra = parse(row, loc)
        except DataError:
            if on_error == "raise":
                raise
            stats["skipped"] = stats.get("skipped", 0) + 1
            continue
        out.append(Example(id=f"{name}/{tag}/{index}", question=question, solution=solution, answer=answer,
                           source=name, meta={**meta, **extra}))
    return out


def _subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded subset of n examples, kept in source order (all when n is None or too large)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def _holdout(examples: list[Example], n_eval: int | None, eval_fraction: float, seed: int,
             key: Callable[[Example], str]) -> tuple[list[Example], list[Example]]:
    """Seeded hold-out by key: examples sharing a key (the same question, or rephrasings of one
    original question) all land on the same side, so nothing leaks from train into evaluation."""
    target = n_eval if n_eval is not None else round(eval_fraction * len(examples))
    if target <= 0:
        return examples, []
    keys = list(dict.fromkeys(key(e) for e in examples))
    random.Random(seed).shuffle(keys)
    sizes: dict[str, int] = {}
    for e in examples:
        sizes[key(e)] = sizes.get(key(e), 0) + 1
    held, count = set(), 0
    for k in keys:
        if count >= target:
            break
        held.add(k)
        count += sizes[k]
    return [e for e in examples if key(e) not in held], [e for e in examples if key(e) in held]


def _train_eval(name: str, path: str, parse, *, eval_path: str | None, hub_config: str | None,
                hub_eval_split: str | None, n_train: int | None, n_eval: int | None, eval_fraction: float,
                seed: int, on_error: str, key: Callable[[Example], str] = lambda e: e.question) -> SourceSplit:
    """Shared by the file/hub sources: load train rows, then the held-out split from (in order)
    eval_path, the hub's test split, or a seeded hold-out of the training rows."""
    check_on_error(on_error)
    stats = {"skipped": 0}
    hub = is_hub_id(path)
    tag = "train" if hub else Path(path).stem
    train = _parse_rows(read_rows(path, "train", hub_config, on_error, stats), parse, name, tag, on_error, stats)
    if eval_path is not None:
        eval_tag = Path(eval_path).stem if Path(eval_path).stem != tag else "eval"
        held = _parse_rows(read_rows(eval_path, "test", hub_config, on_error, stats), parse, name, eval_tag,
                           on_error, stats)
        how = f"eval_path {eval_path}"
    elif hub and hub_eval_split is not None:
        held = _parse_rows(read_rows(path, hub_eval_split, hub_config, on_error, stats), parse, name,
                           hub_eval_split, on_error, stats)
        how = f"hub split {hub_eval_split}"
    else:
        train, held = _holdout(train, n_eval, eval_fraction, seed, key)
        how = f"seeded hold-out (seed {seed})"
    if not train:
        raise DataError(f"{path}: no training examples left ({stats['skipped']} rows skipped, "
                        f"{len(held)} held out for evaluation)")
    return SourceSplit(_subsample(train, n_train, seed), _subsample(held, n_eval, seed),
                       {"path": path, "eval_from": how, "seed": seed, "skipped": stats["skipped"]})


# ----------------------------------------------------------------------------- gsm8k

_CALC = re.compile(r"<<[^<>]*>>")


@register_source("gsm8k")
def gsm8k(path: str = "openai/gsm8k", config: str = "main", eval_path: str | None = None,
          strip_calculator: bool = False, n_train: int | None = None, n_eval: int | None = None,
          eval_fraction: float = 0.1, seed: int = 0, on_error: str = "raise") -> SourceSplit:
    """GSM8K: `question` / `answer` rows whose answer is a CoT ending in "#### N".

    strip_calculator removes the `<<48/2=24>>` calculator annotations from the CoT.
    """

    def parse(row: dict, loc: str):
        question = get_field(row, "question", str, loc, nonempty=True)
        cot = get_field(row, "answer", str, loc, nonempty=True).strip()
        if "####" not in cot:
            raise DataError(f"{loc}: field 'answer': no '#### N' final-answer line")
        answer = normalize_answer(cot.rsplit("####", 1)[1])
        if not answer:
            raise DataError(f"{loc}: field 'answer': empty final answer after '####'")
        if strip_calculator:
            cot = _CALC.sub("", cot)
        return question.strip(), cot, answer, {}

    return _train_eval("gsm8k", path, parse, eval_path=eval_path, hub_config=config, hub_eval_split="test",
                       n_train=n_train, n_eval=n_eval, eval_fraction=eval_fraction, seed=seed, on_error=on_error)


# ----------------------------------------------------------------------------- metamathqa

_ANSWER_IS = "The answer is"


@register_source("metamathqa")
def metamathqa(path: str = "meta-math/MetaMathQA", eval_path: str | None = None, n_train: int | None = None,
               n_eval: int | None = None, eval_fraction: float = 0.1, seed: int = 0,
               on_error: str = "raise") -> SourceSplit:
    """MetaMathQA: `query` / `response` rows, the answer after "The answer is: X".

    The hub has only a train split, so evaluation is a seeded hold-out keyed by `original_question`
    when present: all rephrasings of one question stay on the same side.
    """
    from lnrl.verify.answers import extract_answer

    def parse(row: dict, loc: str):
        question = get_field(row, "query", str, loc, nonempty=True)
        response = get_field(row, "response", str, loc, nonempty=True).strip()
        at = response.rfind(_ANSWER_IS)
        if at < 0:
            raise DataError(f"{loc}: field 'response': no '{_ANSWER_IS}: X' final-answer phrase")
        answer = extract_answer(response[at:])
        if not answer:
            raise DataError(f"{loc}: field 'response': empty final answer after '{_ANSWER_IS}'")
        extra = {k: row[k] for k in ("type", "original_question") if isinstance(row.get(k), str)}
        return question.strip(), response, normalize_answer(answer), extra

    return _train_eval("metamathqa", path, parse, eval_path=eval_path, hub_config=None, hub_eval_split=None,
                       n_train=n_train, n_eval=n_eval, eval_fraction=eval_fraction, seed=seed, on_error=on_error,
                       key=lambda e: e.meta.get("original_question", e.question))


# ----------------------------------------------------------------------------- generic jsonl

@register_source("jsonl")
def jsonl(path: str, question_field: str = "question", solution_field: str = "solution",
          answer_field: str | None = None, eval_path: str | None = None, n_train: int | None = None,
          n_eval: int | None = None, eval_fraction: float = 0.1, seed: int = 0,
          on_error: str = "raise") -> SourceSplit:
    """Any JSONL (or JSON list) with configurable field names. Without answer_field the answer is
    extracted from the solution ("#### N", "The answer is: X", \\boxed{}, last number)."""
    from lnrl.verify.answers import extract_answer

    def parse(row: dict, loc: str):
        question = get_field(row, question_field, str, loc, nonempty=True)
        solution = get_field(row, solution_field, str, loc, nonempty=True).strip()
        if answer_field is not None:
            raw = get_field(row, answer_field, (str, int, float), loc)
            answer, field_name = normalize_answer(str(raw)), answer_field
        else:
            answer, field_name = extract_answer(solution) or "", solution_field
        if not answer:
            raise DataError(f"{loc}: field '{field_name}': empty answer")
        return question.strip(), solution, answer, {}

    return _train_eval("jsonl", path, parse, eval_path=eval_path, hub_config=None, hub_eval_split=None,
                       n_train=n_train, n_eval=n_eval, eval_fraction=eval_fraction, seed=seed, on_error=on_error)
