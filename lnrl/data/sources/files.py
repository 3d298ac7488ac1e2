"""Rows of local files and hub datasets, and the train / held-out split the file sources share.

`read_rows` yields each row of a .jsonl / .json-list file or a hub split with a location for
messages; `train_eval` turns rows into train and held-out `Example`s: the held-out split comes from
`eval_path`, the hub's test split, or a seeded hold-out of the training rows (`holdout`).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from lnrl.data.records import DataError, Example, check_on_error, iter_jsonl
from lnrl.data.sources.registry import SourceSplit

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


def parse_rows(rows: Iterator[tuple[str, dict, dict]], parse: Callable[[dict, str], tuple[str, str, str, dict]],
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


def subsample(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    """A seeded subset of n examples, kept in source order (all when n is None or too large)."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def holdout(examples: list[Example], n_eval: int | None, eval_fraction: float, seed: int,
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


def train_eval(name: str, path: str, parse, *, eval_path: str | None, hub_config: str | None,
                hub_eval_split: str | None, n_train: int | None, n_eval: int | None, eval_fraction: float,
                seed: int, on_error: str, key: Callable[[Example], str] = lambda e: e.question) -> SourceSplit:
    """Shared by the file/hub sources: load train rows, then the held-out split from (in order)
    eval_path, the hub's test split, or a seeded hold-out of the training rows."""
    check_on_error(on_error)
    stats = {"skipped": 0}
    hub = is_hub_id(path)
    tag = "train" if hub else Path(path).stem
    train = parse_rows(read_rows(path, "train", hub_config, on_error, stats), parse, name, tag, on_error, stats)
    if eval_path is not None:
        eval_tag = Path(eval_path).stem if Path(eval_path).stem != tag else "eval"
        held = parse_rows(read_rows(eval_path, "test", hub_config, on_error, stats), parse, name, eval_tag,
                           on_error, stats)
        how = f"eval_path {eval_path}"
    elif hub and hub_eval_split is not None:
        held = parse_rows(read_rows(path, hub_eval_split, hub_config, on_error, stats), parse, name,
                           hub_eval_split, on_error, stats)
        how = f"hub split {hub_eval_split}"
    else:
        train, held = holdout(train, n_eval, eval_fraction, seed, key)
        how = f"seeded hold-out (seed {seed})"
    if not train:
        raise DataError(f"{path}: no training examples left ({stats['skipped']} rows skipped, "
                        f"{len(held)} held out for evaluation)")
    return SourceSplit(subsample(train, n_train, seed), subsample(held, n_eval, seed),
                       {"path": path, "eval_from": how, "seed": seed, "skipped": stats["skipped"]})
