"""How the CLI shows values: one cell format for console tables and Markdown reports, JSON without NaN tokens."""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from engine.store.db import finite_json


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def print_json(obj: Any) -> None:
    """JSON-safe: NaN/Infinity become null."""
    print(json.dumps(finite_json(obj), indent=2, default=str))


LOG_WIDTH = 160  # a log file or pipe has no width; rich's default of 80 folds every reason in the plan table


def console():
    """A rich Console as wide as the terminal, or LOG_WIDTH when writing to a file or pipe (COLUMNS still wins)."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH)


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", min_width=len(title))
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    console().print(table)
