"""A TrainerCallback that injects a real fault into a real run (loaded by the engine from the config's `callbacks`)."""
from __future__ import annotations

import os
import signal
import time

from transformers import TrainerCallback


class Fault(TrainerCallback):
    """At `step` on global rank `rank`: `kill` (SIGKILL itself), `raise`, or `signal_parent` (send `signal` to the
    process that started this rank: the launcher). `first_attempt_only` spares torch elastic's restarts; `stamp_file`
    receives the time of the fault."""

    def __init__(self, rank: int, step: int, action: str, signal: str = "SIGUSR1", first_attempt_only: bool = False,
                 stamp_file: str = ""):
        self.rank, self.step, self.action, self.signal = rank, step, action, signal
        self.first_attempt_only, self.stamp_file = first_attempt_only, stamp_file

    def on_step_end(self, args, state, control, **kwargs):
        if int(os.environ.get("RANK", "0")) != self.rank or state.global_step != self.step:
            return
        if self.first_attempt_only and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return
        if self.stamp_file:
            with open(self.stamp_file, "w") as fh:
                fh.write(repr(time.time()))
        if self.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self.action == "raise":
            raise RuntimeError(f"injected fault on rank {self.rank} at step {self.step}")
        elif self.action == "signal_parent":
            os.kill(os.getppid(), getattr(signal, self.signal))


class SecretProbe(TrainerCallback):
    """Takes secrets as a user's callback would (an API key, a webhook URL with a password) and fails the rank unless
    they arrive unredacted: `digest` is sha256 of `api_key + webhook_url`."""

    def __init__(self, api_key: str, webhook_url: str, digest: str):
        import hashlib

        if hashlib.sha256((api_key + webhook_url).encode()).hexdigest() != digest:
            raise ValueError("SecretProbe received redacted values")


class SlowPhases(TrainerCallback):
    """A model at real scale, on every rank: step `step` takes `seconds` (spread over its module forwards, as a large
    model's layers are), the evaluation after it takes `seconds` too, and its checkpoint's first file write sleeps
    `seconds`. With `signal` set, rank 0 sends it to its parent (the launcher) as the slow step begins."""

    def __init__(self, step: int, seconds: float, signal: str = "", chunk_s: float = 2.0):
        self.step, self.seconds, self.signal, self.chunk_s = step, seconds, signal, chunk_s
        self.budget, self.handles = 0.0, []

    def _slow_forwards(self, model) -> None:
        def pre_hook(module, args):
            if self.budget > 0:
                pause = min(self.chunk_s, self.budget)
                self.budget -= pause
                time.sleep(pause)

        self.budget = self.seconds
        if not self.handles:
            self.handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules()]

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step - 1 and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
            if self.signal and int(os.environ.get("RANK", "0")) == 0:
                os.kill(os.getppid(), getattr(signal, self.signal))
            self._slow_forwards(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step != self.step or not self.handles:
            return
        self._slow_forwards(model)  # the evaluation that follows this step
        import torch

        save = torch.save

        def slow_save(*a, **kw):
            torch.save = save
            time.sleep(self.seconds)
            return save(*a, **kw)

        torch.save = slow_save

    def on_evaluate(self, args, state, control, **kwargs):
        self.budget = 0.0


class StepLog(TrainerCallback):
    """Global rank `rank` appends `<step> <unix time>` to `path` at every step end: training progress seen from a peer
    of rank 0, without touching the store."""

    def __init__(self, path: str, rank: int = 1):
        self.path, self.rank = path, rank

    def on_step_end(self, args, state, control, **kwargs):
        if int(os.environ.get("RANK", "0")) == self.rank:
            with open(self.path, "a") as fh:
                fh.write(f"{state.global_step} {time.time()}\n")
