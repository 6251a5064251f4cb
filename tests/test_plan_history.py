"""The planner's memory history: past `memory_peaks` of completed runs of the same model, read in one query."""
from __future__ import annotations

import pytest

from engine.schema import DialsumConfig
from engine.store import Tracker, open_store
from launcher.plan_history import memory_corrections, past_predictions


def _run(tracker: Tracker, run_id: str, model: str, status: str, measured: float, device: str = "cpu",
         correction: float = 1.0) -> None:
    tracker.create_run(run_id, name="x", config={"model": {"name_or_path": model}},
                       plan={"world_size": 2, "zero_stage": 0, "micro_batch_size": 4, "memory": {"correction": correction}},
                       environment={})
    tracker.start(run_id)
    tracker.log_metrics(run_id, 1, {"train/loss": 1.0})
    tracker.log_event(run_id, 5, "memory_peaks", {"max_bytes": measured, "device": device, "predicted_bytes": 100.0,
                                                  "prediction_error": measured / 100.0 - 1, "peak_bytes_per_rank": []})
    tracker.log_event(run_id, 5, "anomaly", {"what": "not a memory reading"})
    tracker.finish(run_id, status, exit_code=0 if status == "completed" else 1)


@pytest.fixture
def cfg(tmp_path) -> DialsumConfig:
    cfg = DialsumConfig()
    cfg.model.name_or_path = "org/model-a"
    cfg.experiment.output_root = str(tmp_path)
    return cfg


def test_reads_completed_runs_of_the_same_model_newest_first(tmp_path, cfg):
    with open_store(f"sqlite:///{tmp_path / 'dialsum.db'}") as store:
        tracker = Tracker(store)
        _run(tracker, "old", "org/model-a", "completed", 120.0)
        _run(tracker, "other-model", "org/model-b", "completed", 900.0)
        _run(tracker, "failed", "org/model-a", "failed", 900.0)
        _run(tracker, "gpu", "org/model-a", "completed", 300.0, device="cuda")
        _run(tracker, "new", "org/model-a", "completed", 140.0, correction=1.2)
    rows = past_predictions(cfg)
    assert [r["run_id"] for r in rows] == ["new", "gpu", "old"]
    assert rows[0]["measured_bytes"] == 140.0 and rows[0]["correction"] == 1.2 and rows[0]["world_size"] == 2
    factor, reason = memory_corrections(cfg, "cpu")["full"]
    # each run against its uncorrected formula: 140 x 1.2 / 100 and 120 / 100, median 1.44
    assert factor == pytest.approx((1.68 + 1.2) / 2) and "2 past run(s)" in reason and "new, old" in reason
    assert memory_corrections(cfg, "xpu") == {}


def test_no_store_yet_means_no_history(tmp_path, cfg):
    assert past_predictions(cfg) == [] and memory_corrections(cfg, "cpu") == {}
    assert not (tmp_path / "dialsum.db").exists()
