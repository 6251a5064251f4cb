"""A callback (loaded by import path from a test config) that makes one rank's forward pass raise CUDA-style OOM once
at a given step: the way to exercise the OOM backoff on CPU ranks."""
from __future__ import annotations

import os

import torch
from transformers import TrainerCallback


class InjectOOM(TrainerCallback):
    def __init__(self, step: int, rank: int):
        self.step, self.rank, self.fired = step, rank, False

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.fired or state.global_step != self.step or int(os.environ.get("RANK", "0")) != self.rank:
            return

        def raise_once(module, inputs):
            handle.remove()
            raise torch.OutOfMemoryError(f"injected out of memory at step {self.step} on rank {self.rank}")

        handle = model.register_forward_pre_hook(raise_once)
        self.fired = True
