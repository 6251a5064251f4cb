"""`dialsum config show`: print the effective config (YAML or JSON), or with --explain which layer set each key."""
from __future__ import annotations

import argparse
import json

import yaml

from engine.redact import redact
from engine.config import LoadedConfig, add_config_arguments, explain_rows, load_from_args



def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("config", help="inspect the layered configuration")
    actions = parser.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="print the effective config after all layers "
                                           "(defaults < files < DIALSUM_* env < --set)")
    add_config_arguments(show)
    show.add_argument("--explain", action="store_true", help="table of key | value | layer that set it")
    show.add_argument("--json", action="store_true", help="print JSON instead of YAML / a table")
    show.set_defaults(func=run)
    reference = actions.add_parser("reference", help="print every config key (type, default, allowed, meaning) as markdown")
    reference.set_defaults(func=run_reference)


def _print_table(loaded: LoadedConfig) -> None:
    from launcher.display import console as make_console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold")
    table.add_column("key", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("layer", overflow="fold")
    for key, value, layer in explain_rows(loaded):
        table.add_row(key, json.dumps(redact(value), ensure_ascii=False), layer, style=None if layer == "default" else "cyan")
    make_console().print(table)


def run_reference(args: argparse.Namespace) -> int:
    from launcher.config_reference import config_reference_markdown

    print(config_reference_markdown(), end="")
    return 0


def run(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    if args.explain and args.json:
        rows = [{"key": k, "value": redact(v), "layer": layer} for k, v, layer in explain_rows(loaded)]
        print(json.dumps(rows, indent=2))
    elif args.explain:
        _print_table(loaded)
    elif args.json:
        print(json.dumps(redact(loaded.to_dict()), indent=2))
    else:
        print(yaml.safe_dump(redact(loaded.to_dict()), sort_keys=False, allow_unicode=True), end="")
    return 0
