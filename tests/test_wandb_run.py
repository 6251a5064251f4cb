"""W&B never fails training: an online run with no reachable server and a bad key is logged and switched off."""
from __future__ import annotations

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
    run = WandbRun(cfg, run_id="unreachable1")
    started = time.monotonic()
    run.start(config={"a": 1}, plan={})
    assert run.wait() is None
    assert not run.enabled
    run.log(1, {"train/loss": 1.0})
    run.summary({"best/x": 1.0})
    run.finish(exit_code=0)
    assert time.monotonic() - started < 60


def test_offline_run_keeps_its_id_across_restarts(tmp_path):
    cfg = DialsumConfig()
    cfg.experiment.output_root = str(tmp_path)
    first = WandbRun(cfg, run_id="samejob1")
    started = []
    first.start(config={}, plan={}, on_started=started.append)
    assert first.wait() == "samejob1" and started == ["samejob1"]
    first.log(1, {"train/loss": 2.0})
    first.finish(exit_code=1)
    again = WandbRun(cfg, run_id="samejob1")
    again.start(config={}, plan={})
    assert again.wait() == "samejob1"
    again.finish(exit_code=0)
