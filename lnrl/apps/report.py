"""lnrl-report: one results table and plots for every run under a sweep (or outputs) directory.

    lnrl-report outputs/train/multiruns/2025-01-01_12-00-00     # one sweep
    lnrl-report outputs                                          # every run ever made
    lnrl-report <dir> --out <report dir> --metrics val/answer_acc val/nll
    lnrl-report <dir> --baseline method=vft            # + paired differences to the VFT group, p-values
    lnrl-report <dir> --baseline loss.normalize=sum    # mean vs sum at each beta

Writes report.md, report.csv, runs.csv (and diffs.csv with --baseline) and PNG plots into the
directory (or --out); what they hold, the intervals and how runs are grouped over seeds:
lnrl.reporting.report and lnrl.reporting.runs.
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
    p.add_argument("--baseline", metavar="KEY=VALUE",
                   help="paired differences (interval, p-value) of every group to the group(s) with KEY=VALUE, "
                        "e.g. method=vft or loss.normalize=sum")
    p.add_argument("--n-boot", type=int, default=10_000, help="bootstrap resamples per interval (default 10000)")
    args = p.parse_args(argv)
    try:
        rep = report(args.root, args.out, args.metrics, baseline=args.baseline, n_boot=args.n_boot)
    except (FileNotFoundError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    out = Path(args.out or args.root)
    print(rep["table"])
    if rep["diff_table"]:
        print(f"\ndifferences to {args.baseline}:\n{rep['diff_table']}")
    for r in rep["failed"]:
        print(f"{r['status'].upper()}: {' '.join(r['overrides'])}: {r['error'] or 'no metrics.json'} ({r['dir']})")
    for n in [*rep["record_notes"], *rep["notes"]]:
        print(n)
    diffs = f", {out / 'diffs.csv'}" if args.baseline else ""
    print(f"report: {out / 'report.md'}, {out / 'report.csv'}, {out / 'runs.csv'}{diffs}; "
          f"plots: {', '.join(p.name for p in rep['plots']) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
