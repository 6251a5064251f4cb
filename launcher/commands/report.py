"""`dialsum report RUN_ID [--out DIR]`: PNG plots of a tracked run (loss, ROUGE, learning rate, grad norm, memory,
throughput, anomalies marked) and a `report.md` with its key numbers."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.plan import run_dir
from launcher.commands.runs import open_from_args, store_arguments
from launcher.display import print_json


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("report", parents=[store_arguments()],
                            help="plots and a markdown summary of one tracked run")
    parser.add_argument("run_id", metavar="RUN_ID")
    parser.add_argument("--out", type=Path, help="folder for the files (default: <output-root>/runs/RUN_ID/report)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launcher.report import write_run_report
    from engine.store import Tracker

    with open_from_args(args) as store:
        tracked = Tracker(store).get_run(args.run_id)
    report = write_run_report(tracked, args.out or run_dir(args.output_root, args.run_id) / "report")
    if args.json:
        print_json({"out_dir": str(report.out_dir), "files": [str(f) for f in report.files], "numbers": report.numbers})
    else:
        print(f"run {args.run_id}: wrote {len(report.files)} files to {report.out_dir}")
        for path in report.files:
            print(f"  {path}")
    return 0
