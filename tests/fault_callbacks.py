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
