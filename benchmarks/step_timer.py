"""A TrainerCallback that both sides of a benchmark install: it times optimizer steps on rank 0 and writes them as JSON.

The engine loads it as a custom callback (`callbacks: [{path: "step_timer:StepTimer", kwargs: {out: ...}}]`); the plain
script passes it to its Seq2SeqTrainer. Same code on both sides, so its own cost cancels out of every ratio.
`on_step_end` runs after the optimizer step and before the Trainer logs, so the gap between two step ends covers one
whole step including the previous step's logging (and every callback's on_log): the overhead being measured.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    def __init__(self, out: str):
        self.out = Path(out)
        self.first_step_begin_wall: float | None = None  # time.time(): comparable with a parent process's clock
        self.step_ends: list[float] = []                 # time.perf_counter() at each optimizer step's end
        self.losses: list[tuple[int, float]] = []
        self.tokens: list[int] = []                      # state.num_input_tokens_seen at each step end (0: not counted)
        self.peak_memory_bytes: int | None = None        # CUDA max allocated on rank 0 (None on CPU)
        self.walls: dict[str, float] = {}                # time.time() at: trainer built, train begin/end
        self.evals: list[dict] = []                      # each evaluation's metrics, with its wall time

    def on_init_end(self, args, state, control, **kwargs):
        self.walls["trainer_built"] = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.walls["train_begin"] = time.time()  # after DDP / DeepSpeed wrapped the model

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evals.append({"step": state.global_step, "wall": time.time(), **{k: float(v) for k, v in
                                                                              (metrics or {}).items()}})

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_step_begin_wall is None:
            self.first_step_begin_wall = time.time()

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter())
        self.tokens.append(int(state.num_input_tokens_seen or 0))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))

    def on_train_end(self, args, state, control, **kwargs):
        self.walls["train_end"] = time.time()
        if int(os.environ.get("RANK", "0")) != 0:
            return
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated())
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(f".{self.out.name}.tmp")
        tmp.write_text(json.dumps({"first_step_begin_wall": self.first_step_begin_wall, "step_ends": self.step_ends,
                                   "losses": self.losses, "world_size": args.world_size,
                                   "tokens": self.tokens, "peak_memory_bytes": self.peak_memory_bytes,
                                   "walls": self.walls, "evals": self.evals}))
        os.replace(tmp, self.out)


def steady_step_time(timing: dict, warmup: int) -> float:
    """Mean seconds per step over the steps after `warmup` (start-up, first allocations and JIT excluded)."""
    ends = timing["step_ends"]
    if len(ends) <= warmup + 1:
        raise ValueError(f"{len(ends)} steps timed; need more than warmup + 1 = {warmup + 1}")
    return (ends[-1] - ends[warmup]) / (len(ends) - 1 - warmup)


def median_step_time(timing: dict, warmup: int) -> float:
    """Median seconds of one step after `warmup`: robust to bursts of load from other processes, but it leaves out the
    logging steps' extra cost, which the mean (`steady_step_time`) includes."""
    ends = timing["step_ends"][warmup:]
    gaps = sorted(b - a for a, b in zip(ends, ends[1:]))
    return gaps[len(gaps) // 2]


def steady_tokens_per_s(timing: dict, warmup: int) -> float:
    """Counted tokens (all ranks) per second over the steps after `warmup`; 0 when tokens were not counted."""
    ends, tokens = timing["step_ends"], timing["tokens"]
    return (tokens[-1] - tokens[warmup]) / (ends[-1] - ends[warmup])
