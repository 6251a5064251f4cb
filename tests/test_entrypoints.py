"""Every way users start ranks, on real DeepSpeed CPU ranks: `accelerate launch -m engine`, `dialsum launch` with one
rank, and two `dialsum launch` "nodes" on localhost meeting through static rendezvous. Each leaves exactly one run."""
from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

import pytest

from engine.store import Tracker, open_store
from launch_helpers import REPO_ROOT, run_dialsum, run_processes, small_config

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def the_run(tmp_path) -> dict:
    tracker = Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}"))
    runs = tracker.list_runs()
    assert len(runs) == 1, "exactly one run"
    return tracker.get_run(runs[0]["run_id"])


def assert_completed(run: dict, world_size: int) -> None:
    assert run["status"] == "completed"
    assert run["plan"]["world_size"] == world_size and run["plan"]["use_deepspeed"]
    assert run["plan"]["global_batch_size"] == 8
    assert max(h["step"] for h in run["history"] if "train/loss" in h) == 16


def test_accelerate_launch_runs_engine_as_two_ranks(tmp_path, tiny_model_dir):
    config = small_config(tmp_path, tiny_model_dir)
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    [proc] = run_processes([[accelerate, "launch", "--config_file", str(REPO_ROOT / "scripts/accelerate/one_node.yaml"),
                             "--main_process_port", str(free_port()), "-m", "engine", "--config", str(config)]],
                           cwd=REPO_ROOT, env={**os.environ, "DIALSUM_RUN_ID": "accel"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = the_run(tmp_path)
    assert run["run_id"] == "accel"
    assert_completed(run, world_size=2)
    assert run["plan"]["gradient_accumulation_steps"] * run["plan"]["micro_batch_size"] * 2 == 8


def test_accelerate_deepspeed_template_runs_the_users_deepspeed_config(tmp_path, tiny_model_dir):
    """accelerate's own deepspeed.yaml + zero_stage1_config.json (tests/fixtures/, public files; fp16 set to "auto" as
    the yaml's comment says, since DeepSpeed has no fp16 on CPU): the run trains with the user's ZeRO-1 config and
    optimizer/scheduler sections, not dialsum's plan, and says so. accelerate's fsdp.yaml is refused by the ranks."""
    import json
    import yaml

    fixtures = REPO_ROOT / "tests" / "fixtures"
    ds = json.loads((fixtures / "deepspeed" / "zero_stage1_config.json").read_text())
    ds["fp16"]["enabled"] = "auto"
    (tmp_path / "zero_stage1_config.json").write_text(json.dumps(ds))
    accel = yaml.safe_load((fixtures / "accelerate" / "deepspeed.yaml").read_text())
    accel["deepspeed_config"]["deepspeed_config_file"] = str(tmp_path / "zero_stage1_config.json")
    (tmp_path / "deepspeed.yaml").write_text(yaml.safe_dump(accel))
    config = small_config(tmp_path, tiny_model_dir, parallel={"zero_stage": None})
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    proc = subprocess.run([accelerate, "launch", "--config_file", str(tmp_path / "deepspeed.yaml"),
                           "--main_process_port", str(free_port()), "-m", "engine", "--config", str(config)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "DIALSUM_RUN_ID": "accel-ds"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = the_run(tmp_path)
    assert_completed(run, world_size=2)
    used = run["plan"]["deepspeed_config"]
    assert used["zero_optimization"]["stage"] == 1 and run["plan"]["zero_stage"] == 1
    assert used["optimizer"]["type"] == "AdamW" and used["optimizer"]["params"]["lr"] == 3e-3
    assert used["fp16"]["enabled"] is False and used["gradient_accumulation_steps"] == 1
    assert run["plan"]["reasons"]["deepspeed_config"].startswith("accelerate deepspeed_config_file ")

    fsdp = subprocess.run([accelerate, "launch", "--config_file", str(fixtures / "accelerate" / "fsdp.yaml"),
                           "--main_process_port", str(free_port()), "-m", "engine", "--config", str(config)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    refusals = [line for line in (fsdp.stdout + fsdp.stderr).splitlines()
                if line.startswith("dialsum: error: accelerate config: distributed_type FSDP is not supported")]
    # each rank refuses on its own; torchrun stops the other rank when the first exits, so one or both lines are seen
    assert fsdp.returncode != 0 and len(refusals) in (1, 2), fsdp.stderr[-3000:]
    assert 'engine/' not in fsdp.stderr, "no rank traceback"
    assert len(Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}")).list_runs()) == 1


def test_accelerate_multi_node_config_as_two_machines_on_localhost(tmp_path, tiny_model_dir):
    """scripts/accelerate/multi_node.yaml, as its header says to run it: one `accelerate launch` per machine with its
    --machine_rank and the first machine's address (here both on localhost, one process each)."""
    config = small_config(tmp_path, tiny_model_dir, training={"eval_strategy": "no", "max_steps": 6})
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    port = str(free_port())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DIALSUM_RUN_ID": "accel2"}
    machines = run_processes([[accelerate, "launch", "--config_file", str(REPO_ROOT / "scripts/accelerate/multi_node.yaml"),
                               "--machine_rank", str(r), "--main_process_ip", "127.0.0.1", "--main_process_port", port,
                               "--num_processes", "2", "-m", "engine", "--config", str(config)] for r in (0, 1)],
                             cwd=REPO_ROOT, env=env)
    assert [m.returncode for m in machines] == [0, 0], "".join(m.stdout[-1500:] + m.stderr[-1500:] for m in machines)
    run = the_run(tmp_path)
    assert run["run_id"] == "accel2" and run["status"] == "completed"
    assert (run["plan"]["nnodes"], run["plan"]["nproc_per_node"], run["plan"]["world_size"]) == (2, 1, 2)
    assert max(h["step"] for h in run["history"] if "train/loss" in h) == 6


def test_single_rank_launch_writes_no_secret_anywhere(tmp_path, tiny_model_dir):
    """Secrets in every place a user puts them: a callback's `api_key`, a password inside a URL (callback kwargs and
    notes), WANDB_API_KEY and HF_TOKEN. The rank still receives the real values (SecretProbe checks), and no file under
    the output root (run folder, plan.json, config.yaml, store, W&B run files) nor the console holds any of them."""
    secrets = {"api_key": "sk-APIKEY-1f2e3d", "url_password": "URLPW-9a8b7c", "notes_password": "NOTESPW-5d6e",
               "wandb": "wandbkey0123456789abcdef0123456789abcdef", "hf": "hf_HFTOKEN-4c5d6e7f"}
    webhook = f"https://hook:{secrets['url_password']}@hooks.example.org/notify"
    digest = hashlib.sha256((secrets["api_key"] + webhook).encode()).hexdigest()
    config = small_config(
        tmp_path, tiny_model_dir,
        experiment={"notes": f"dashboard https://ann:{secrets['notes_password']}@grafana.example.org/d/1"},
        callbacks=[{"path": "fault_callbacks:SecretProbe",
                    "kwargs": {"api_key": secrets["api_key"], "webhook_url": webhook, "digest": digest}}])
    proc = run_dialsum("launch", str(config), "--nproc", "1",
                       env={"WANDB_API_KEY": secrets["wandb"], "HF_TOKEN": secrets["hf"],
                            "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = the_run(tmp_path)
    assert_completed(run, world_size=1)
    run_dir = tmp_path / "out" / "runs" / run["run_id"]
    assert (run_dir / "model" / "model.safetensors").exists()
    assert (run_dir / "predictions.csv").exists()
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert run_dir / "plan.json" in written and run_dir / "config.yaml" in written
    assert any(p.suffix == ".wandb" for p in written) and any(p.name == "debug.log" for p in written)
    for name, secret in secrets.items():
        for path in written:
            assert secret.encode() not in path.read_bytes(), f"{name} written to {path}"
        assert secret not in proc.stdout + proc.stderr, f"{name} in the console output"


def test_two_nodes_on_localhost_static_rendezvous(tmp_path, tiny_model_dir):
    config = small_config(tmp_path, tiny_model_dir)
    port = str(free_port())
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DIALSUM_RUN_ID": "twonodes"}
    nodes = run_processes([[sys.executable, "-m", "launcher.cli", "launch", str(config), "--nproc", "1",
                            "--nnodes", "2", "--node-rank", str(r), "--master-addr", "127.0.0.1",
                            "--master-port", port] for r in (0, 1)], cwd=REPO_ROOT, env=env)
    assert [n.returncode for n in nodes] == [0, 0], "".join(n.stdout[-1500:] + n.stderr[-1500:] for n in nodes)
    run = the_run(tmp_path)
    assert run["run_id"] == "twonodes" and run["plan"]["nnodes"] == 2
    assert_completed(run, world_size=2)


def test_multi_node_launch_without_a_shared_run_id_is_a_user_error(tmp_path, tiny_model_dir):
    config = small_config(tmp_path, tiny_model_dir)
    env = {k: v for k, v in os.environ.items() if k != "DIALSUM_RUN_ID"}
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", str(config), "--nnodes", "2",
                           "--master-addr", "127.0.0.1"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--run-id" in proc.stderr and "Traceback" not in proc.stderr
