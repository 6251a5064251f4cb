"""A callback (loaded by import path from a test config) that counts the torch.distributed collectives each
training step runs on its rank, by name, and writes them to `<out>/collectives_rank<r>.json` at the end. Step N's
count runs from its start to the next step's start: its forwards and backward, its step end, and the logging,
evaluation and checkpoint that follow it. The
collectives run as always: each public function is wrapped once, in this rank process, to count its calls."""
from __future__ import annotations

import collections
import functools
import json
import os
from pathlib import Path

import torch
from transformers import TrainerCallback

COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "broadcast",
               "broadcast_object_list", "barrier", "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather",
               "gather_object", "scatter", "all_to_all", "all_to_all_single")


class CountCollectives(TrainerCallback):
    def __init__(self, out: str):
        self.out = out
        self.counts: collections.Counter = collections.Counter()
        self.per_step: dict[int, dict[str, int]] = {}
        for name in COLLECTIVES:
            original = getattr(torch.distributed, name)

            @functools.wraps(original)
            def counted(*args, _name=name, _original=original, **kwargs):
                self.counts[_name] += 1
                return _original(*args, **kwargs)

            setattr(torch.distributed, name, counted)

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step:
            self.per_step[state.global_step] = dict(self.counts)
        self.counts.clear()

    def on_train_end(self, args, state, control, **kwargs):
        self.per_step[state.global_step] = dict(self.counts)
        Path(self.out, f"collectives_rank{os.environ['RANK']}.json").write_text(json.dumps(self.per_step))
