"""Preemption: SIGTERM / SIGUSR1 (SLURM time limit, `scancel --signal`, torch elastic shutdown) only set a flag; the
checkpoint is written at a step boundary after every rank agreed, never inside the signal handler.

The agreement is an asynchronous all-reduce started at each step end and read at the next one, so it never makes ranks
wait for each other: a signal received during step N stops training, checkpointed, at the end of step N + 1.

Between the signal and that step end a rank may legitimately be busy for minutes (a step of a large model, an
evaluation generating with beams, a checkpoint being written). The watchdog therefore measures time since this rank
last made progress (`PROGRESS`: every module forward, every parameter's gradient, every checkpoint file write), not
time since the signal: only a rank that does nothing (stuck in a collective with a dead peer) is made to exit."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable

from transformers import TrainerCallback


log = logging.getLogger(__name__)

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# A signalled rank that makes no progress for this long is stuck (typically in a collective with a dead peer, when
# torch elastic is taking the group down): it exits so the group ends instead of waiting to be SIGKILLed.
STEP_GRACE_S = float(os.environ.get("DIALSUM_STEP_GRACE_S", "30"))


class Progress:
    """When this rank last did work. `beat` is cheap (one clock read) and runs from hooks on every module forward and
    parameter gradient; `local_work()` covers a stretch with no beat inside (a checkpoint write: its file writes can
    take minutes), during which the rank counts as progressing. A peer dying inside a checkpoint's barriers is left to
    torch elastic's shutdown timeout."""

    def __init__(self):
        self.last = time.monotonic()
        self._local = 0

    def beat(self, *_args) -> None:
        self.last = time.monotonic()

    @contextlib.contextmanager
    def local_work(self):
        self._local += 1
        try:
            yield
        finally:
            self._local -= 1
            self.beat()

    def idle_s(self) -> float:
        return 0.0 if self._local else time.monotonic() - self.last


PROGRESS = Progress()


def watch_model(model) -> None:
    """Beat on every module forward (training, evaluation, each generated token) and every parameter gradient."""
    for module in model.modules():
        module.register_forward_pre_hook(PROGRESS.beat)
    for param in model.parameters():
        if param.requires_grad:
            param.register_hook(PROGRESS.beat)


class PreemptionCallback(TrainerCallback):
    """Installs the handlers at construction; at every step end all ranks start reducing the flag (every rank calls
    it, so none is left waiting) and read the reduction started one step before; when any rank was signalled they all
    save a checkpoint and stop together. `start_flag_reduce(flag)` returns a function that waits for the answer."""

    def __init__(self, start_flag_reduce: Callable[[bool], Callable[[], bool]], lead_s: float = 0.0):
        self.start_flag_reduce = start_flag_reduce
        self._previous: Callable[[], bool] | None = None
        self.signal_name: str | None = None
        self.preempted_at: int | None = None
        self._watchdog: threading.Thread | None = None
        self._boundary = threading.Event()  # set at the agreed step end: the watchdog stops
        self.lead_s = lead_s  # how long the launcher waits for signalled ranks (plan.preempt_lead_s); 0: unknown
        self._step_started = self._mark = time.monotonic()
        self.step_s = 0.0  # longest step seen (after the first, which includes warm-up)
        self._lead_warned = False
        for sig in PREEMPT_SIGNALS:
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, args=(signum,), name="dialsum-watchdog", daemon=True)
            self._watchdog.start()

    def _watch(self, signum: int) -> None:
        while not self._boundary.wait(1.0):
            if PROGRESS.idle_s() > STEP_GRACE_S:
                log.error("preemption: no progress for %.0f s (a peer is gone?), exiting without a checkpoint",
                          PROGRESS.idle_s())
                os._exit(128 + signum)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None:
            watch_model(model)

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.monotonic()

    def on_evaluate(self, args, state, control, **kwargs):
        self._mark = time.monotonic()

    def on_save(self, args, state, control, **kwargs):
        """Warn once when a preemption could not be honoured: up to two steps and a checkpoint happen between the
        signal and the end of the run, and the launcher / SLURM only waits `lead_s` (plan.preempt_lead_s)."""
        save_s = time.monotonic() - self._mark
        needed = 2 * self.step_s + save_s
        if self.lead_s and needed > self.lead_s and not self._lead_warned and state.is_world_process_zero:
            self._lead_warned = True
            log.warning("preemption lead too short: 2 x step %.0f s + checkpoint %.0f s = %.0f s > %.0f s "
                        "(the launcher's grace, DIALSUM_SHUTDOWN_GRACE_S; SLURM's --signal lead): a preemption would end "
                        "without a checkpoint", self.step_s, save_s, needed, self.lead_s)

    def on_step_end(self, args, state, control, **kwargs):
        now = time.monotonic()
        if state.global_step > 1:
            self.step_s = max(self.step_s, now - self._step_started)
        self._mark = now
        agreed = self._previous is not None and self._previous()
        self._previous = self.start_flag_reduce(self.signal_name is not None)
        if agreed:
            self._boundary.set()  # at the boundary: the checkpoint gets the launcher's whole grace period
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
