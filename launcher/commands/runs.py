"""`dialsum runs list|show|compare`: read the tracking store (also hosts the store/table helpers `models` uses)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.store import Store, Tracker, open_store, resolve_store_uri
from launcher.display import print_json, print_table
from engine.store.tracker import flatten

HISTORY_ROWS = 20  # steps the `runs show` table prints (--json prints all)


def store_arguments() -> argparse.ArgumentParser:
    """--uri / --output-root / --json, shared by every `runs` and `models` subcommand."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--uri", default="", help="SQLAlchemy URL of the store (default: $DIALSUM_TRACKING_URI, "
                                                  "else sqlite:///<output-root>/dialsum.db)")
    common.add_argument("--output-root", default="outputs", help="experiment.output_root holding dialsum.db")
    common.add_argument("--json", action="store_true", help="print plain JSON instead of tables")
    return common


def open_from_args(args: argparse.Namespace) -> Store:
    return open_store(resolve_store_uri(args.uri, args.output_root), create=False)


def register(sub: argparse._SubParsersAction) -> None:
    common = store_arguments()
    parser = sub.add_parser("runs", help="list, show and compare tracked runs")
    runs_sub = parser.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    p = runs_sub.add_parser("list", parents=[common], help="runs, newest first or sorted by a metric")
    p.add_argument("--status", help="created|running|crashed|completed|failed|killed|preempted")
    p.add_argument("--sort", metavar="METRIC", help="sort by this metric (summary, else latest value)")
    p.add_argument("--ascending", action="store_true", help="with --sort: smallest first")
    p.add_argument("--group", help="only runs of this group")
    p = runs_sub.add_parser("show", parents=[common], help="everything about one run")
    p.add_argument("run_id")
    p = runs_sub.add_parser("compare", parents=[common], help="params that differ and metrics side by side")
    p.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    plot_arguments(p, "<output-root>/reports/runs-A-B...")
    parser.set_defaults(func=run)


def plot_arguments(parser: argparse.ArgumentParser, default_out: str) -> None:
    """--plot / --out of the `compare` actions."""
    parser.add_argument("--plot", action="store_true", help="also write side-by-side PNG plots (curves, metric bars)")
    parser.add_argument("--out", type=Path, help=f"with --plot: folder for the PNGs (default: {default_out})")


def print_plots(paths: list[str]) -> None:
    print(f"plots: {', '.join(paths) if paths else 'none (no curves or ROUGE metrics to draw)'}")


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as store:
        _run(Tracker(store), args)
    return 0


LIST_COLUMNS = ("best/rouge_combined_f1", "best/rouge1_f1", "best/rouge2_f1", "best/rougeL_f1", "best/loss")


def list_columns(summary_keys: set[str], limit: int = 4) -> list[str]:
    """The metrics `runs list` shows: best ROUGE first (what users compare), then other summary keys by name."""
    preferred = [k for k in LIST_COLUMNS if k in summary_keys]
    return (preferred + sorted(summary_keys - set(preferred)))[:limit]


def _run(tracker: Tracker, args: argparse.Namespace) -> None:
    if args.runs_command == "list":
        rows = tracker.list_runs(status=args.status, sort_by_metric=args.sort, descending=not args.ascending,
                                 group=args.group)
        if args.json:
            print_json(rows)
            return
        keys = [args.sort] if args.sort else list_columns({k for r in rows for k in r["summary"]})
        print_table(f"runs ({len(rows)})", ["run", "name", "group", "status", "created", "duration_s", *keys],
                    [[r["run_id"], r["name"], r["group"], r["status"], r["created_at"], r["duration_s"],
                      *(r["metrics"].get(k) for k in keys)] for r in rows])
    elif args.runs_command == "show":
        _show(tracker.get_run(args.run_id), args.json)
    else:
        result = tracker.compare(args.run_ids)
        if args.plot:
            from launcher.report import compare_runs_figures, save_figures

            out = args.out or Path(args.output_root) / "reports" / "-".join(["runs", *args.run_ids])
            figures = compare_runs_figures([tracker.get_run(r) for r in args.run_ids])
            result["plots"] = [str(p) for p in save_figures(figures, out)]
        if args.json:
            print_json(result)
            return
        print_table("params that differ", ["param", *result["run_ids"]],
                    [[k, *v] for k, v in result["params"].items()])
        print_table("metrics", ["metric", *result["run_ids"]],
                    [["status", *result["status"]], *([k, *v] for k, v in result["metrics"].items())])
        if args.plot:
            print_plots(result["plots"])


def _show(r: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(r)
        return
    fields = ["run_id", "name", "group", "status", "tags", "notes", "created_at", "started_at", "ended_at",
              "heartbeat_at", "duration_s", "exit_code", "failing_rank", "error", "wandb_id"]
    print_table(f"run {r['run_id']}", ["field", "value"], [[f, r[f]] for f in fields if r[f] not in ("", [], None)])
    print_table("metrics (summary wins over latest)", ["metric", "value"], sorted(r["metrics"].items()))
    keys = sorted({k for h in r["history"] for k in h if k != "step"})
    print_table(f"history ({len(r['history'])} steps, last {HISTORY_ROWS} shown)", ["step", *keys],
                [[h["step"], *(h.get(k) for k in keys)] for h in r["history"][-HISTORY_ROWS:]])
    if r["events"]:
        print_table("events", ["step", "kind", "data", "at"], [[e["step"], e["kind"], e["data"], e["at"]]
                                                              for e in r["events"]])
    print_table("config", ["key", "value"], sorted(flatten(r["config"]).items()))
