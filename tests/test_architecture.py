"""The dependency rule of docs/ARCHITECTURE.md, checked on the source: `launcher/` imports `engine/`, never the reverse.

One exception is allowed and named here: under an external launcher (torchrun, accelerate, srun) rank 0 must plan, so
`engine.distributed.plan_for_this_process` hands off to the planner with a lazy import. The launcher, for its part, uses
only the engine's public names (no `_private` imports).
"""
from __future__ import annotations

import ast

from launch_helpers import REPO_ROOT

ALLOWED_ENGINE_TO_LAUNCHER = {("engine/distributed.py", "plan_for_this_process")}


def _imports(package: str):
    """(file, enclosing function or '', imported module, imported names) for every import in a package."""
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        rel = path.relative_to(REPO_ROOT).as_posix()

        def walk(node, func=""):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield from walk(child, func or child.name)
                elif isinstance(child, ast.Import):
                    for alias in child.names:
                        yield rel, func, alias.name, []
                elif isinstance(child, ast.ImportFrom) and child.module:
                    yield rel, func, child.module, [a.name for a in child.names]
                else:
                    yield from walk(child, func)

        yield from walk(tree)


def test_engine_never_imports_the_launcher_but_for_the_one_planning_hand_off():
    back_edges = {(f, fn) for f, fn, mod, _ in _imports("engine") if mod.split(".")[0] == "launcher"}
    assert back_edges <= ALLOWED_ENGINE_TO_LAUNCHER, back_edges - ALLOWED_ENGINE_TO_LAUNCHER


def test_the_launcher_uses_only_public_engine_names():
    private = [(f, mod, n) for f, _, mod, names in _imports("launcher") if mod.split(".")[0] == "engine"
               for n in names if n.startswith("_")]
    assert private == []
