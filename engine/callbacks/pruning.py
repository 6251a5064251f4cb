"""In-training pruning for local sweeps: report the eval metric to Optuna and stop the run when the pruner says so.

The agent names the trial on the `dialsum launch` it starts (`--sweep-trial`, JSON of `TrialLink`); the launcher puts it
in the Plan (`plan.sweep_trial`), which is how the ranks learn it.
Rank 0 alone talks to the study (report + should_prune); the decision reaches every rank through one collective that
all ranks call in `on_evaluate` (which the Trainer runs on every rank), so no rank waits on a rank-0-only block.
A pruned trial finishes as a normal, shorter run; rank 0 leaves the user attr `pruned_at` for the agent to see.

The study calls run on a writer thread (the recorder's), not the training thread: an evaluation waits at most
PRUNE_WAIT_S for the answer, so a busy or unreachable study store delays training by that much at worst; an answer
that comes later is taken at the next evaluation, and reports are retried in the background until they land.
"""
from __future__ import annotations

import logging
import math

import torch
from transformers import TrainerCallback

from engine.distributed import is_distributed
from engine.sweep_trial import PRUNED_ATTR, TrialLink, make_pruner, open_storage

log = logging.getLogger(__name__)

PRUNE_WAIT_S = 10.0
class SweepPruningCallback(TrainerCallback):
    def __init__(self, link: TrialLink):
        self.link = link
        self.evaluations = 0
        self._trial = None
        self._writer = None  # rank 0's study calls, off the training thread
        self._asked: list = []  # answers not yet taken

    def _optuna_trial(self):
        """Rank 0 only: the running trial, loaded with the sweep's pruner (lazily, once)."""
        if self._trial is None:
            import optuna

            study = optuna.load_study(study_name=self.link.study, storage=open_storage(self.link.storage),
                                      sampler=optuna.samplers.RandomSampler(), pruner=make_pruner(self.link.hyperband))
            self._trial = optuna.trial.Trial(study, self.link.trial_id)
        return self._trial

    def _ask(self, metrics: dict, evaluation: int) -> bool:
        """Rank 0, on the writer thread: report this evaluation (step = evaluation count, W&B's hyperband 'iteration')
        and ask the pruner. Raises when the study is unreachable (the writer retries, then gives up with a warning)."""
        trial = self._optuna_trial()
        value = metrics.get(f"eval_{self.link.metric}")
        if isinstance(value, (int, float)) and math.isfinite(value):
            trial.report(float(value), evaluation)
        prune = bool(trial.should_prune())
        if prune:
            trial.set_user_attr(PRUNED_ATTR, evaluation)
        return prune

    def _decide(self, metrics: dict) -> bool:
        """Rank 0: ask about this evaluation; prune when any answer so far (this one within PRUNE_WAIT_S) says so."""
        from concurrent.futures import wait

        from engine.recorder import Writer

        if self._writer is None:
            self._writer = Writer()
        self._asked.append(self._writer.submit(f"sweep report {self.evaluations}", self._ask, dict(metrics),
                                               self.evaluations))
        wait(self._asked[-1:], timeout=PRUNE_WAIT_S)
        answered = [f for f in self._asked if f.done()]
        self._asked = [f for f in self._asked if not f.done()]
        if not answered:
            log.warning("sweep pruning: the study has not answered in %.0f s; training goes on", PRUNE_WAIT_S)
        return any(f.result() for f in answered)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.evaluations += 1
        decision = [self._decide(metrics or {}) if state.is_world_process_zero else None]
        if is_distributed():
            torch.distributed.broadcast_object_list(decision, src=0)  # every rank calls this, every evaluation
        if decision[0]:
            if state.is_world_process_zero:
                log.info("sweep trial %d pruned at evaluation %d", self.link.number, self.evaluations)
            control.should_training_stop = True
        return control


def sweep_callbacks(trial: dict | None) -> list[TrainerCallback]:
    """The pruning callback when this run is a local sweep trial (`plan.sweep_trial`), else nothing."""
    return [SweepPruningCallback(TrialLink(**trial))] if trial else []
