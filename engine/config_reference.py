"""The config reference as markdown, generated from `engine.schema` so the README cannot drift from the code."""
from __future__ import annotations

import dataclasses
import typing

from engine.schema import CallbackSpec, DialsumConfig


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if type(None) in args:
        return " | ".join(_type_name(a) for a in args if a is not type(None)) + " | null"
    if typing.get_origin(hint) is not None:
        return str(hint)
    return hint.__name__


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
        rows.append(f"| `{prefix}{f.name}` | {_type_name(hints[f.name])} | `{default!r}` | {_allowed(f.metadata)} | "
                    f"{f.metadata.get('help', '')} |")
    return rows


def config_reference_markdown() -> str:
    lines = ["| key | type | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    hints = typing.get_type_hints(DialsumConfig)
    for section in dataclasses.fields(DialsumConfig):
        if dataclasses.is_dataclass(hints[section.name]):
            lines += _rows(hints[section.name], f"{section.name}.")
    lines += _rows(CallbackSpec, "callbacks[].")
    return "\n".join(lines) + "\n"
