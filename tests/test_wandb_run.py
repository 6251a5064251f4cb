"""W&B never fails training: an online run with no reachable server and a bad key is logged and switched off, and
never holds a failing rank 0 past its ending wait."""
from __future__ import annotations

import logging
import socket
import time

from engine.schema import DialsumConfig
from engine.wandb_run import WandbRun


def test_unreachable_wandb_is_switched_off_and_never_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "10")
    cfg = DialsumConfig()
    cfg.experiment.output_root = str(tmp_path)
    cfg.tracking.wandb_mode = "online"
    run = WandbRun(cfg, run_id="unreachable1", upload_wait_s=30)
    started = time.monotonic()
    run.start(config={"a": 1}, plan={})
    assert run.wait() is None
    assert not run.enabled
    run.log(1, {"train/loss": 1.0})
    run.summary({"best/x": 1.0})
    run.finish(exit_code=0, timeout=60)
    assert time.monotonic() - started < 60


def test_offline_run_keeps_its_id_across_restarts(tmp_path):
    cfg = DialsumConfig()
    cfg.experiment.output_root = str(tmp_path)
    first = WandbRun(cfg, run_id="samejob1", upload_wait_s=30)
    started = []
    first.start(config={}, plan={}, on_started=started.append)
    assert first.wait() == "samejob1" and started == ["samejob1"]
    first.log(1, {"train/loss": 2.0})
    first.finish(exit_code=1, timeout=60)
    again = WandbRun(cfg, run_id="samejob1", upload_wait_s=30)
    again.start(config={}, plan={})
    assert again.wait() == "samejob1"
    again.finish(exit_code=0, timeout=60)


def test_failed_run_finishes_within_the_ending_wait_while_wandb_is_unreachable(tmp_path, tiny_model_dir, monkeypatch,
                                                                            caplog):
    """W&B online at a closed port with a well-formed fake key: wandb.init keeps retrying until its init_timeout (20 s
    here, 90 s by default) and a failed run's finish used to wait for it. Now finish("failed") returns after the
    store's closing writes and ENDING_WAIT_S (2 s here) for W&B, with the run `failed` in the store and a warning
    naming the local W&B files to `wandb sync`."""
    from engine import recorder as recorder_module
    from engine.config import load_config
    from launch_helpers import small_config
    from launcher.planner import make_plan
    from launcher.topology import detect_topology

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0123456789abcdef" * 2 + "01234567")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "20")
    monkeypatch.setattr(recorder_module, "ENDING_WAIT_S", 2.0)
    loaded = load_config([str(small_config(tmp_path, tiny_model_dir, tracking={"wandb_mode": "online"}))])
    plan = make_plan(loaded, detect_topology(), run_id="wandbdown", nproc_per_node=1)
    recorder = recorder_module.Rank0Recorder(plan, loaded.config, environment={})
    recorder.start()
    assert recorder.writer.drain(timeout=60)  # the run is in the store; W&B's init is still trying
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="engine.wandb_run"):
        recorder.finish("failed", error="RuntimeError: boom", failing_rank=0, exit_code=1)
    took = time.monotonic() - started
    assert 2.0 <= took < 8, took
    assert recorder.tracker.get_run("wandbdown")["status"] == "failed"
    assert f"wandb sync {tmp_path / 'out' / 'wandb' / '*run-*-wandbdown'}" in caplog.text, caplog.text
