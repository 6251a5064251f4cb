"""A callback (loaded by import path from a test config) that makes one rank's forward pass raise CUDA-style OOM once
at a given step: the way to exercise the OOM backoff on CPU ranks. With `out` set, each rank writes the tokens its
trainer state counted to `<out>/tokens_rank<r>.txt` at the end. `module` (a submodule path such as
`model.decoder.layers.1`) raises deep inside the forward, after the layers before it ran (under ZeRO-3: after their
all-gathers); `micro_batch_size` fires only while the plan has that micro-batch (not after a restart at a smaller
one)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import TrainerCallback


class InjectOOM(TrainerCallback):
    def __init__(self, step: int, rank: int, out: str = "", module: str = "", micro_batch_size: int = 0):
        self.step, self.rank, self.out, self.fired = step, rank, out, False
        self.module, self.micro_batch_size = module, micro_batch_size

    def on_train_end(self, args, state, control, **kwargs):
        if self.out:
            Path(self.out, f"tokens_rank{os.environ.get('RANK', '0')}.txt").write_text(str(state.num_input_tokens_seen))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self.fired or state.global_step != self.step or int(os.environ.get("RANK", "0")) != self.rank:
            return
        if self.micro_batch_size and args.per_device_train_batch_size != self.micro_batch_size:
            return

        def raise_once(module, inputs):
            handle.remove()
            raise torch.OutOfMemoryError(f"injected out of memory at step {self.step} on rank {self.rank}")

        handle = (model.get_submodule(self.module) if self.module else model).register_forward_pre_hook(raise_once)
        self.fired = True
