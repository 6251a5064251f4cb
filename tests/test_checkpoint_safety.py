"""Resuming never unpickles arbitrary objects: DeepSpeed checkpoint reads go through weights_only=True with a
three-class allowlist, so a tampered shard fails to load instead of running code."""
from __future__ import annotations

import pickle

import pytest
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler

from engine.checkpointing import safe_deepspeed_loads


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: run a callable at load time
        return (open, (str(self.marker), "w"))


def test_tampered_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"x": _Payload(marker)}}, path)
    with safe_deepspeed_loads(), pytest.raises(pickle.UnpicklingError):
        TorchCheckpointEngine.load(None, str(path), map_location="cpu")
    assert not marker.exists()


def test_deepspeed_state_classes_still_load(tmp_path):
    path = tmp_path / "optim_states.pt"
    torch.save({"loss_scaler": LossScaler(scale=1.0), "step": torch.tensor(3)}, path)
    original = TorchCheckpointEngine.load
    with safe_deepspeed_loads():
        state = TorchCheckpointEngine.load(None, str(path), map_location="cpu")
    assert isinstance(state["loss_scaler"], LossScaler) and int(state["step"]) == 3
    assert TorchCheckpointEngine.load is original  # DeepSpeed's own loader is back after the block
