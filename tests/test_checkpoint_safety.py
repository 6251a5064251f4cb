"""Resuming never unpickles arbitrary objects: DeepSpeed checkpoint reads go through weights_only=True with a
three-class allowlist, so a tampered shard fails to load instead of running code. Enum members load whichever way the
writing interpreter pickled them (Python 3.11.2 writes `getattr(EnumClass, name)`), and new checkpoints hold plain ints."""
from __future__ import annotations

import pickle

import pytest
import torch
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from deepspeed.runtime.fp16.loss_scaler import LossScaler

from deepspeed.runtime.zero.config import ZeroStageEnum

from engine.compat import safe_deepspeed_checkpoints


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: run a callable at load time
        return (open, (str(self.marker), "w"))


class _Getattr:
    """Pickles as `getattr(target, name)`, the form Python 3.11.2 gives int-Enum members, on any interpreter."""
    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return (getattr, (self.target, self.name))


def test_tampered_checkpoint_does_not_run_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    torch.save({"optimizer_state_dict": {"x": _Payload(marker)}}, path)
    with safe_deepspeed_checkpoints(), pytest.raises(pickle.UnpicklingError):
        TorchCheckpointEngine.load(None, str(path), map_location="cpu")
    assert not marker.exists()


def test_deepspeed_state_classes_still_load(tmp_path):
    path = tmp_path / "optim_states.pt"
    torch.save({"loss_scaler": LossScaler(scale=1.0), "step": torch.tensor(3)}, path)
    original = TorchCheckpointEngine.load
    with safe_deepspeed_checkpoints():
        state = TorchCheckpointEngine.load(None, str(path), map_location="cpu")
    assert isinstance(state["loss_scaler"], LossScaler) and int(state["step"]) == 3
    assert TorchCheckpointEngine.load is original  # DeepSpeed's own loader is back after the block


def test_enum_member_pickled_through_getattr_loads(tmp_path):
    path = tmp_path / "optim_states.pt"
    torch.save({"zero_stage": _Getattr(ZeroStageEnum, "gradients")}, path)
    with safe_deepspeed_checkpoints():
        state = TorchCheckpointEngine.load(None, str(path), map_location="cpu")
    assert state["zero_stage"] is ZeroStageEnum.gradients


@pytest.mark.parametrize("target,name", [(ZeroStageEnum, "__class__"), (ZeroStageEnum, "_missing_"),
                                         (LossScaler, "__init__"), (ZeroStageEnum, "__reduce_ex__")])
def test_getattr_reaches_nothing_but_enum_members(tmp_path, target, name):
    path = tmp_path / "optim_states.pt"
    torch.save({"x": _Getattr(target, name)}, path)
    with safe_deepspeed_checkpoints(), pytest.raises(pickle.UnpicklingError):
        TorchCheckpointEngine.load(None, str(path), map_location="cpu")


def test_saved_enum_members_are_plain_ints(tmp_path):
    """What DeepSpeed saves then loads with no allowlist at all, whatever interpreter wrote it."""
    path = tmp_path / "optim_states.pt"
    state = {"optimizer_state_dict": {"zero_stage": ZeroStageEnum.gradients, "groups": [(ZeroStageEnum.weights, 1)]}}
    original = TorchCheckpointEngine.save
    with safe_deepspeed_checkpoints():
        TorchCheckpointEngine(None).save(state, str(path))
    assert TorchCheckpointEngine.save is original
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert loaded == {"optimizer_state_dict": {"zero_stage": 2, "groups": [(3, 1)]}}
    assert type(loaded["optimizer_state_dict"]["zero_stage"]) is int
    assert state["optimizer_state_dict"]["zero_stage"] is ZeroStageEnum.gradients  # the caller's state is untouched
