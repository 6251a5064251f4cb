"""Preemption: SIGTERM / SIGUSR1 (SLURM time limit, `scancel --signal`, torch elastic shutdown) only set a flag; the
checkpoint is written at a step boundary after every rank agreed, never inside the signal handler.

The agreement is an asynchronous all-reduce started at each step end and read at the next one, so it never makes ranks
wait for each other: a signal received during step N stops training, checkpointed, at the end of step N + 1."""
from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from transformers import TrainerCallback


log = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# A signalled rank that reaches no step boundary in this time is stuck (typically in a collective with a dead peer,
# when torch elastic is taking the group down): it exits so the group ends instead of waiting to be SIGKILLed.
STEP_GRACE_S = float(os.environ.get("DIALSUM_STEP_GRACE_S", "30"))


class PreemptionCallback(TrainerCallback):
    """Installs the handlers at construction; at every step end all ranks start reducing the flag (every rank calls
    it, so none is left waiting) and read the reduction started one step before; when any rank was signalled they all
    save a checkpoint and stop together. `start_flag_reduce(flag)` returns a function that waits for the answer."""

    def __init__(self, start_flag_reduce: Callable[[bool], Callable[[], bool]]):
        self.start_flag_reduce = start_flag_reduce
        self._previous: Callable[[], bool] | None = None
        self.signal_name: str | None = None
        self.preempted_at: int | None = None
        self._watchdog: threading.Timer | None = None
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        if self._watchdog is None:
            self._watchdog = threading.Timer(STEP_GRACE_S, os._exit, args=(128 + signum,))
            self._watchdog.daemon = True
            self._watchdog.start()

    def on_step_end(self, args, state, control, **kwargs):
        agreed = self._previous is not None and self._previous()
        self._previous = self.start_flag_reduce(self.signal_name is not None)
        if agreed:
            if self._watchdog is not None:
                self._watchdog.cancel()  # at the boundary: the checkpoint gets the launcher's whole grace period
            log.warning("preemption requested (%s): checkpointing at step %d and stopping",
                        self.signal_name or "another rank", state.global_step)
            self.preempted_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:  # every rank waits for the reduction it started last
            self._previous()
            self._previous = None
