"""W&B for one run, on rank 0 only: offline by default, one run id per job (kept across resumes), never fatal.

Every call is guarded: no network, a bad key or a wandb bug is logged once and W&B is switched off for the rest of the
run, so training never fails because of it.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from engine.redact import redact, redact_text
from engine.schema import DialsumConfig

log = logging.getLogger(__name__)


class WandbRun:
    """`upload_wait_s`: what W&B's own end of the run (run.finish, and its teardown at exit) may spend uploading before
    it leaves the rest in the run's local folder for `wandb sync` (W&B's `finish_timeout`; it waits forever by
    default, and a failing rank 0 must leave inside the launcher's grace)."""

    def __init__(self, cfg: DialsumConfig, run_id: str, upload_wait_s: float):
        self.cfg = cfg
        self.run_id = run_id
        self.upload_wait_s = upload_wait_s
        self.run = None
        self.owned = True  # False: the run was started by the caller (a sweep function), who finishes it
        self.enabled = cfg.tracking.wandb_mode != "disabled"
        self._starting: threading.Thread | None = None

    def _guard(self, what: str, fn, *args, **kwargs):
        if not self.enabled:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # W&B must never fail training
            log.warning("W&B %s failed, continuing without W&B: %s", what, exc)
            self.enabled = False
            return None

    def start(self, config: dict, plan: dict, on_started: Callable[[str], None] | None = None) -> None:
        """wandb.init in a background thread: it starts a service process and waits on it (seconds; 8 s measured on a
        busy 2-core machine), which then overlaps the Trainer's set-up. Every later call waits for it (`wait`);
        `on_started(run id)` runs once the run exists."""
        def _init():
            import wandb

            if wandb.run is not None and wandb.run.id == self.run_id:
                # create_trainer(sweep_mode=True) inside the caller's run: log into it, leave finishing to the caller
                self.run, self.owned = wandb.run, False
                self.run.config.update(redact({**config, "plan": plan}), allow_val_change=True)
            else:
                self.run = self._init_own_run(wandb, config, plan)
            if on_started is not None:
                on_started(self.run.id)

        if self.enabled:
            self._starting = threading.Thread(target=self._guard, args=("init", _init), name="dialsum-wandb-init",
                                              daemon=True)
            self._starting.start()

    def _init_own_run(self, wandb, config: dict, plan: dict):
        t = self.cfg.tracking
        root = Path(self.cfg.experiment.output_root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=t.wandb_project, entity=t.wandb_entity or None, name=self.cfg.experiment.name,
            group=self.cfg.experiment.group or None, tags=list(self.cfg.experiment.tags) or None,
            notes=redact_text(self.cfg.experiment.notes) or None, id=self.run_id, resume="allow", mode=t.wandb_mode,
            dir=str(root), config=redact({**config, "plan": plan}),
            settings=wandb.Settings(silent=True, finish_timeout=self.upload_wait_s),
        )

    def wait(self) -> str | None:
        """The W&B run id once wandb.init has returned; None when W&B is off or failed."""
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        return self.run.id if self.run is not None else None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.wait():
            self._guard("log", self.run.log, dict(metrics), step=step)

    def summary(self, metrics: dict[str, float]) -> None:
        if self.wait():
            self._guard("summary", self.run.summary.update, dict(metrics))

    def log_model_artifact(self, name: str, version: int, model_dir: Path, metrics: dict[str, float]) -> None:
        def _log():
            import wandb

            artifact = wandb.Artifact(name=name, type="model", metadata={"registry_version": version, **metrics})
            artifact.add_dir(str(model_dir))
            logged = self.run.log_artifact(artifact, aliases=[f"v{version}", "latest"])
            if self.cfg.tracking.wandb_mode == "online":  # offline artifacts cannot be linked until synced
                logged.wait()
                self.run.link_artifact(logged, target_path=f"wandb-registry-model/{name}")

        if self.wait():
            self._guard("artifact", _log)

    def finish(self, exit_code: int, timeout: float) -> None:
        """End the run (a caller's run is left open), returning within `timeout` s: wandb.init may still be retrying an
        unreachable server (up to its init_timeout, 90 s by default) and run.finish uploading. Whatever did not land
        stays in the run's local W&B folder, and a warning says how to upload it."""
        def _finish():
            if self.wait() and self.owned:
                self._guard("finish", self.run.finish, exit_code=exit_code)
            self.run = None

        closing = threading.Thread(target=_finish, name="dialsum-wandb-finish", daemon=True)
        closing.start()
        closing.join(timeout)
        if closing.is_alive():
            local = Path(self.cfg.experiment.output_root).resolve() / "wandb" / f"*run-*-{self.run_id}"
            log.warning("W&B did not finish within %.0f s (server unreachable?): the run's data is in %s; upload it "
                        "later with `wandb sync %s`", timeout, local, local)
