"""The seed's Python API in a plain process (no torchrun, no RANK): `create_trainer(config)` runs as a world of one,
with DeepSpeed ZeRO on the CPU, inside the pytest process itself."""
from __future__ import annotations

import os

import pytest
import torch

from engine.store import Tracker, open_store
from launch_helpers import small_config

pytestmark = pytest.mark.slow

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                      "DIALSUM_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")


def test_create_trainer_in_a_plain_process_trains_as_a_world_of_one(tmp_path, tiny_model_dir):
    from engine.trainer import create_trainer

    config = small_config(tmp_path, tiny_model_dir, training={"max_steps": 4, "eval_strategy": "no"})
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
    assert max(h["step"] for h in run["history"] if "train/loss" in h) == 4
    assert (tmp_path / "out" / "runs" / result.run_id / "model" / "model.safetensors").exists()
