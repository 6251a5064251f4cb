"""A TrainerCallback that injects a real fault into a real run (loaded by the engine from the config's `callbacks`)."""
from __future__ import annotations

import os
import signal
import time

from transformers import TrainerCallback


class Fault(TrainerCallback):
    """At `step` on global rank `rank`: `kill` (SIGKILL itself), `raise`, `signal_parent` (send `signal` to the
    process that started this rank: the launcher), or `freeze` (SIGSTOP itself: a wedged process that is still there). `first_attempt_only` spares torch elastic's restarts; `stamp_file` receives the time
    of the fault."""

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
        elif self.action == "freeze":
            os.kill(os.getpid(), signal.SIGSTOP)


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


class SlowStep(TrainerCallback):
    """On every rank, step `step` spends `seconds` where no module runs: `where="callback"` sleeps in a callback at its
    begin (a data loader waiting on a network filesystem, a long callback), `where="optimizer"` inside the optimizer's
    own step (DeepSpeed calls it from the backward; a CPU-offloaded step of a large model takes tens of seconds).
    Rank 0 sends `signal` to its parent (the launcher) as that step begins; every rank appends
    `<rank> <sleep start> <sleep end>` (unix times) to `stamp_file`."""

    def __init__(self, step: int, seconds: float, where: str, stamp_file: str, signal: str = "SIGTERM"):
        self.step, self.seconds, self.where, self.stamp_file, self.signal = step, seconds, where, stamp_file, signal
        self.armed = False

    def _sleep(self) -> None:
        started = time.time()
        time.sleep(self.seconds)
        with open(self.stamp_file, "a") as fh:
            fh.write(f"{os.environ.get('RANK', '0')} {started} {time.time()}\n")

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.where != "optimizer":
            return
        inner = optimizer
        while hasattr(inner, "optimizer"):  # accelerate's wrapper -> DeepSpeed's ZeRO optimizer -> torch's AdamW
            inner = inner.optimizer
        step = inner.step

        def slow_step(*a, **kw):
            if self.armed:  # ZeRO steps once per parameter group: sleep once
                self.armed = False
                self._sleep()
            return step(*a, **kw)

        inner.step = slow_step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step != self.step - 1:
            return
        if int(os.environ.get("RANK", "0")) == 0:
            os.kill(os.getppid(), getattr(signal, self.signal))
        if self.where == "callback":
            self._sleep()
        else:
            self.armed = True
