"""`dialsum` console script: dispatches to one module per subcommand (launcher/commands/*.py)."""
from __future__ import annotations

import argparse
import importlib
import sys

from engine.errors import UserError
from engine.process_exit import exit_now

# Subcommand modules, in the order `dialsum --help` lists them.
COMMANDS = [
    "launch", "plan", "topology", "config", "init_model", "runs", "models",
    "evaluate", "predict", "export", "sweep", "report",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dialsum", description="Train and evaluate dialogue summarizers on DeepSpeed ranks.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"launcher.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"dialsum: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def run() -> None:
    """The console script: `main`, then the process ends without Python's module teardown (engine.process_exit)."""
    exit_now(main())


if __name__ == "__main__":
    run()
