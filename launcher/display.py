"""How the CLI shows values: one cell format for console tables and Markdown reports, JSON without NaN tokens."""
from __future__ import annotations

import json
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


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left", min_width=len(title))
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    Console(width=200).print(table)
