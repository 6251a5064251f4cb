"""Preemption: SIGTERM / SIGUSR1 (SLURM time limit, `scancel --signal`, torch elastic shutdown) only set a flag; the
checkpoint is written at the next step boundary, after every rank agreed, never inside the signal handler."""
from __future__ import annotations

import logging
import signal
from collections.abc import Callable

from transformers import TrainerCallback

log = logging.getLogger(__name__)

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; batch scripts requeue on it, launchers pass it through
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionCallback(TrainerCallback):
    """Installs the handlers at construction; at every step end all ranks all-reduce the flag (every rank calls it,
    so none is left waiting), and when any rank was signalled they all save a checkpoint and stop together."""

    def __init__(self, all_reduce_flag: Callable[[bool], bool]):
        self.all_reduce_flag = all_reduce_flag
        self.signal_name: str | None = None
        self.preempted_at: int | None = None
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if self.all_reduce_flag(self.signal_name is not None):
            log.warning("preemption requested (%s): checkpointing at step %d and stopping",
                        self.signal_name or "another rank", state.global_step)
            self.preempted_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control
