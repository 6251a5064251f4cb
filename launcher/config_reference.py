"""The config reference as markdown, generated from `engine.schema` so the README cannot drift from the code."""
from __future__ import annotations

import dataclasses
import typing

from engine.config import type_name
from engine.schema import CallbackSpec, DialsumConfig


def _cell(text: str) -> str:
    """A table cell: a `|` inside it would end the cell, so it is escaped."""
    return text.replace("|", "\\|")


def _allowed(meta) -> str:
    if "choices" in meta:
        return ", ".join(f"`{c}`" for c in meta["choices"])
    bounds = [f">= {meta['min']}" if "min" in meta else "", f"<= {meta['max']}" if "max" in meta else ""]
    return " and ".join(b for b in bounds if b)


def _rows(cls, prefix: str) -> list[str]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        cells = [f"`{prefix}{f.name}`", type_name(hints[f.name]), f"`{default!r}`", _allowed(f.metadata),
                 f.metadata.get("help", "")]
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return rows


def config_reference_markdown() -> str:
    lines = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    hints = typing.get_type_hints(DialsumConfig)
    for section in dataclasses.fields(DialsumConfig):
        if dataclasses.is_dataclass(hints[section.name]):
            lines += _rows(hints[section.name], f"{section.name}.")
    lines += _rows(CallbackSpec, "callbacks[].")
    return "\n".join(lines) + "\n"
