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

Before a grid sweep launches anything, `SweepSummary.on_multirun_start` composes its points and runs the
app's preflight check on them (`PREFLIGHT`; lnrl-train's builds the datamodule and the method without
loading a model or reading data). When every point fails it with the same error (a setting the grid
does not vary, e.g. `sweep=dpo_beta_norm` without `data.prefs_path`: 18 identical failures), the sweep
stops at once with that one error, written to `<sweep dir>/failed.json`. It stops checking at the
first point that passes or fails differently: then each point runs and is recorded on its own.
`+hydra.callbacks.sweep_summary.preflight=false` turns it off. Optuna sweeps draw their points as they
go and are not checked.
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
# Per app (its config name): the check that fails a point on its configuration before training.
PREFLIGHT = {"train": "lnrl.apps.train.preflight"}
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


class SweepConfigError(ValueError):
    """Every point of a sweep fails before training with the same configuration error."""


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


def root_cause(exc: BaseException) -> BaseException:
    """The innermost cause: the ValueError from build_loss, not Hydra's InstantiationException around it."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def record_failure(run_dir: str | Path, exc: BaseException, overrides: list[str] | None = None) -> dict:
    """Write `<run_dir>/failed.json` describing `exc`; return what was written."""
    root = root_cause(exc)
    notes = "".join(f"\n{n}" for n in getattr(exc, "__notes__", []))  # e.g. where the state was saved
    info = {
        "status": "failed",
        "error_type": type(root).__name__,
        "error": str(root) + notes,
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


def sweep_points(config: DictConfig) -> list[list[str]] | None:
    """Each point's overrides, in the order Hydra's basic sweeper launches them; None for another
    sweeper (Optuna draws its points as it goes)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != BASIC_SWEEPER:
        return None
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def preflight_sweep(config: DictConfig, check: Callable[[DictConfig], Any]) -> None:
    """Raise SweepConfigError when every point of the sweep fails `check` with the same error.

    Points are composed and checked in launch order until one passes or fails differently from the
    ones before it, so a healthy sweep costs one check."""
    from hydra import compose

    points = sweep_points(config)
    if not points:
        return
    errors: set[str] = set()
    for overrides in points:
        try:
            check(compose(config_name=config.hydra.job.config_name, overrides=list(overrides)))
        except Exception as e:  # noqa: BLE001 - any error a point would die of before training
            root = root_cause(e)
            errors.add(f"{type(root).__name__}: {root}")
        else:
            return
        if len(errors) > 1:
            return
    error = errors.pop()
    info = {"status": "failed", "error_type": "SweepConfigError", "error": error, "points": len(points),
            "overrides": list(config.hydra.overrides.task)}
    write_json(Path(config.hydra.sweep.dir) / FAILED_FILE, info)
    raise SweepConfigError(f"all {len(points)} points of this sweep fail before training with the same error, so "
                           f"none was launched:\n  {error}\n(recorded in {Path(config.hydra.sweep.dir) / FAILED_FILE})")


class SweepSummary(Callback):
    """Hydra callback (`hydra.callbacks.sweep_summary`): check a sweep's points before launching them
    (`preflight_sweep`), write sweep_summary.json when the multirun ends.

    strict: exit with status 1 when any point failed or did not finish (default: exit 0, log loudly).
    preflight: run the app's check (PREFLIGHT) on the points first; false to skip it.
    """

    def __init__(self, strict: bool = False, preflight: bool = True):
        self.strict, self.preflight = strict, preflight

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        target = PREFLIGHT.get(config.hydra.job.config_name)
        if self.preflight and target:
            from hydra.utils import get_method

            try:
                preflight_sweep(config, get_method(target))
            except SweepConfigError as e:
                # Hydra turns a callback's exception into a warning and goes on: stop here instead.
                log.error("sweep not launched: %s", e)
                sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        summary = write_summary(config.hydra.sweep.dir)
        if self.strict and (summary["failed"] or summary["incomplete"]):
            sys.exit(1)
