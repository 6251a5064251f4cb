"""Faults on real DeepSpeed CPU ranks: a rank dies, the launcher is preempted, a checkpoint is partial, the rank count
changes, torch elastic restarts. Each asserts the tracker's record, the processes left, checkpoints and the steps."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import psutil
import pytest

from engine.checkpointing import MARKER, checkpoints, latest_checkpoint
from engine.signals import PREEMPTED_EXIT_CODE
from engine.store import Tracker, open_store
from launch_helpers import REPO_ROOT, run_dialsum, small_config

pytestmark = pytest.mark.slow


def fault(rank: int, step: int, action: str, **kwargs) -> list[dict]:
    return [{"path": "tests.fault_callbacks:Fault", "kwargs": {"rank": rank, "step": step, "action": action, **kwargs}}]


def config_with(tmp_path, model_dir, callbacks=(), **sections):
    path = small_config(tmp_path, model_dir, **sections)
    text = path.read_text()
    if callbacks:
        import yaml

        cfg = yaml.safe_load(text)
        cfg["callbacks"] = list(callbacks)
        path.write_text(yaml.safe_dump(cfg))
    return path


def only_run(tmp_path) -> dict:
    tracker = Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}"))
    runs = tracker.list_runs()
    assert len(runs) == 1, runs
    return tracker.get_run(runs[0]["run_id"])


def engine_processes(tmp_path) -> list[psutil.Process]:
    """Processes still running a rank of a run under this test's output folder."""
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "-m engine" in cmd and str(tmp_path) in cmd:
            left.append(proc)
    return left


def final_loss(run: dict) -> float:
    return [h["train/loss"] for h in run["history"] if "train/loss" in h][-1]


@pytest.mark.parametrize("action,code", [("kill", 137), ("raise", 1)])
def test_one_rank_dies_every_rank_ends_and_run_is_failed(tmp_path, tiny_model_dir, action, code):
    config = config_with(tmp_path, tiny_model_dir, callbacks=fault(1, 3, action))
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "launch", str(config), "--nproc", "2"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == code, out[-3000:]
    run = only_run(tmp_path)
    assert run["status"] == "failed" and run["failing_rank"] == 1 and run["exit_code"] == code, run["error"]
    # The whole group ended within 10 s of the death: the last heartbeat/end is close to the last logged step.
    assert engine_processes(tmp_path) == []
    steps = [h["step"] for h in run["history"] if "train/loss" in h]
    assert max(steps) <= 4, steps
