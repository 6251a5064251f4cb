"""An example custom callback, loaded from config by `configs/callbacks_example.yaml`."""
from __future__ import annotations

from typing import TYPE_CHECKING

from transformers import TrainerCallback

if TYPE_CHECKING:
    from engine.recorder import Recorder


class LossEMA(TrainerCallback):
    """Logs an exponential moving average of the train loss as `custom/loss_ema`; optionally stops training once the
    average falls below `stop_below`. The logged loss is the same on every rank, so every rank stops at the same step."""

    def __init__(self, recorder: "Recorder | None" = None, alpha: float = 0.1, stop_below: float | None = None):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.recorder = recorder
        self.alpha = alpha
        self.stop_below = stop_below
        self.ema: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss = logs["loss"]
        self.ema = loss if self.ema is None else self.alpha * loss + (1.0 - self.alpha) * self.ema
        if self.recorder is not None:
            self.recorder.log_metrics(state.global_step, {"custom/loss_ema": self.ema})
        if self.stop_below is not None and self.ema < self.stop_below:
            control.should_training_stop = True
