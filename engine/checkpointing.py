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
import json
import logging
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
    """Marks a checkpoint complete once all ranks saved it, with the run's best evaluation so far (a resume takes it
    back: engine/best.py), then keeps the `keep` newest complete ones plus the best one."""

    def __init__(self, rank: int, world_size: int, keep: int, best):
        self.rank, self.world_size, self.keep, self.best = rank, world_size, keep, best

    def on_save(self, args, state, control, **kwargs):
        if is_distributed():
            torch.distributed.barrier()  # every rank's shards are on disk
        if self.rank != 0:
            return
        root = Path(args.output_dir)
        current = root / f"checkpoint-{state.global_step}"
        atomic_write_text(current / MARKER, json.dumps({"step": state.global_step, "world_size": self.world_size,
                                                        "best": self.best.state()}))
        complete = [path for _, path in checkpoints(root) if read_marker(path) is not None]
        keep = {p.resolve() for p in complete[-self.keep:]}
        if self.best.best_step is not None:
            keep.add((root / f"checkpoint-{self.best.best_step}").resolve())
        for step, path in checkpoints(root):
            if step < state.global_step and path.resolve() not in keep:
                shutil.rmtree(path, ignore_errors=True)


def train_or_resume(trainer, plan, checkpoint_root: Path, best, recorder) -> None:
    """`trainer.train()`, from this run's newest complete checkpoint when there is one (a restarted, requeued or
    `--run-id`-resumed job keeps its run id, so its folder already holds them): the best evaluation so far comes back
    from the checkpoint's marker, and at another world size the weights alone (ZeRO optimizer shards do not load at
    another rank count: `resume_optimizer_reset`). Under DeepSpeed, checkpoints load without unpickling code."""
    from engine.compat import safe_deepspeed_checkpoints, weights_only_deepspeed_resume

    checkpoint = latest_checkpoint(checkpoint_root)
    with contextlib.ExitStack() as stack:
        if plan.use_deepspeed:
            stack.enter_context(safe_deepspeed_checkpoints())
        if checkpoint is None:
            trainer.train()
            return
        marker = read_marker(checkpoint)
        best.restore(marker.get("best"))
        data = {"checkpoint": checkpoint.name, "world_size": plan.world_size,
                "saved_world_size": marker.get("world_size"),
                "gradient_accumulation_steps": plan.gradient_accumulation_steps}
        recorder.log_event(marker["step"], "resumed", data)
        log.info("resuming from %s (saved on %s ranks, now %d)", checkpoint, marker.get("world_size"),
                 plan.world_size)
        if plan.use_deepspeed and marker.get("world_size") != plan.world_size:
            recorder.log_event(marker["step"], "resume_optimizer_reset",
                               {**data, "reason": "ZeRO optimizer shards do not load at another world size"})
            stack.enter_context(weights_only_deepspeed_resume())
        trainer.train(resume_from_checkpoint=str(checkpoint))
