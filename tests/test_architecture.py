"""The dependency rule of docs/ARCHITECTURE.md, checked on the source: `launcher/` imports `engine/`, never the reverse.

One exception is allowed and named here: under an external launcher (torchrun, accelerate, srun) rank 0 must plan, so
`engine.distributed.plan_for_this_process` hands off to the planner with a lazy import. The launcher, for its part, uses
only the engine's public names (no `_private` imports).
"""
from __future__ import annotations

import ast

import pytest

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


def test_the_cli_imports_no_torch_or_transformers():
    """`dialsum --help` and the commands that only read files or the store stay fast: the launcher's modules and the
    engine's light ones (config, schema, plan, store, sweep trial) import neither torch nor transformers."""
    import subprocess
    import sys

    code = ("import sys; import launcher.cli, launcher.sweep.command, launcher.commands.runs, launcher.commands.models, "
            "engine.plan, engine.config, engine.store, engine.sweep_trial, engine.best, engine.world; "
            "print(sorted(m for m in ('torch', 'transformers', 'deepspeed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_same_inputs_give_the_same_plan_in_any_shell(monkeypatch):
    """The planner is a function of (config, topology, environment snapshot): the process's own environment, full of
    SLURM, torchrun, accelerate and OpenMP variables, changes nothing that the snapshot passed does not say."""
    from engine.config import LoadedConfig
    from engine.schema import DialsumConfig
    from launcher.planner import make_plan
    from launcher.topology import load_topology

    cfg = DialsumConfig()
    cfg.model.name_or_path = str(REPO_ROOT / "tests/fixtures/model_configs/bart-base")
    topology = load_topology(REPO_ROOT / "tests/fixtures/topologies/a100x8-nvlink.yaml")
    snapshot = {"OMP_NUM_THREADS": "4"}

    def plan():
        return make_plan(LoadedConfig(config=cfg, sources={}), topology, env=snapshot, run_id="r1").to_json()

    quiet = plan()
    for name, value in {"SLURM_JOB_ID": "42", "SLURM_NNODES": "4", "SLURM_PROCID": "3", "SLURM_STEP_ID": "0",
                        "RANK": "5", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "10.1.2.3",
                        "OMP_NUM_THREADS": "1", "ACCELERATE_USE_DEEPSPEED": "true",
                        "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3", "ACCELERATE_MIXED_PRECISION": "fp16"}.items():
        monkeypatch.setenv(name, value)
    assert plan() == quiet
    assert '"OMP_NUM_THREADS": "4"' in quiet  # what the snapshot said, not the shell


@pytest.mark.slow
def test_the_collectives_a_step_runs(tmp_path, tiny_model_dir):
    """What docs/ARCHITECTURE.md says a step costs in collectives, counted on 2 plain-DDP CPU ranks (logging every 2
    steps, one evaluation and checkpoint at step 6). Every step: the forward's agreement (OOM flag + tokens) and the
    step end's preemption flag, two all-reduces. At a train log: the anomaly flag (all-reduce), every rank's memory
    snapshot (all_gather_object) and the Trainer's own loss gathers (2 all_gather). DDP's gradient all-reduce runs
    inside its C++ reducer and is not counted here."""
    import json

    from launch_helpers import run_dialsum, small_config

    config = small_config(tmp_path, tiny_model_dir, parallel={"deepspeed": False, "zero_stage": None},
                          training={"max_steps": 6, "logging_steps": 2, "eval_steps": 6},
                          callbacks=[{"path": "collective_counter:CountCollectives", "kwargs": {"out": str(tmp_path)}}])
    proc = run_dialsum("launch", str(config), "--nproc", "2", env={"PYTHONPATH": str(REPO_ROOT / "tests")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    step = {"all_reduce": 2}
    log = {"all_reduce": 3, "all_gather": 2, "all_gather_object": 1}
    for rank in (0, 1):
        counts = {int(k): v for k, v in json.loads((tmp_path / f"collectives_rank{rank}.json").read_text()).items()}
        assert [counts[s] for s in (1, 2, 3, 4, 5)] == [log, log, step, log, step], counts
        last = counts[6]  # a log, the evaluation's gathers, the checkpoint's barrier, the end's memory peaks
        assert (last["all_reduce"], last["barrier"], last["all_gather_object"]) == (3, 1, 2), last
