"""lnrl-report: one results table and plots for every run under a sweep (or outputs) directory.

    lnrl-report outputs/train/multiruns/2025-01-01_12-00-00     # one sweep
    lnrl-report outputs                                          # every run ever made
    lnrl-report <dir> --out <report dir> --metrics val/answer_acc val/nll

Writes report.md, report.csv, runs.csv and PNG plots into the directory (or --out); what they hold
and how runs are grouped over seeds: lnrl.reporting.report and lnrl.reporting.runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lnrl.reporting import DEFAULT_METRICS, report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lnrl-report", description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="a sweep dir, an outputs dir, or a single run dir")
    p.add_argument("--out", help="where to write report.md/report.csv/runs.csv/plots (default: root)")
    p.add_argument("--metrics", nargs="+", help=f"metric columns (default: those of {', '.join(DEFAULT_METRICS)} "
                                                 "that some run has)")
    args = p.parse_args(argv)
    try:
        rep = report(args.root, args.out, args.metrics)
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    out = Path(args.out or args.root)
    print(rep["table"])
    for r in rep["failed"]:
        print(f"{r['status'].upper()}: {' '.join(r['overrides'])}: {r['error'] or 'no metrics.json'} ({r['dir']})")
    for n in rep["notes"]:
        print(n)
    print(f"report: {out / 'report.md'}, {out / 'report.csv'}, {out / 'runs.csv'}; "
          f"plots: {', '.join(p.name for p in rep['plots']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
