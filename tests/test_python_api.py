"""The seed's Python API in a plain process (no torchrun, no RANK): `create_trainer(config)` runs as a world of one,
with DeepSpeed ZeRO on the CPU, inside the pytest process itself; after training it predicts `data.test_file`."""
from __future__ import annotations

import csv
import os

import pytest
import torch

from engine.data import read_dialogues
from engine.store import Tracker, open_store
from launch_helpers import small_config

pytestmark = pytest.mark.slow

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "DIALSUM_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")


def test_create_trainer_in_a_plain_process_trains_as_a_world_of_one(tmp_path, tiny_model_dir, mini_data):
    from engine.trainer import create_trainer

    test_csv = tmp_path / "test.csv"  # what a competition gives: fname, dialogue
    rows = read_dialogues(mini_data["test_csv"], require_summary=False, limit=5)
    with open(test_csv, "w", newline="") as fh:
        csv.writer(fh).writerows([("fname", "dialogue"), *((r.fname, r.dialogue) for r in rows)])
    config = small_config(tmp_path, tiny_model_dir, training={"max_steps": 4, "eval_strategy": "no"},
                          data={"test_file": str(test_csv)})
    saved = dict(os.environ)
    for name in LAUNCHER_VARIABLES:
        os.environ.pop(name, None)
    try:
        trainer = create_trainer(str(config))
        result = trainer.train(trainer.prepare_data())
        assert os.environ["RANK"] == "0" and os.environ["WORLD_SIZE"] == "1"
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
    run = Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}")).get_run(result.run_id)
    assert run["status"] == "completed"
    assert run["plan"]["world_size"] == 1 and run["plan"]["use_deepspeed"]
    losses = {h["step"]: h["train/loss"] for h in run["history"] if "train/loss" in h}
    assert sorted(losses) == [1, 2, 3, 4]
    # The Trainer's final average is its own metric; it once overwrote the last step's loss (a jump in every curve).
    [mean] = [h["train/loss_mean"] for h in run["history"] if "train/loss_mean" in h]
    assert mean == pytest.approx(sum(losses.values()) / 4, abs=1e-3)
    run_dir = tmp_path / "out" / "runs" / result.run_id
    assert (run_dir / "model" / "model.safetensors").exists()
    # data.test_file, predicted after training by the exported model, beside predictions.csv, recorded on the run
    assert result.submission_path == str(run_dir / "submission.csv")
    with open(result.submission_path, newline="") as fh:
        submission = list(csv.DictReader(fh))
    assert [r["fname"] for r in submission] == [r.fname for r in rows]
    assert set(submission[0]) == {"fname", "summary"} and all(r["summary"].strip() for r in submission)
    [event] = [e for e in run["events"] if e["kind"] == "submission"]
    assert event["data"]["path"] == result.submission_path and event["data"]["rows"] == 5
