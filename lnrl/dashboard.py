"""wandb dashboards: run names that say what a sweep point is, and tables of sample generations.

Naming (applied by lnrl-train, lnrl.apps.train, to every WandbLogger whose field is left null in the config):

    group   the sweep: "<sweep preset or task name>/<sweep dir name>" in multirun mode, or $LNRL_WANDB_GROUP
            (scripts/sweep_torchrun.py sets it, since each of its points is a single run); null otherwise
    name    the point's overrides, e.g. "loss.beta=0.5,loss.normalize=mean,seed=1" (hydra.job.override_dirname
            without the sweep=... choice, which is already the group); null (wandb picks one) without overrides
    tags    the logger's tags (cfg.tags) + method=<preset>, loss=<name>, data=<source>, kind=<sft|pairs|groups>

Sample generations: `log_generation_table` logs one wandb.Table per evaluation ("samples/before",
"samples/after") with question, reference answer, completion, extracted answer, correctness, token
count and, when lnrl.verify has a MathVerifier, its wrongness/absurdity and full error profile.

Offline runs (the default) can be read back without syncing: `read_offline_run(<run dir>/wandb/offline-run-*)`
parses the run's transaction log (run-*.wandb) into its name, group, tags, config, summary and history.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from lnrl.verify import MathVerifier

log = logging.getLogger(__name__)

GROUP_ENV = "LNRL_WANDB_GROUP"
MAX_TABLE_ROWS = 200  # a table per evaluation; bounded so a 1k-question eval does not bloat the run


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run_names(cfg: DictConfig) -> dict[str, Any]:
    """{"name", "group", "tags"} for the current run, derived from Hydra's runtime config and `cfg`."""
    from hydra.types import RunMode

    hc = _hydra()
    choices = dict(hc.runtime.choices) if hc is not None else {}
    group = os.environ.get(GROUP_ENV) or None
    if hc is not None and hc.mode == RunMode.MULTIRUN and group is None:
        sweep = choices.get("sweep") or cfg.get("task_name") or hc.job.name
        group = f"{sweep}/{Path(hc.sweep.dir).name}"
    overrides = [o for o in (hc.overrides.task if hc is not None else [])
                 if not o.split("=", 1)[0].lstrip("+~").startswith(("sweep", "hydra."))]
    name = ",".join(sorted(overrides)) or None

    tags = [str(t) for t in (cfg.get("tags") or [])]
    method = choices.get("method") or str(OmegaConf.select(cfg, "method._target_", default="") or "").rsplit(".", 1)[-1]
    for key, value in (("method", method), ("loss", OmegaConf.select(cfg, "loss.name")),
                       ("data", OmegaConf.select(cfg, "data.source.name")), ("kind", data_kind(cfg))):
        if value:
            tags.append(f"{key}={value}")
    return {"name": name, "group": group, "tags": list(dict.fromkeys(tags))}  # dedupe, keep order


def data_kind(cfg: DictConfig) -> str | None:
    """The batches a run trains on: `data.kind` where a config sets it, else the method class's `data_kind`."""
    from hydra.utils import get_class

    kind = OmegaConf.select(cfg, "data.kind")
    target = OmegaConf.select(cfg, "method._target_")
    if kind or not target:
        return kind
    try:
        return getattr(get_class(str(target)), "data_kind", None)
    except (ImportError, ValueError):  # a config naming a class that is not importable here: no tag
        return None


def name_wandb_run(logger_cfg: DictConfig | None, cfg: DictConfig) -> DictConfig | None:
    """A copy of the `logger:` node whose WandbLogger entries get `run_names` where left null/empty."""
    if not logger_cfg or not any(_is_wandb(c) for c in logger_cfg.values()):
        return logger_cfg
    names = run_names(cfg)
    out = copy.deepcopy(logger_cfg)
    with open_dict(out):
        for node in out.values():
            if not _is_wandb(node):
                continue
            for key in ("name", "group"):
                if names[key] and not node.get(key):
                    node[key] = names[key]
            node["tags"] = list(dict.fromkeys([*(node.get("tags") or []), *names["tags"]]))
    return out


def _is_wandb(node: Any) -> bool:
    return isinstance(node, DictConfig) and str(node.get("_target_", "")).endswith("WandbLogger")


def generation_table(records: Sequence[dict], max_rows: int | None = MAX_TABLE_ROWS,
                     verifier: Any = "auto") -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of a sample-generation table from GenerationEval records.

    Records from lnrl.evaluation already carry their verifier profile; others are profiled here
    (`verifier=None` leaves the profile columns out).
    """
    verifier = MathVerifier() if verifier == "auto" else verifier
    columns = ["id", "question", "answer", "completion", "pred", "correct", "n_tokens"]
    if verifier is not None:
        columns += ["wrongness", "absurdity", "profile"]
    rows = []
    for r in records[:max_rows]:
        row = [r.get(c) for c in columns[:7]]
        if verifier is not None:
            p = r.get("profile") or verifier.profile(
                r.get("question", ""), r.get("completion", ""), r.get("answer", ""),
                truncated=bool(r.get("truncated", False))).to_dict()
            row += [p.get("wrongness"), p.get("absurdity"), json.dumps(p, sort_keys=True)]
        rows.append(row)
    return columns, rows


def log_generation_table(loggers: Sequence[Any], records: Sequence[dict], tag: str, step: int) -> None:
    """Log `samples/<tag>` (a wandb.Table of sample generations) to every WandbLogger in `loggers`."""
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    targets = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if not targets or not records or rank_zero_only.rank != 0:  # loggers write on rank 0 only
        return
    columns, rows = generation_table(records)
    for lg in targets:
        lg.log_table(key=f"samples/{tag}", columns=columns, data=rows, step=step)


# -- reading an offline run back ----------------------------------------------------------------
# run-<id>.wandb is a LevelDB-style log: a 7-byte file header (":W&B", magic, version), then 32 KiB
# blocks of chunks, each with a 7-byte header (crc32 u32, length u16, type u8); a record too long for
# a block is split FIRST/MIDDLE/LAST. Each record is a wandb.proto Record message.
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list:
    """Every `wandb_internal_pb2.Record` of a run-*.wandb file, in order."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a wandb transaction log (header {data[:4]!r})")
    pos, parts, records = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        space = _BLOCK - pos % _BLOCK
        if space < _HEADER:  # block trailer padding
            pos += space
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0:  # zero padding to the end of the block
            pos += space - _HEADER - length
            continue
        parts = chunk if kind in (_FULL, _FIRST) else parts + chunk
        if kind in (_FULL, _LAST):
            rec = pb.Record()
            rec.ParseFromString(parts)
            records.append(rec)
    return records


def _items(items) -> dict[str, Any]:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def read_offline_run(run_path: str | Path) -> dict[str, Any]:
    """{"name", "group", "tags", "config", "summary", "history"} of an offline run directory (or its .wandb file).

    config: the merged config updates; summary: the last value of every logged key; history: one dict
    per wandb.log call.
    """
    run_path = Path(run_path)
    files = [run_path] if run_path.suffix == ".wandb" else sorted(run_path.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_path}")
    out: dict[str, Any] = {"name": None, "group": None, "tags": [], "config": {}, "summary": {}, "history": []}
    for rec in read_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            out.update(name=rec.run.display_name or None, group=rec.run.run_group or None, tags=list(rec.run.tags))
            out["config"].update(_items(rec.run.config.update))
        elif kind == "config":
            out["config"].update(_items(rec.config.update))
        elif kind == "summary":
            out["summary"].update(_items(rec.summary.update))
        elif kind == "history":
            out["history"].append(_items(rec.history.item))
    return out
