#!/usr/bin/env python
"""Multi-GPU sweeps: one `torchrun ... -m lnrl.apps.train` job per grid point, run one after another.

    python scripts/sweep_torchrun.py --nproc 8 --param loss.beta=0.1,0.5 --param seed=0,1 \\
        -- method=dpo_avg trainer=fsdp2 data.prefs_path=groups.jsonl
    python scripts/sweep_torchrun.py --dry-run ...      # print the commands, run nothing

Why not `lnrl-train -m`: Hydra's multirun runs every point inside one process, while a multi-GPU
Lightning run needs one process per GPU; Lightning's own launcher and Hydra multirun do not mix.
Here torchrun starts the processes and each point is a plain single run with an explicit
`hydra.run.dir=<sweep dir>/<i>` so that every rank agrees on the run dir.

Each point's dir holds what a multirun point holds (.hydra/, metrics.json, checkpoints/) plus
torchrun.log (everything the job printed). A failing point gets failed.json (written by lnrl.apps.train, or
here from the exit status when the job died before Python could) and the sweep goes on. At the end,
<sweep dir>/sweep_summary.json lists ok/failed points; exit status 0, or 1 with --strict when any
point failed. `lnrl-report <sweep dir>` makes the table and plots. wandb runs are grouped by the sweep
name (LNRL_WANDB_GROUP). Values containing commas cannot be swept here; use Hydra multirun for those.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing

from lnrl.sweep import FAILED_FILE, write_summary  # noqa: E402
from lnrl.utils import write_json  # noqa: E402


def parse_param(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected KEY=V1,V2,..., e.g. loss.beta=0.1,0.5")
    return key, values.split(",")


def grid(params: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination, the first --param varying slowest: [["loss.beta=0.1", "seed=0"], ...]."""
    keys = [k for k, _ in params]
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(v for _, v in params))]


def torchrun_cmd(torchrun: list[str], nproc: int, overrides: list[str], run_dir: Path) -> list[str]:
    given = {o.split("=", 1)[0] for o in overrides}
    devices = [] if "trainer.devices" in given else [f"trainer.devices={nproc}"]  # Lightning must match torchrun
    return [*torchrun, "--nproc_per_node", str(nproc), "-m", "lnrl.apps.train", *overrides, *devices,
            f"hydra.run.dir={run_dir}"]


def default_torchrun() -> list[str]:
    exe = Path(sys.executable).parent / "torchrun"  # the venv's torchrun, same interpreter as this script
    return [str(exe) if exe.exists() else "torchrun", "--standalone"]


def run_point(cmd: list[str], run_dir: Path, point: list[str], env: dict) -> int:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "torchrun.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in proc.stdout:  # tee: the console shows progress, the log keeps it
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    if rc != 0:
        failed = run_dir / FAILED_FILE
        tail = (run_dir / "torchrun.log").read_text().splitlines()[-40:]
        info = json.loads(failed.read_text()) if failed.exists() else {
            "status": "failed", "error_type": "ExitStatus",
            "error": f"torchrun exited with status {rc} before lnrl.apps.train recorded an error; see torchrun.log",
            "overrides": point, "log_tail": "\n".join(tail)}
        info["returncode"] = rc
        write_json(failed, info)
    return rc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per point: torchrun --nproc_per_node")
    p.add_argument("--param", type=parse_param, action="append", default=[], metavar="KEY=V1,V2",
                   help="a swept override; repeat for a grid")
    p.add_argument("--dir", type=Path, help="sweep dir (default: outputs/train/multiruns/<time>)")
    p.add_argument("--name", help="sweep name, the wandb group (default: the sweep dir's name)")
    p.add_argument("--torchrun", default=None,
                   help="torchrun command and options (default: '<venv>/torchrun --standalone'), e.g. "
                        "'torchrun --nnodes 2 --rdzv-backend c10d --rdzv-endpoint host:29500'")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--strict", action="store_true", help="exit 1 when any point failed")
    p.add_argument("overrides", nargs="*", help="overrides for every point (after --)")
    args = p.parse_args(argv)
    if args.nproc < 1:
        p.error("--nproc must be >= 1")

    sweep_dir = (args.dir or REPO / "outputs" / "train" / "multiruns" /
                 datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")).resolve()
    torchrun = shlex.split(args.torchrun) if args.torchrun else default_torchrun()
    # The checkout on PYTHONPATH (works uninstalled); the user's cwd kept, so relative paths mean the same.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath, "LNRL_WANDB_GROUP": args.name or sweep_dir.name}
    points = grid(args.param)
    dirs = [sweep_dir / str(i) for i in range(len(points))]
    cmds = [torchrun_cmd(torchrun, args.nproc, [*args.overrides, *pt], d) for pt, d in zip(points, dirs)]
    if args.dry_run:
        for cmd in cmds:
            print(shlex.join(cmd))
        return 0

    print(f"sweep: {len(points)} points x {args.nproc} processes -> {sweep_dir}", flush=True)
    for i, (cmd, pt, d) in enumerate(zip(cmds, points, dirs)):
        print(f"[{i + 1}/{len(points)}] {' '.join(pt)}\n  $ {shlex.join(cmd)}", flush=True)
        rc = run_point(cmd, d, [*args.overrides, *pt], env)
        print(f"[{i + 1}/{len(points)}] {'ok' if rc == 0 else f'FAILED (exit {rc})'}: {d}", flush=True)

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    summary = write_summary(sweep_dir, dirs)  # logs the counts and every failed point
    return 1 if args.strict and summary["ok"] < len(points) else 0


if __name__ == "__main__":
    sys.exit(main())
