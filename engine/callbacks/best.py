"""The best evaluation of a run so far, on every rank (engine/best.py holds the definition and says what it decides)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import TrainerCallback

from engine.best import is_better, strip_eval_prefix, write_predictions_csv


class BestTracker(TrainerCallback):
    """Tracks `metric` towards its goal over a run's evaluations (see the module doc). `latest_summaries` returns the
    summaries of the evaluation being reported (dataset order), written to `predictions_path` when it is the best."""

    def __init__(self, metric: str, greater_is_better: bool, predictions_path: Path, fnames: list[str], *,
                 latest_summaries: Callable[[], list[str]], patience: int | None = None, threshold: float = 0.0):
        self.metric, self.greater_is_better = metric, greater_is_better
        self.predictions_path, self.fnames, self.latest_summaries = predictions_path, fnames, latest_summaries
        self.patience, self.threshold = patience, threshold
        self.best_metrics: dict[str, float] = {}
        self.best_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.last_step: int | None = None
        self.without_improvement = 0  # evaluations since the last improvement above the threshold

    @property
    def best_value(self) -> float | None:
        return self.best_metrics.get(self.metric)

    def state(self) -> dict:
        """What a checkpoint's marker keeps (engine/checkpointing.py)."""
        return {"metrics": self.best_metrics, "step": self.best_step, "without_improvement": self.without_improvement}

    def restore(self, state: dict | None) -> None:
        """A resumed run's best so far, from the marker of the checkpoint it resumes from."""
        if state:
            self.best_metrics, self.best_step = dict(state["metrics"]), state["step"]
            self.without_improvement = state["without_improvement"]

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = strip_eval_prefix(metrics or {})
        self.last_metrics, self.last_step = metrics, state.global_step
        value, best = metrics.get(self.metric), self.best_value
        if is_better(value, best, self.greater_is_better):
            self.without_improvement = 0 if best is None or abs(value - best) > self.threshold else \
                self.without_improvement + 1
            self.best_metrics, self.best_step = dict(metrics), state.global_step
            summaries = self.latest_summaries()
            if state.is_world_process_zero and len(summaries) == len(self.fnames):
                write_predictions_csv(self.predictions_path, self.fnames, summaries)
        else:
            self.without_improvement += 1
        if self.patience and self.without_improvement >= self.patience:
            control.should_training_stop = True
        return control
