"""One spelling per flag across every `dialsum` subcommand: the argparse tree is walked and each concept below may
appear under one spelling only; a retired spelling stays only as a hidden alias of the one that replaced it."""
from __future__ import annotations

import argparse

import pytest

from launcher.cli import build_parser

# Spellings other tools use for one concept; dialsum must pick one of each group.
SYNONYMS = [
    {"--nnodes", "--nodes", "--num-nodes", "--num-machines"},
    {"--nproc", "--nproc-per-node", "--num-processes", "--num-procs", "--ntasks"},
    {"--node-rank", "--machine-rank"},
    {"--master-addr", "--master-address", "--main-process-ip"},
    {"--master-port", "--main-process-port"},
    {"--run-id", "--resume", "--run"},
    {"--config", "--config-file", "--cfg"},
    {"--set", "--override", "--overrides"},
    {"--out", "--output", "--output-dir", "--out-dir", "--outdir"},
    {"--topology-file", "--topology"},
    {"--dry-run", "--dryrun"},
    {"--json", "--format"},
    {"--lang", "--language"},
    {"--seed", "--random-seed"},
    {"--uri", "--tracking-uri", "--store-uri"},
    {"--output-root", "--root"},
    {"--batch-size", "--bs"},
    {"--verbose", "--debug"},
]
# Retired spellings kept as hidden aliases: spelling -> the one that replaced it (same dest).
DEPRECATED = {"--nodes": "--nnodes", "--resume": "--run-id"}


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (command path, parser) under `dialsum`, and the engine's own entry point."""
    out, todo = [], [("dialsum", build_parser())]
    while todo:
        name, parser = todo.pop()
        out.append((name, parser))
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {sub}", p) for sub, p in action.choices.items()]
    return out


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def test_every_subcommand_is_walked():
    names = {name for name, _ in _parsers()}
    assert {"dialsum launch", "dialsum plan", "dialsum sweep", "dialsum evaluate", "dialsum runs list",
            "dialsum models search", "dialsum config show"} <= names


@pytest.mark.parametrize("group", SYNONYMS, ids=lambda g: sorted(g)[0])
def test_no_concept_has_two_spellings(group):
    used = {}
    for name, parser in _parsers():
        for action in _options(parser):
            if action.help == argparse.SUPPRESS:
                continue
            for opt in action.option_strings:
                if opt in group:
                    used.setdefault(opt, []).append(name)
    assert len(used) <= 1, f"one concept, several spellings: {used}"


def test_each_flag_has_one_visible_spelling_and_hidden_ones_are_deprecated_aliases():
    for name, parser in _parsers():
        visible = {}
        for action in _options(parser):
            longs = [o for o in action.option_strings if o.startswith("--")]
            assert all("_" not in o for o in longs), f"{name}: {longs}: use hyphens"
            if action.help == argparse.SUPPRESS:
                assert longs and all(o in DEPRECATED for o in longs), f"{name}: hidden {longs} is not a known alias"
                continue
            assert len(longs) <= 1, f"{name}: {longs}: one spelling per flag"
            visible.update({o: action.dest for o in longs})
        for action in _options(parser):
            if action.help == argparse.SUPPRESS:
                (old,) = action.option_strings
                assert visible.get(DEPRECATED[old]) == action.dest, f"{name}: {old} must alias {DEPRECATED[old]}"


def test_deprecated_spellings_still_parse_to_the_new_ones():
    parser = build_parser()
    assert parser.parse_args(["plan", "--nodes", "3"]).nnodes == parser.parse_args(["plan", "--nnodes", "3"]).nnodes == 3
    assert parser.parse_args(["launch", "c.yaml", "--resume", "abc"]).run_id == "abc"
    assert "--nodes" not in parser._subparsers._group_actions[0].choices["plan"].format_help()
