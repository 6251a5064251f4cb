"""The shipped SLURM batch scripts, submitted to a real one-machine cluster (tests/slurm_cluster.py)."""
from __future__ import annotations

import os
import sys
import time

import pytest

from engine.store import Tracker, open_store
from launch_helpers import REPO_ROOT, secret_probe, small_config
from slurm_cluster import slurm_cluster  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.slurm]


def job_env() -> dict[str, str]:
    return {"DIALSUM": f"{sys.executable} -m launcher.cli", "DIALSUM_PYTHON": sys.executable,
            "DIALSUM_SLURM_DIR": str(REPO_ROOT / "scripts" / "slurm")}


def test_one_node_job_preempted_requeues_and_completes_its_run(slurm_cluster, tmp_path, tiny_model_dir):  # noqa: F811
    """sbatch one_node.sbatch; USR1 to the batch shell (what --signal=B:USR1@90 does) once training is under way:
    the ranks checkpoint, the script requeues the job, the requeued job resumes run slurm-<job id> to completion. A
    callback's secrets reach the ranks of both attempts (SecretProbe fails a rank that gets them redacted)."""
    config = small_config(tmp_path, tiny_model_dir, callbacks=[secret_probe()])
    log = tmp_path / "job.out"
    env = {**job_env(), "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    job = slurm_cluster.sbatch("--output", str(log), str(REPO_ROOT / "scripts/slurm/one_node.sbatch"), str(config),
                               "--nproc", "2", env=env, cwd=REPO_ROOT)
    run_id = f"slurm-{job}"
    tracker = Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}"))
    deadline = time.monotonic() + 240
    while True:  # wait for step 3 to be logged, then signal the batch shell only
        if (tmp_path / "out" / "dialsum.db").exists() and tracker.exists(run_id) and any(
                h["step"] >= 3 for h in tracker.get_run(run_id)["history"]):
            break
        assert time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else "no job output"
        time.sleep(0.5)
    slurm_cluster.run("scancel", "--batch", "--signal=USR1", job)
    state = slurm_cluster.wait(job, timeout=400)
    output = log.read_text()
    assert state == "COMPLETED", output[-4000:]
    assert "requeueing job" in output
    runs = tracker.list_runs()
    assert [r["run_id"] for r in runs] == [run_id], "one run across the requeue"
    run = tracker.get_run(run_id)
    assert run["status"] == "completed"
    kinds = [e["kind"] for e in run["events"]]
    assert "preempted" in kinds and "resumed" in kinds
    assert max(h["step"] for h in run["history"] if "train/loss" in h) == 16


@pytest.mark.parametrize("script, args", [
    # one `dialsum launch` task per node, meeting at the first node's address on the job's port
    ("multi_node.sbatch", ["--nproc", "1"]),
    # srun starts `python -m engine` as one task per rank (no torchrun): the engine maps SLURM_PROCID/SLURM_NTASKS to
    # its rank, rank 0 plans and broadcasts the plan
    ("srun_ranks.sbatch", []),
])
def test_two_node_job_is_one_run_of_world_size_two(slurm_cluster, tmp_path, tiny_model_dir, script, args):  # noqa: F811
    """sbatch --nodes 2 --ntasks-per-node 1: one rank per node makes a world of 2, recorded once as run slurm-<job id>
    by rank 0 alone, with rank 1's system metrics gathered into it."""
    config = small_config(tmp_path, tiny_model_dir, training={"eval_strategy": "no", "max_steps": 6})
    log = tmp_path / "job.out"
    job = slurm_cluster.sbatch("--output", str(log), "--nodes", "2", "--ntasks-per-node", "1",
                               str(REPO_ROOT / "scripts/slurm" / script), str(config), *args, env=job_env(), cwd=REPO_ROOT)
    state = slurm_cluster.wait(job, timeout=400)
    output = log.read_text()
    assert state == "COMPLETED", output[-4000:]
    tracker = Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}"))
    assert [r["run_id"] for r in tracker.list_runs()] == [f"slurm-{job}"], "one run for the whole job"
    run = tracker.get_run(f"slurm-{job}")
    assert run["status"] == "completed"
    assert (run["plan"]["nnodes"], run["plan"]["nproc_per_node"], run["plan"]["world_size"]) == (2, 1, 2)
    train_logs = [h for h in run["history"] if "train/loss" in h]
    assert max(h["step"] for h in train_logs) == 6
    assert all(h["rank1/memory/rss_bytes"] > 0 for h in train_logs), "rank 1 took part"
