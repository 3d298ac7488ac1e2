"""Sweep bookkeeping: a failing sweep point is recorded and the sweep goes on; a summary at the end.

Every run dir (single run or sweep point) ends in one of three states, read from its files:

    ok          metrics.json          (written by lnrl.apps.train.train)
    failed      failed.json           (written by `run_point` when train raises: error type, message,
                                       traceback, overrides)
    incomplete  neither, but .hydra/  (killed, out of time, or still running)

In multirun mode (`lnrl-train -m ...`) `run_point` swallows the exception after writing failed.json
and returns None, so Hydra's launcher moves on to the next point (the Optuna sweeper marks such a
trial FAIL: it cannot cast None to float). In single-run mode the exception propagates and the
process exits non-zero. At the end of a multirun, the `SweepSummary` Hydra callback writes
`<sweep dir>/sweep_summary.json` and logs every failed point loudly; the exit status stays 0 unless
`hydra.callbacks.sweep_summary.strict=true` (then 1 when any point failed), so one bad point does not
hide the others' results from a script that chains `lnrl-train -m` and `lnrl-report`.
The summary scans the files rather than Hydra's in-memory job returns, so it also works when the
jobs ran elsewhere (the submitit SLURM launcher) or were launched by scripts/sweep_torchrun.py.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lnrl.utils import output_dir, write_json

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
FAILED_FILE = "failed.json"
SUMMARY_FILE = "sweep_summary.json"


def is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _task_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _is_rank_zero() -> bool:
    # Every rank of a torchrun/DDP job raises the same error; one failed.json is enough.
    return all(int(os.environ.get(k, 0) or 0) == 0 for k in ("RANK", "LOCAL_RANK", "SLURM_PROCID"))


def record_failure(run_dir: str | Path, exc: BaseException, overrides: list[str] | None = None) -> dict:
    """Write `<run_dir>/failed.json` describing `exc`; return what was written."""
    # Name the root cause (ValueError from build_loss), not Hydra's InstantiationException around it.
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    info = {
        "status": "failed",
        "error_type": type(root).__name__,
        "error": str(root),
        "raised": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        "overrides": _task_overrides() if overrides is None else list(overrides),
        "host": socket.gethostname(),
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    write_json(Path(run_dir) / FAILED_FILE, info)
    return info


def _close_wandb(failed: bool) -> None:
    # Lightning's WandbLogger never calls wandb.finish(); without it the next sweep point in this
    # process would silently log into the previous point's run.
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)


def run_point(fn: Callable[[DictConfig], dict], cfg: DictConfig, run_dir: str | Path | None = None) -> dict | None:
    """Run `fn(cfg)` as one run / sweep point.

    On an exception: write failed.json in the run dir, then re-raise in single-run mode, or log it
    and return None in multirun mode. `KeyboardInterrupt` is not caught: Ctrl-C stops the sweep.
    """

    failed = False
    try:
        return fn(cfg)
    except Exception as exc:
        failed = True
        where = Path(run_dir) if run_dir is not None else output_dir()
        if _is_rank_zero():
            record_failure(where, exc)
        if not is_multirun():
            raise
        log.error("sweep point FAILED (%s: %s); recorded in %s; the sweep goes on",
                  type(exc).__name__, exc, where / FAILED_FILE, exc_info=True)
        return None
    finally:
        if is_multirun():
            _close_wandb(failed)


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run dir under `root` (itself included): a directory holding `.hydra/config.yaml`, or a
    failed.json alone (a torchrun point that died before Hydra started)."""
    root = Path(root)
    dirs = {p.parent.parent for p in root.rglob(".hydra/config.yaml")} | {p.parent for p in root.rglob(FAILED_FILE)}
    return sorted(dirs, key=_natural)


def _natural(path: Path) -> list[tuple]:
    # Sweep points are numbered dirs: 2 before 10.
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts]


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return {"error_type": type(e).__name__, "error": f"{path}: unreadable ({e})"}


def read_overrides(run_dir: str | Path) -> list[str]:
    """The task overrides a run was launched with (`.hydra/overrides.yaml`)."""
    import yaml  # not OmegaConf: an override like data.prefs_path=${paths.x}/a.jsonl must stay unresolved

    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return [str(o) for o in yaml.safe_load(path.read_text()) or []] if path.exists() else []


def point_status(run_dir: str | Path) -> dict[str, Any]:
    """{"dir", "status": ok|failed|incomplete, "overrides", and "error" for a failed point}."""
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"dir": str(run_dir), "overrides": read_overrides(run_dir)}
    if (run_dir / METRICS_FILE).exists():
        out["status"] = "ok"
    elif (run_dir / FAILED_FILE).exists():
        info = _load_json(run_dir / FAILED_FILE)
        out["status"] = "failed"
        out["error"] = f"{info.get('error_type', 'Error')}: {info.get('error', '')}"
        out["overrides"] = out["overrides"] or list(info.get("overrides", []))
    else:
        out["status"] = "incomplete"
    return out


def summarize(sweep_dir: str | Path, point_dirs: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Status of every point under `sweep_dir` (or of `point_dirs`), and the counts."""
    points = [point_status(d) for d in (find_run_dirs(sweep_dir) if point_dirs is None else point_dirs)]
    counts = {s: sum(p["status"] == s for p in points) for s in ("ok", "failed", "incomplete")}
    return {"sweep_dir": str(sweep_dir), "n_points": len(points), **counts, "points": points}


def write_summary(sweep_dir: str | Path, point_dirs: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Write `<sweep_dir>/sweep_summary.json` and log it (failed points loudly); return the summary."""
    summary = summarize(sweep_dir, point_dirs)
    path = Path(sweep_dir) / SUMMARY_FILE
    write_json(path, summary)
    log.info("sweep: %d points, %d ok, %d failed, %d incomplete; summary in %s",
             summary["n_points"], summary["ok"], summary["failed"], summary["incomplete"], path)
    for p in summary["points"]:
        if p["status"] != "ok":
            log.error("sweep point %s %s [%s]: %s", p["dir"], p["status"].upper(), " ".join(p["overrides"]),
                      p.get("error", "no metrics.json and no failed.json"))
    return summary


class SweepSummary(Callback):
    """Hydra callback (`hydra.callbacks.sweep_summary`): write sweep_summary.json when a multirun ends.

    strict: exit with status 1 when any point failed or did not finish (default: exit 0, log loudly).
    """

    def __init__(self, strict: bool = False):
        self.strict = strict

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summary = write_summary(config.hydra.sweep.dir)
        if self.strict and (summary["failed"] or summary["incomplete"]):
            sys.exit(1)
