"""Which Trainer checkpoints count, and how a run resumes from one.

The HF Trainer writes `checkpoint-N/` in place (model, DeepSpeed shards from every rank, RNG, trainer state). A
checkpoint counts only once every rank has finished writing it: after a barrier, rank 0 writes `dialsum-checkpoint.json`
into it atomically (temp file + rename). Resume and model export only ever use marked checkpoints, and rotation (done
here, after the marker, instead of by the Trainer before it) never deletes the last marked one, so a crash while saving
leaves the previous checkpoint usable.

Resuming with a different world size: DeepSpeed ZeRO optimizer shards are partitioned by rank count and do not load
on another count (the universal-checkpoint conversion is an offline step). Such a resume loads the model weights,
the LR scheduler, RNG and trainer state (step, best metric) and restarts the optimizer moments; the trainer logs a
`resume_optimizer_reset` event. Same world size: everything is restored.
"""
from __future__ import annotations

import contextlib
import enum
import json
import logging
import pickle
import re
import shutil
from pathlib import Path

import torch
from transformers import TrainerCallback

from engine.atomic import atomic_write_text
from engine.distributed import is_distributed

log = logging.getLogger(__name__)

MARKER = "dialsum-checkpoint.json"
_CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")


def read_marker(checkpoint: Path) -> dict | None:
    """The marker's content, or None for a partial checkpoint (no marker, or one that does not parse)."""
    try:
        return json.loads((Path(checkpoint) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def checkpoints(root: Path) -> list[tuple[int, Path]]:
    """(step, dir) of every checkpoint-N folder under root, oldest first, complete or not."""
    found = []
    if Path(root).is_dir():
        for path in Path(root).iterdir():
            match = _CHECKPOINT_DIR.match(path.name)
            if match and path.is_dir():
                found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint under root (what a restarted or requeued job resumes from)."""
    complete = [path for _, path in checkpoints(root) if read_marker(path) is not None]
    return complete[-1] if complete else None


class CheckpointCommitter(TrainerCallback):
    """Marks a checkpoint complete once all ranks saved it, then keeps the `keep` newest complete ones plus the best."""

    def __init__(self, rank: int, world_size: int, keep: int):
        self.rank, self.world_size, self.keep = rank, world_size, keep

    def on_save(self, args, state, control, **kwargs):
        if is_distributed():
            torch.distributed.barrier()  # every rank's shards are on disk
        if self.rank != 0:
            return
        root = Path(args.output_dir)
        current = root / f"checkpoint-{state.global_step}"
        atomic_write_text(current / MARKER, json.dumps({"step": state.global_step, "world_size": self.world_size}))
        best = Path(state.best_model_checkpoint).resolve() if state.best_model_checkpoint else None
        complete = [path for _, path in checkpoints(root) if read_marker(path) is not None]
        keep = set(complete[-self.keep:]) | {best}
        for step, path in checkpoints(root):
            if step < state.global_step and path.resolve() not in {p.resolve() for p in keep if p}:
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def deepspeed_weights_only_resume():
    """While active, the Trainer's resume loads only the module from a DeepSpeed checkpoint (no ZeRO optimizer shards);
    transformers exposes no switch for this, so its loader is swapped for the duration of `trainer.train(...)`."""
    import transformers.trainer as hf_trainer

    original = hf_trainer.deepspeed_load_checkpoint

    def load_module_only(engine, checkpoint_path, load_module_strict=True):
        load_path, _ = engine.load_checkpoint(checkpoint_path, load_module_strict=load_module_strict,
                                              load_optimizer_states=False, load_lr_scheduler_states=False,
                                              load_module_only=True)
        if load_path is None:
            raise ValueError(f"cannot load model weights from {checkpoint_path}")

    hf_trainer.deepspeed_load_checkpoint = load_module_only
    try:
        yield
    finally:
        hf_trainer.deepspeed_load_checkpoint = original


# DeepSpeed's optimizer shards hold these plain data classes besides tensors; nothing else may be unpickled.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config:ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler:LossScaler",
    "deepspeed.utils.tensor_fragment:fragment_address",
)


def _plain_enums(obj):
    """obj with every int-valued Enum member replaced by its int. DeepSpeed puts `ZeroStageEnum` into the optimizer
    state, and how an int Enum pickles depends on the interpreter (3.11.2 writes `getattr(ZeroStageEnum, 'gradients')`,
    3.11.7 writes `ZeroStageEnum(2)`); a plain int pickles the same everywhere, and DeepSpeed only compares it."""
    if isinstance(obj, enum.Enum) and isinstance(obj, int):
        return int(obj)
    if isinstance(obj, dict):
        return type(obj)((key, _plain_enums(value)) for key, value in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_plain_enums(value) for value in obj)
    return obj


def _enum_member_lookup(enums: tuple[type[enum.Enum], ...]):
    """What `builtins.getattr` resolves to while loading: only `getattr(<allowlisted Enum>, '<member name>')`, the
    form some interpreters pickle enum members in (checkpoints written before `_plain_enums`). Any other target or
    attribute fails the load, so no code is reachable through it."""
    def enum_member(cls, name):
        if cls in enums and isinstance(name, str) and name in cls.__members__:
            return cls.__members__[name]
        raise pickle.UnpicklingError(f"refused getattr({cls!r}, {name!r}) in a checkpoint: only members of "
                                     f"{', '.join(e.__name__ for e in enums)} may be looked up")
    return enum_member


@contextlib.contextmanager
def safe_deepspeed_checkpoints():
    """While active, DeepSpeed writes checkpoints with enum members as plain ints and reads them with
    `torch.load(weights_only=True)` and the allowlist above instead of its default full unpickling (deepspeed 0.19
    passes weights_only=False), so a tampered checkpoint cannot run code on resume; an unexpected class fails the load
    with its name."""
    import importlib

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    allowed = []
    for spec in DEEPSPEED_SAFE_GLOBALS:
        module, name = spec.split(":")
        allowed.append(getattr(importlib.import_module(module), name))
    enums = tuple(cls for cls in allowed if isinstance(cls, type) and issubclass(cls, enum.Enum))
    allowed.append((_enum_member_lookup(enums), "builtins.getattr"))
    original_save, original_load = TorchCheckpointEngine.save, TorchCheckpointEngine.load

    def save(self, state_dict, path: str):
        original_save(self, _plain_enums(state_dict), path)

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    TorchCheckpointEngine.save, TorchCheckpointEngine.load = save, load
    try:
        yield
    finally:
        TorchCheckpointEngine.save, TorchCheckpointEngine.load = original_save, original_load
