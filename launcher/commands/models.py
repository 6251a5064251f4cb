"""`dialsum models list|show|compare|search|promote|delete`: the model registry from the command line.

Model references: `NAME` (latest version), `NAME:3` (version 3), `NAME@best` / `NAME@production` (an alias).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.errors import UserError
from engine.store import Registry, Tracker, parse_model_ref
from launcher.commands.runs import open_from_args, plot_arguments, print_plots, store_arguments
from launcher.display import print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    common = store_arguments()
    parser = sub.add_parser("models", help="list, inspect, promote and delete registered model versions")
    models_sub = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    models_sub.add_parser("list", parents=[common], help="every model with its version count and aliases")
    p = models_sub.add_parser("show", parents=[common], help="one version: NAME, NAME:VERSION or NAME@ALIAS")
    p.add_argument("ref", metavar="NAME[:VERSION|@ALIAS]")
    p = models_sub.add_parser("compare", parents=[common], help="two versions of one model side by side")
    p.add_argument("a", metavar="NAME:A")
    p.add_argument("b", metavar="NAME:B")
    plot_arguments(p, "<output-root>/reports/NAME-vA-vB")
    p = models_sub.add_parser("search", parents=[common], help="versions across models matching every filter")
    p.add_argument("--metric", help="only versions with this metric (sorted by it, highest first)")
    p.add_argument("--min", type=float, dest="min_value", help="with --metric: at least this value")
    p.add_argument("--tag")
    p.add_argument("--architecture", help="substring of the architecture, e.g. Bart")
    p = models_sub.add_parser("promote", parents=[common], help="point an alias (e.g. production) at a version")
    p.add_argument("ref", metavar="NAME:VERSION")
    p.add_argument("alias")
    p.add_argument("--reason", default="", help="recorded in the alias audit trail")
    p = models_sub.add_parser("delete", parents=[common], help="delete a version and its checkpoint directory")
    p.add_argument("ref", metavar="NAME:VERSION")
    parser.set_defaults(func=run)


def _version_ref(text: str) -> tuple[str, int]:
    name, ref = parse_model_ref(text)
    if not isinstance(ref, int):
        raise UserError(f"model reference {text!r}: this command needs an explicit NAME:VERSION")
    return name, ref


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as store:
        _run(Registry(store), args)
    return 0


def _run(registry: Registry, args: argparse.Namespace) -> None:
    action = args.models_command
    if action == "list":
        rows = registry.list_models()
        if args.json:
            print_json(rows)
        else:
            print_table(f"models ({len(rows)})", ["name", "versions", "latest", "aliases", "metric", "best"],
                        [[m["name"], m["versions"], m["latest_version"],
                          " ".join(f"{a}={v}" for a, v in m["aliases"].items()), m["metric"], m["best_value"]]
                         for m in rows])
    elif action == "show":
        name, ref = parse_model_ref(args.ref)
        version = registry.get(name, ref)
        if args.json:
            print_json({**version, "alias_history": registry.audit(name)})
        else:
            _show(version, registry.audit(name))
    elif action == "compare":
        (name_a, ref_a), (name_b, ref_b) = parse_model_ref(args.a), parse_model_ref(args.b)
        if name_a != name_b:
            raise UserError(f"models compare: {args.a!r} and {args.b!r} name different models")
        result = registry.compare(name_a, ref_a, ref_b)
        if args.plot:
            result["plots"] = _plot_versions(registry, [result["a"], result["b"]], args)
        if args.json:
            print_json(result)
        else:
            a, b = f"v{result['a']['version']}", f"v{result['b']['version']}"
            print_table(f"{name_a}: metrics", ["metric", a, b, "delta"],
                        [[k, m["a"], m["b"], m["delta"]] for k, m in result["metrics"].items()])
            print_table(f"{name_a}: metadata that differs", ["key", a, b],
                        [[k, m["a"], m["b"]] for k, m in result["metadata"].items()])
            if args.plot:
                print_plots(result["plots"])
    elif action == "search":
        rows = registry.search(metric=args.metric, min_value=args.min_value, tag=args.tag,
                               architecture=args.architecture)
        if args.json:
            print_json(rows)
        else:
            print_table(f"versions ({len(rows)})", ["model", "run", "aliases", "architecture", args.metric or "metric",
                                                    "tags"],
                        [[v["ref"], v["run_id"], " ".join(v["aliases"]), v["metadata"].get("architecture"),
                          v["metrics"].get(args.metric) if args.metric else v["metric_value"], " ".join(v["tags"])]
                         for v in rows])
    elif action == "promote":
        name, version = _version_ref(args.ref)
        registry.promote(name, version, args.alias, reason=args.reason)
        print(f"{name}@{args.alias} -> version {version}")
    else:
        name, version = _version_ref(args.ref)
        registry.delete(name, version)
        print(f"deleted {name}:{version}")


def _plot_versions(registry: Registry, versions: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Metric bars of the versions, plus the training curves of their runs where the tracker has them."""
    from launcher.report import compare_models_figures, save_figures

    tracker = Tracker(registry.store)
    runs = [tracker.get_run(v["run_id"]) if tracker.exists(v["run_id"]) else None for v in versions]
    name = versions[0]["name"].replace("/", "_")
    out = args.out or Path(args.output_root) / "reports" / "-".join([name, *(f"v{v['version']}" for v in versions)])
    return [str(p) for p in save_figures(compare_models_figures(versions, runs), out)]


def _show(v: dict[str, Any], audit: list[dict[str, Any]]) -> None:
    fields = ["ref", "aliases", "run_id", "checkpoint_dir", "metric", "metric_value", "greater_is_better", "tags",
              "created_at"]
    print_table(f"model {v['ref']}", ["field", "value"], [[f, v[f]] for f in fields])
    print_table("metrics", ["metric", "value"], sorted(v["metrics"].items()))
    print_table("metadata", ["key", "value"], sorted(v["metadata"].items()))
    print_table("alias history", ["alias", "from", "to", "reason", "at"],
                [[a["alias"], a["from_version"], a["to_version"], a["reason"], a["at"]] for a in audit])
