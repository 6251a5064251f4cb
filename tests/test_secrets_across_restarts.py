"""Secrets reach the ranks on every restart path: the store URI's password (a PostgreSQL role that must log in with
it, so a URI that arrived redacted cannot connect) and a callback's secret-named key and URL password (SecretProbe
fails the rank unless they arrive unredacted). An OOM restart once ran its ranks with `postgresql://u:***@db`: the
launcher saved the new plan but handed the ranks the previous plan's config. SLURM's requeue is covered by
tests/test_slurm.py with SecretProbe."""
from __future__ import annotations

import os

import pytest

from engine.plan import PREEMPTED_EXIT_CODE
from engine.store import Tracker, open_store
from launch_helpers import PROBE_API_KEY, REPO_ROOT, run_dialsum, secret_probe, small_config
from pg import postgres_password_url, postgres_server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

def launch(*args: str):
    return run_dialsum("launch", *args, env={"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])})


def completed_run(url: str, run_id: str) -> dict:
    run = Tracker(open_store(url)).get_run(run_id)
    assert run["status"] == "completed", run["error"]
    assert max(h["step"] for h in run["history"] if "train/loss" in h) == 16
    return run


def no_secret_in_files(tmp_path, url: str) -> None:
    password = url.split(":")[2].split("@")[0]
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert password.encode() not in data and PROBE_API_KEY.encode() not in data, path


def test_oom_restart(tmp_path, tiny_model_dir, postgres_password_url):  # noqa: F811
    oom = {"path": "oom_injection:InjectOOM", "kwargs": {"step": 9, "rank": 1, "module": "model.decoder.layers.1",
                                                         "micro_batch_size": 4}}
    config = small_config(tmp_path, tiny_model_dir, parallel={"zero_stage": 3},
                          tracking={"uri": postgres_password_url}, callbacks=[oom, secret_probe()])
    proc = launch(str(config), "--nproc", "2", "--run-id", "oomsecret")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = completed_run(postgres_password_url, "oomsecret")
    assert [e["kind"] for e in run["events"]].count("oom_restart") == 1
    no_secret_in_files(tmp_path, postgres_password_url)


def test_elastic_restart(tmp_path, tiny_model_dir, postgres_password_url):  # noqa: F811
    kill = {"path": "fault_callbacks:Fault", "kwargs": {"rank": 1, "step": 10, "action": "kill",
                                                        "first_attempt_only": True}}
    config = small_config(tmp_path, tiny_model_dir, tracking={"uri": postgres_password_url},
                          callbacks=[kill, secret_probe()])
    proc = launch(str(config), "--nproc", "2", "--max-restarts", "1", "--run-id", "elasticsecret")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = completed_run(postgres_password_url, "elasticsecret")
    assert [e["kind"] for e in run["events"]].count("resumed") == 1


def test_preempt_and_resume(tmp_path, tiny_model_dir, postgres_password_url):  # noqa: F811
    preempt = {"path": "fault_callbacks:Fault", "kwargs": {"rank": 0, "step": 5, "action": "signal_parent",
                                                           "signal": "SIGUSR1"}}
    config = small_config(tmp_path, tiny_model_dir, tracking={"uri": postgres_password_url},
                          callbacks=[preempt, secret_probe()])
    proc = launch(str(config), "--nproc", "2", "--run-id", "preemptsecret")
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stdout[-3000:] + proc.stderr[-3000:]
    resumed = small_config(tmp_path, tiny_model_dir, tracking={"uri": postgres_password_url},
                           callbacks=[secret_probe()])
    proc = launch(str(resumed), "--nproc", "2", "--run-id", "preemptsecret")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = completed_run(postgres_password_url, "preemptsecret")
    assert {"preempted", "resumed"} <= {e["kind"] for e in run["events"]}
    no_secret_in_files(tmp_path, postgres_password_url)
