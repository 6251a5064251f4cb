"""A callback (loaded by import path from a test config) that makes one rank's forward pass raise CUDA-style OOM once
at a given step: the way to exercise the OOM backoff on CPU ranks. With `out` set, each rank writes the tokens its
trainer state counted to `<out>/tokens_rank<r>.txt` at the end."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback


class InjectOOM(TrainerCallback):
    def __init__(self, step: int, rank: int, out: str = ""):
        self.step, self.rank, self.out, self.fired = step, rank, out, False

    def on_train_end(self, args, state, control, **kwargs):
        if self.out:
            Path(self.out, f"tokens_rank{os.environ.get('RANK', '0')}.txt").write_text(str(state.num_input_tokens_seen))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.fired or state.global_step != self.step or int(os.environ.get("RANK", "0")) != self.rank:
            return

        def raise_once(module, inputs):
            handle.remove()
            raise torch.OutOfMemoryError(f"injected out of memory at step {self.step} on rank {self.rank}")

        handle = model.register_forward_pre_hook(raise_once)
        self.fired = True
