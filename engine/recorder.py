"""The one interface through which the engine causes rank-0 side effects: tracker, registry, W&B.

`make_recorder(plan, rank)` returns `Rank0Recorder` on global rank 0 and `NullRecorder` elsewhere, so the engine
calls the same methods on every rank and never branches on rank for side effects. No method here runs a collective:
anything all ranks must agree on is computed before the call.
"""
from __future__ import annotations

import logging
import os
import threading
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
        self.wandb = WandbRun(cfg, run_id=plan.run_id)
        self._stop_heartbeat = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._pending_step: int | None = None
        self._pending: dict[str, float] = {}

    def start(self) -> None:
        cfg = self.cfg
        if self.tracker.exists(self.run_id):  # a resumed job keeps its run id and its history
            self.tracker.start(self.run_id)
        else:
            self.tracker.create_run(
                self.run_id, name=cfg.experiment.name, group=cfg.experiment.group, config=self.plan.config,
                plan=_plan_summary(self.plan), environment=self.environment, tags=list(cfg.experiment.tags),
                notes=cfg.experiment.notes, heartbeat_seconds=cfg.tracking.heartbeat_seconds,
            )
            self.tracker.start(self.run_id)
        self.wandb.start(config=self.plan.config, plan=_plan_summary(self.plan),
                         on_started=lambda wandb_id: self.tracker.set_wandb_id(self.run_id, wandb_id))
        self._heartbeat_thread = threading.Thread(target=self._beat, name="dialsum-heartbeat", daemon=True)
        self._heartbeat_thread.start()

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
        self._pending_step = step
        self._pending.update(metrics)

    def flush(self) -> None:
        if self._pending:
            self.tracker.log_metrics(self.run_id, self._pending_step, self._pending)
            self.wandb.log(self._pending_step, self._pending)
        self._pending_step, self._pending = None, {}

    def log_event(self, step: int, kind: str, data: dict[str, Any]) -> None:
        self.flush()
        self.tracker.log_event(self.run_id, step, kind, data)
        self.wandb.log(step, {f"events/{kind}": 1})

    def register_model(self, model_dir: Path, metrics: dict[str, float], metadata: dict[str, Any]) -> int:
        from engine.store import extract_checkpoint_metadata

        self.flush()
        cfg = self.cfg
        name = cfg.model.registry_name or cfg.experiment.name
        meta = {**extract_checkpoint_metadata(model_dir), **metadata}
        version = self.registry.register(
            name, run_id=self.run_id, checkpoint_dir=str(model_dir), metrics=metrics,
            metric=cfg.training.metric_for_best_model, greater_is_better=cfg.training.greater_is_better,
            metadata=meta, tags=list(cfg.experiment.tags),
        )
        self.wandb.log_model_artifact(name, version, model_dir, metrics)
        return version

    def finish(self, status: str, *, summary: dict[str, float] | None = None, error: str = "",
               failing_rank: int | None = None, exit_code: int | None = None) -> None:
        self._stop_heartbeat.set()
        self.flush()
        if summary:
            self.tracker.set_summary(self.run_id, summary)
            self.wandb.summary(summary)
        self.tracker.finish(self.run_id, status, error=error, failing_rank=failing_rank, exit_code=exit_code)
        self.wandb.finish(exit_code=0 if status == "completed" else exit_code or 1)


def _plan_summary(plan) -> dict[str, Any]:
    """The plan as recorded on the run, without the config (stored on its own)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(plan).items() if k not in ("config", "config_sources")}


def make_recorder(plan, cfg: DialsumConfig, environment: dict[str, Any]) -> Recorder:
    rank = int(os.environ.get("RANK", "0"))
    return Rank0Recorder(plan, cfg, environment) if rank == 0 else NullRecorder()
