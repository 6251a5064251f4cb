"""The README is the user's contract: its config reference is exactly the schema's, and CI runs its test command."""
from __future__ import annotations

import re

from engine.config_reference import config_reference_markdown
from launch_helpers import REPO_ROOT

START, END = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"


def test_readme_config_reference_matches_the_schema():
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme[readme.index(START) + len(START):readme.index(END)]
    assert block == config_reference_markdown(), "regenerate with: dialsum config reference"


def test_readme_two_commands_exist_and_ci_runs_the_test_command():
    readme = (REPO_ROOT / "README.md").read_text()
    commands = re.findall(r"^bash (scripts/\S+\.sh)", readme, flags=re.M)
    assert commands[:2] == ["scripts/demo.sh", "scripts/test.sh"]
    assert all((REPO_ROOT / c).exists() for c in commands)
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()
