"""The one interface through which the engine causes rank-0 side effects: tracker, registry, W&B.

`make_recorder(plan, cfg, environment, rank)` returns `Rank0Recorder` on global rank 0 and `NullRecorder` elsewhere, so the engine
calls the same methods on every rank and never branches on rank for side effects. No method here runs a collective:
anything all ranks must agree on is computed before the call.

Rank 0's writes (store, W&B, the artifact upload) run on one writer thread behind a bounded queue, never on the
training thread: peers wait in collectives while rank 0 trains, so a store locked by another process or a slow W&B
must not hold rank 0 up. The writer retries a failed write for up to WRITE_RETRY_S (past SQLite's busy timeout: a
lock held for minutes is outlasted); a write that still fails is a warning and a `recorder_write_failed` event, and is
dropped. `finish` waits for the queue to drain, after the peers have left, then for W&B's finish: WRITE_RETRY_S + 60 s
at most each for a completed run, ENDING_WAIT_S each for one that failed, was killed or preempted (it must leave
inside the launcher's grace); W&B's own end-of-run upload (also at exit) is bounded by ENDING_WAIT_S.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from engine.schema import DialsumConfig
from engine.wandb_run import WandbRun

log = logging.getLogger(__name__)


class Recorder(Protocol):
    def start(self) -> None: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def flush(self) -> None: ...
    def log_event(self, step: int, kind: str, data: dict[str, Any]) -> None: ...
    def register_model(self, model_dir: Path, metrics: dict[str, float], metadata: dict[str, Any]) -> int | None: ...
    def finish(self, status: str, *, summary: dict[str, float] | None = None, error: str = "",
               failing_rank: int | None = None, exit_code: int | None = None) -> None: ...


class NullRecorder:
    """What ranks other than 0 get: every call is a no-op, so they never open the store or W&B."""

    def start(self) -> None: ...
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def flush(self) -> None: ...
    def log_event(self, step: int, kind: str, data: dict[str, Any]) -> None: ...
    def register_model(self, model_dir: Path, metrics: dict[str, float], metadata: dict[str, Any]) -> int | None:
        return None
    def finish(self, status: str, *, summary: dict[str, float] | None = None, error: str = "",
               failing_rank: int | None = None, exit_code: int | None = None) -> None: ...


WRITE_RETRY_S = float(os.environ.get("DIALSUM_WRITE_RETRY_S", "900"))  # per write, then it is dropped with a warning
# A failed, killed or preempted run exits inside the launcher's shutdown grace: its closing writes wait this long at
# most (the run then reads as crashed if they never land); a completed run waits for its writes (WRITE_RETRY_S + 60).
ENDING_WAIT_S = 30.0
MAX_PENDING = 10_000  # queued writes; beyond this a metrics record is dropped (with a warning) rather than block training


class Writer:
    """One thread that performs queued side effects in order; `submit` never blocks the caller."""

    def __init__(self):
        self._queue: queue.Queue = queue.Queue(maxsize=MAX_PENDING)
        self.failures: list[str] = []
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="dialsum-recorder", daemon=True)
        self._thread.start()

    def submit(self, what: str, fn: Callable, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            self._queue.put_nowait((what, fn, args, kwargs, future))
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("recorder: %d writes pending, dropping %s (the store or W&B is not keeping up)",
                            MAX_PENDING, what)
            future.set_result(None)
        return future

    def _run(self) -> None:
        while True:
            what, fn, args, kwargs, future = self._queue.get()
            if fn is None:  # the drain marker
                future.set_result(None)
                continue
            future.set_result(self._call(what, fn, args, kwargs))

    def _call(self, what: str, fn: Callable, args, kwargs):
        deadline, delay, warned = time.monotonic() + WRITE_RETRY_S, 1.0, False
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if time.monotonic() + delay > deadline:
                    log.warning("recorder: %s failed for %.0f s, dropped: %s", what, WRITE_RETRY_S, exc)
                    self.failures.append(f"{what}: {type(exc).__name__}: {exc}")
                    return None
                if not warned:
                    log.warning("recorder: %s failed, retrying in the background: %s", what, exc)
                    warned = True
                time.sleep(delay)
                delay = min(2 * delay, 30.0)

    def drain(self, timeout: float) -> bool:
        """Wait until everything submitted before now is done; False when `timeout` passed first."""
        marker: Future = Future()
        try:
            self._queue.put(("drain", None, (), {}, marker), timeout=timeout)
            marker.result(timeout=timeout)
            return True
        except Exception:
            return False


class Rank0Recorder:
    """Tracker + registry + W&B for one run, owned by global rank 0 only."""

    def __init__(self, plan, cfg: DialsumConfig, environment: dict[str, Any]):
        from engine.store import Registry, Tracker, open_store, store_uri

        self.plan = plan
        self.cfg = cfg
        self.run_id = plan.run_id
        self.environment = environment
        store = open_store(store_uri(cfg))
        self.tracker = Tracker(store)
        self.registry = Registry(store)
        self.wandb = WandbRun(cfg, run_id=plan.run_id, upload_wait_s=ENDING_WAIT_S)
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._pending_step: int | None = None
        self._pending: dict[str, float] = {}
        self._last_step = 0
        self.writer = Writer()

    def start(self) -> None:
        self.writer.submit("run start", self._start_run)
        self.wandb.start(config=self.plan.config, plan=_plan_summary(self.plan),
                         on_started=lambda wandb_id: self.writer.submit("W&B run id", self.tracker.set_wandb_id,
                                                                        self.run_id, wandb_id))
        self._heartbeat_thread = threading.Thread(target=self._beat, name="dialsum-heartbeat", daemon=True)
        self._heartbeat_thread.start()

    def _start_run(self) -> None:
        if not self.tracker.exists(self.run_id):  # a resumed job keeps its run id and its history
            create_run(self.tracker, self.plan, self.cfg, self.environment)
        self.tracker.start(self.run_id)

    def _beat(self) -> None:
        while not self._stop_heartbeat.wait(self.cfg.tracking.heartbeat_seconds):
            try:
                self.tracker.heartbeat(self.run_id)
            except Exception as exc:  # a missed heartbeat must not kill training
                log.warning("heartbeat failed: %s", exc)

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Metrics of one step are merged and written together (one transaction, one W&B record) at `flush()`:
        several callbacks log at each train log. A different step, an event, a registration or finish flushes first."""
        if self._pending_step is not None and step != self._pending_step:
            self.flush()
        self._pending_step = self._last_step = step
        self._pending.update(metrics)

    def flush(self) -> None:
        """Hand the merged record to the writer (RecorderFlush after each log, and at every checkpoint)."""
        if self._pending:
            step, metrics = self._pending_step, self._pending
            self.writer.submit(f"metrics of step {step}", self._write_metrics, step, metrics)
        self._pending_step, self._pending = None, {}

    def _write_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log_metrics(self.run_id, step, metrics)
        self.wandb.log(step, metrics)

    def log_event(self, step: int, kind: str, data: dict[str, Any]) -> None:
        self.flush()
        self.writer.submit(f"event {kind}", self._write_event, step, kind, data)

    def _write_event(self, step: int, kind: str, data: dict[str, Any]) -> None:
        self.tracker.log_event(self.run_id, step, kind, data)
        self.wandb.log(step, {f"events/{kind}": 1})

    def register_model(self, model_dir: Path, metrics: dict[str, float], metadata: dict[str, Any]) -> int | None:
        """The new version number (None when the registry stayed unreachable): waits for the writer, so call it
        where no peer waits on rank 0 (after the final barrier)."""
        self.flush()
        return self.writer.submit("model registration", self._register, model_dir, metrics, metadata).result()

    def _register(self, model_dir: Path, metrics: dict[str, float], metadata: dict[str, Any]) -> int:
        from engine.store import extract_checkpoint_metadata

        cfg = self.cfg
        name = cfg.registry_name()
        meta = {**extract_checkpoint_metadata(model_dir), **metadata}
        version = self.registry.register(
            name, run_id=self.run_id, checkpoint_dir=str(model_dir), metrics=metrics,
            metric=cfg.training.metric_for_best_model, greater_is_better=cfg.training.greater_is_better,
            metadata=meta, tags=list(cfg.experiment.tags),
        )
        self.wandb.log_model_artifact(name, version, model_dir, metrics)  # its upload wait() is on this thread too
        return version

    def finish(self, status: str, *, summary: dict[str, float] | None = None, error: str = "",
               failing_rank: int | None = None, exit_code: int | None = None) -> None:
        """Queue the run's end, then wait (bounded) until every queued write landed or was given up."""
        self._stop_heartbeat.set()
        self.flush()
        self.writer.submit("finish", self._write_finish, status, summary, error, failing_rank, exit_code)
        wait_s = WRITE_RETRY_S + 60 if status == "completed" else ENDING_WAIT_S
        if not self.writer.drain(timeout=wait_s):
            log.warning("recorder: writes still pending after %.0f s; exiting without them", wait_s)
        self.wandb.finish(exit_code=0 if status == "completed" else exit_code or 1, timeout=wait_s)

    def _write_finish(self, status, summary, error, failing_rank, exit_code) -> None:
        w = self.writer
        if w.failures or w.dropped:  # the run says what it is missing
            self.tracker.log_event(self.run_id, self._last_step, "recorder_write_failed",
                                   {"failed": w.failures[:20], "dropped": w.dropped})
        if summary:
            self.tracker.set_summary(self.run_id, summary)
            self.wandb.summary(summary)
        self.tracker.finish(self.run_id, status, error=error, failing_rank=failing_rank, exit_code=exit_code)


def _plan_summary(plan) -> dict[str, Any]:
    """The plan as recorded on the run, without the config (stored on its own)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(plan).items() if k not in ("config", "config_sources")}


def create_run(tracker, plan, cfg: DialsumConfig, environment: dict[str, Any]) -> None:
    """Record the plan's run as `created`: rank 0 does as it starts, the launcher when no rank got that far."""
    tracker.create_run(
        plan.run_id, name=cfg.experiment.name, group=cfg.experiment.group, config=plan.config,
        plan=_plan_summary(plan), environment=environment, tags=list(cfg.experiment.tags),
        notes=cfg.experiment.notes, heartbeat_seconds=cfg.tracking.heartbeat_seconds,
    )


def make_recorder(plan, cfg: DialsumConfig, environment: dict[str, Any], rank: int) -> Recorder:
    return Rank0Recorder(plan, cfg, environment) if rank == 0 else NullRecorder()
