"""The README is the user's contract: its config reference is exactly the schema's, and CI runs its test command."""
from __future__ import annotations

import re

import dataclasses
import typing

from markdown_it import MarkdownIt

from engine.config import type_name
from launcher.config_reference import config_reference_markdown
from engine.schema import CallbackSpec, DialsumConfig
from launch_helpers import REPO_ROOT

START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def test_readme_config_reference_matches_the_schema():
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme[readme.index(START) + len(START):readme.index(END)]
    assert block == config_reference_markdown(), "regenerate with: dialsum config reference"


def _schema_keys() -> dict[str, str]:
    """Every documented key with its type as the reference renders it."""
    hints = typing.get_type_hints(DialsumConfig)
    sections = [(hints[f.name], f"{f.name}.") for f in dataclasses.fields(DialsumConfig)
                if dataclasses.is_dataclass(hints[f.name])] + [(CallbackSpec, "callbacks[].")]
    return {f"{prefix}{name}": type_name(hint) for cls, prefix in sections
            for name, hint in typing.get_type_hints(cls).items()}


def test_readme_config_reference_is_a_valid_table_of_every_key():
    """Parsed as GitHub-flavoured Markdown, the table has five cells in every row, one row per schema key."""
    tables, in_row = [], False
    for tok in MarkdownIt("commonmark").enable("table").parse((REPO_ROOT / "README.md").read_text()):
        if tok.type == "table_open":
            tables.append([])
        elif tok.type in ("tr_open", "tr_close"):
            in_row = tok.type == "tr_open"
            if in_row:
                tables[-1].append([])
        elif tok.type == "inline" and in_row:
            tables[-1][-1].append(tok.content)
    (header, *body), = [t for t in tables if t[0] == ["key", "type", "default", "allowed", "meaning"]]
    assert all(len(r) == 5 for r in body), [r for r in body if len(r) != 5][:3]
    assert {r[0].strip("`"): r[1] for r in body} == _schema_keys()


def test_readme_two_commands_exist_and_ci_runs_the_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"^bash (scripts/\S+\.sh)", readme, flags=re.M)
    assert commands[:2] == ["scripts/demo.sh", "scripts/test.sh"]
    assert all((REPO_ROOT / c).exists() for c in commands)
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()
