"""Best-metric tracking: which evaluation was best, its metrics and step, and its predictions on disk.

Predictions are written when an evaluation becomes the best, so `predictions.csv` always matches the best checkpoint
without reloading weights. Every rank runs the comparison (same numbers everywhere); only the world-process-zero writes.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from transformers import TrainerCallback

from engine.atomic import atomic_write_text

EVAL_PREFIX = "eval_"


def strip_eval_prefix(metrics: dict[str, float]) -> dict[str, float]:
    return {k[len(EVAL_PREFIX):] if k.startswith(EVAL_PREFIX) else k: v for k, v in metrics.items()}


def write_predictions_csv(path: Path, fnames: list[str], summaries: list[str]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["fname", "summary"])
    writer.writerows(zip(fnames, summaries))
    return atomic_write_text(path, buf.getvalue())


class BestTracker(TrainerCallback):
    """Tracks `metric` with a goal; on improvement writes the latest decoded predictions to `predictions_path`."""

    def __init__(self, metric: str, greater_is_better: bool, predictions_path: Path, fnames: list[str]):
        self.metric = metric
        self.greater_is_better = greater_is_better
        self.predictions_path = predictions_path
        self.fnames = fnames
        self.latest_predictions: list[str] = []  # set by compute_metrics before on_evaluate fires
        self.best_metrics: dict[str, float] = {}
        self.best_step: int | None = None
        self.last_metrics: dict[str, float] = {}

    def improves(self, value: float) -> bool:
        if value is None or math.isnan(value):
            return False
        if not self.best_metrics:
            return True
        best = self.best_metrics[self.metric]
        return value > best if self.greater_is_better else value < best

    def on_train_begin(self, args, state, control, **kwargs):
        """On resume, the best so far is the Trainer's (restored from trainer_state.json): its metrics are that
        evaluation's log entry. Without this the first evaluation after a resume would count as best and overwrite
        predictions.csv and the registered metrics, while the export still took the Trainer's best checkpoint."""
        if self.best_metrics or not state.best_model_checkpoint:
            return
        step = int(Path(state.best_model_checkpoint).name.rsplit("-", 1)[-1])
        for entry in state.log_history:
            if entry.get("step") == step and f"{EVAL_PREFIX}{self.metric}" in entry:
                self.best_metrics = strip_eval_prefix({k: v for k, v in entry.items() if k != "step"})
                self.best_step = step

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = strip_eval_prefix(metrics or {})
        self.last_metrics = metrics
        if self.improves(metrics.get(self.metric)):
            self.best_metrics = dict(metrics)
            self.best_step = state.global_step
            if state.is_world_process_zero and len(self.latest_predictions) == len(self.fnames):
                write_predictions_csv(self.predictions_path, self.fnames, self.latest_predictions)
