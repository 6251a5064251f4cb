"""The one definition of "best": which evaluation of a run is best, and which registered version of a model is.

`is_better` compares two values of `training.metric_for_best_model`; `BestTracker` (engine/callbacks/best.py) applies
it to a run's evaluations on every rank (same numbers everywhere): the best metrics and step (what the run's summary and its registry version
carry), the checkpoint the model is exported from (`checkpoint-<best step>`, kept by rotation), `predictions.csv`
(written when an evaluation becomes the best, so it always matches the exported model without reloading weights),
and early stopping (`training.early_stopping_patience` evaluations without an improvement above the threshold). A
checkpoint's marker carries the tracker's state, so a resumed run continues with the same best. The registry's
`best` alias moves by the same comparison (engine/store/registry.py). transformers' own best-model tracking is off.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from engine.atomic import atomic_write_text

EVAL_PREFIX = "eval_"


def is_better(value: float | None, than: float | None, greater_is_better: bool) -> bool:
    """Whether `value` beats `than` (None: nothing yet); a missing or NaN value never does."""
    if value is None or math.isnan(value):
        return False
    if than is None:
        return True
    return value > than if greater_is_better else value < than


def strip_eval_prefix(metrics: dict[str, float]) -> dict[str, float]:
    return {k[len(EVAL_PREFIX):] if k.startswith(EVAL_PREFIX) else k: v for k, v in metrics.items()}


def write_predictions_csv(path: Path, fnames: list[str], summaries: list[str]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["fname", "summary"])
    writer.writerows(zip(fnames, summaries))
    return atomic_write_text(path, buf.getvalue())
