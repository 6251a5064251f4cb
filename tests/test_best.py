"""The one definition of best (engine/best.py) and the tracker that applies it to a run's evaluations: improvement,
early stopping with its threshold, predictions written on improvement by rank 0 alone, the state a checkpoint keeps."""
from __future__ import annotations

import csv
import math

from transformers import TrainerControl, TrainerState

from engine.best import is_better
from engine.callbacks.best import BestTracker


def test_is_better_follows_the_goal_and_never_takes_nan():
    assert is_better(0.3, 0.2, True) and not is_better(0.2, 0.3, True)
    assert is_better(1.5, 2.0, False) and not is_better(2.0, 1.5, False)
    assert is_better(0.0, None, True) and not is_better(math.nan, None, True) and not is_better(None, 0.1, True)
    assert not is_better(0.2, 0.2, True)


def evaluate(tracker: BestTracker, step: int, value: float, summaries: list[str], rank0: bool = True):
    state, control = TrainerState(), TrainerControl()
    state.global_step, state.is_world_process_zero = step, rank0
    summaries_now[:] = summaries
    tracker.on_evaluate(None, state, control, metrics={"eval_rouge_combined_f1": value, "eval_loss": 1.0 / step})
    return control.should_training_stop


summaries_now: list[str] = []


def test_best_step_predictions_and_early_stopping(tmp_path):
    predictions = tmp_path / "predictions.csv"
    tracker = BestTracker("rouge_combined_f1", True, predictions, ["a", "b"], latest_summaries=lambda: summaries_now,
                          patience=2, threshold=0.01)
    assert not evaluate(tracker, 10, 0.10, ["x1", "y1"])
    assert not evaluate(tracker, 20, 0.20, ["x2", "y2"])
    assert not evaluate(tracker, 30, 0.2005, ["x3", "y3"])  # better, by less than the threshold: patience counts
    assert (tracker.best_step, tracker.best_value, tracker.without_improvement) == (30, 0.2005, 1)
    with open(predictions, newline="") as fh:
        assert [r["summary"] for r in csv.DictReader(fh)] == ["x3", "y3"]  # the best evaluation's summaries
    assert evaluate(tracker, 40, 0.19, ["x4", "y4"])  # worse: the second evaluation without improvement stops
    assert tracker.best_step == 30 and tracker.last_step == 40 and tracker.last_metrics["rouge_combined_f1"] == 0.19
    with open(predictions, newline="") as fh:
        assert [r["summary"] for r in csv.DictReader(fh)] == ["x3", "y3"]


def test_only_rank_0_writes_and_a_resume_continues_from_the_saved_state(tmp_path):
    tracker = BestTracker("loss", False, tmp_path / "p.csv", ["a"], latest_summaries=lambda: summaries_now, patience=3)
    # evaluate() logs eval_loss = 1 / step: lower is better, so a later step is better
    evaluate(tracker, 8, 0.5, ["s"], rank0=False)
    assert tracker.best_step == 8 and not (tmp_path / "p.csv").exists()
    saved = tracker.state()  # what the checkpoint marker holds
    resumed = BestTracker("rouge_combined_f1", True, tmp_path / "p.csv", ["a"], latest_summaries=lambda: summaries_now,
                          patience=3)
    resumed.restore({**saved, "metrics": {"rouge_combined_f1": 0.5}})
    evaluate(resumed, 16, 0.4, ["t"])  # worse than step 8's: step 8 stays the best after the resume
    assert (resumed.best_step, resumed.best_value, resumed.without_improvement) == (8, 0.5, 1)
    assert not (tmp_path / "p.csv").exists()
