"""In-training pruning for local sweeps: report the eval metric to Optuna and stop the run when the pruner says so.

The agent passes the trial through env `DIALSUM_SWEEP_TRIAL` (JSON, see `TrialLink`); ranks inherit it from the launch.
Rank 0 alone talks to the study (report + should_prune); the decision reaches every rank through one collective that
all ranks call in `on_evaluate` (which the Trainer runs on every rank), so no rank waits on a rank-0-only block.
A pruned trial finishes as a normal, shorter run; rank 0 leaves the user attr `pruned_at` for the agent to see.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

log = logging.getLogger(__name__)

ENV_VAR = "DIALSUM_SWEEP_TRIAL"
PRUNED_ATTR = "pruned_at"


@dataclass
class TrialLink:
    storage: str          # what `optuna_backend.open_storage` accepts: an RDB URL or a journal file path
    study: str
    trial_id: int         # Optuna's storage id (`Trial._trial_id`), what `optuna.trial.Trial(study, id)` takes
    number: int
    metric: str           # bare metric name; the Trainer reports it as `eval_<metric>`
    direction: str        # "maximize" | "minimize"
    hyperband: dict | None = None  # HyperbandPruner kwargs, or None for no pruning

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, text: str) -> TrialLink:
        return cls(**json.loads(text))


def is_url(storage: str) -> bool:
    return "://" in storage


def open_storage(storage: str):
    """An RDB URL -> optuna RDBStorage; anything else is a journal file path (the sweep agents open it the same way)."""
    import optuna

    if is_url(storage):
        return optuna.storages.RDBStorage(storage)
    from optuna.storages.journal import JournalFileBackend

    Path(storage).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(storage))


def make_pruner(hyperband: dict | None):
    import optuna

    return optuna.pruners.HyperbandPruner(**hyperband) if hyperband else optuna.pruners.NopPruner()


class SweepPruningCallback(TrainerCallback):
    def __init__(self, link: TrialLink):
        self.link = link
        self.evaluations = 0
        self._trial = None

    def _optuna_trial(self):
        """Rank 0 only: the running trial, loaded with the sweep's pruner (lazily, once)."""
        if self._trial is None:
            import optuna

            study = optuna.load_study(study_name=self.link.study, storage=open_storage(self.link.storage),
                                      sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self.link.hyperband))
            self._trial = optuna.trial.Trial(study, self.link.trial_id)
        return self._trial

    def _decide(self, metrics: dict) -> bool:
        """Rank 0: report this evaluation (step = evaluation count, W&B's hyperband 'iteration') and ask the pruner."""
        try:
            trial = self._optuna_trial()
            value = metrics.get(f"eval_{self.link.metric}")
            if isinstance(value, (int, float)) and math.isfinite(value):
                trial.report(float(value), self.evaluations)
            prune = bool(trial.should_prune())
            if prune:
                trial.set_user_attr(PRUNED_ATTR, self.evaluations)
            return prune
        except Exception as exc:  # the sweep store being unreachable must not kill (or hang) training
            log.warning("sweep pruning: cannot reach the study, not pruning: %s", exc)
            return False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations += 1
        decision = [self._decide(metrics or {}) if state.is_world_process_zero else None]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(decision, src=0)  # every rank calls this, every evaluation
        if decision[0]:
            if state.is_world_process_zero:
                log.info("sweep trial %d pruned at evaluation %d", self.link.number, self.evaluations)
            control.should_training_stop = True
        return control


def sweep_callbacks_from_env() -> list[TrainerCallback]:
    """The pruning callback when this run is a local sweep trial, else nothing."""
    text = os.environ.get(ENV_VAR)
    return [SweepPruningCallback(TrialLink.from_env(text))] if text else []
