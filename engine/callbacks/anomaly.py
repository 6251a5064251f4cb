"""Anomaly detector: NaN/Inf loss, loss spikes, grad-norm explosions, throughput drops, steadily growing memory.

Every rank runs the checks at every train log. Loss and grad norm are the Trainer's logged values, already reduced
across ranks, so every rank reaches the same decision without communicating. Throughput and memory are per rank: when a
policy may stop on them in a multi-rank run, the lead passes `all_reduce_flag` (True on all ranks if any rank passed
True), called by every rank at every train log. Events go to the recorder (a null one off rank 0) as
`anomaly_<kind>` with the step and the values; a stop also records `training_stopped` and sets `stopped_reason`.

The Trainer's default `logging_nan_inf_filter=True` replaces NaN step losses before they are logged; the grad norm
stays NaN, so a non-finite grad norm counts as `nan_loss` too (set the filter off to see the loss itself).
"""
from __future__ import annotations

import math
import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from transformers import TrainerCallback

from engine.callbacks.memory_usage import current_memory_bytes
from engine.callbacks.profiler import StepClock, samples_per_step

if TYPE_CHECKING:
    from engine.recorder import Recorder
    from engine.schema import MonitoringConfig

ANOMALY_KINDS = ("nan_loss", "loss_spike", "grad_norm_explosion", "throughput_drop", "memory_growth")
RANK_LOCAL_KINDS = frozenset({"throughput_drop", "memory_growth"})  # values differ between ranks
MODEL_STATE_KINDS = frozenset({"nan_loss", "loss_spike", "grad_norm_explosion"})  # weights are suspect: do not save
ACTIONS = ("warn", "stop", "off")
DEFAULT_POLICY = {"nan_loss": "stop", "loss_spike": "warn", "grad_norm_explosion": "warn",
                  "throughput_drop": "warn", "memory_growth": "warn"}
EVENT_PREFIX = "anomaly_"
MIN_HISTORY = 8  # values needed before a median means anything (capped at the window)


@dataclass
class Anomaly:
    kind: str
    step: int
    message: str
    values: dict[str, float | str] = field(default_factory=dict)  # non-finite values as text: JSON has no NaN


def robust_z(value: float, history: list[float]) -> float:
    """(value - median) / (1.4826 · MAD): a z-score that a few earlier outliers do not inflate."""
    median = statistics.median(history)
    mad = statistics.median(abs(x - median) for x in history)
    if mad == 0:
        return 0.0 if value == median else math.copysign(math.inf, value - median)
    return (value - median) / (1.4826 * mad)


class AnomalyDetector(TrainerCallback):
    def __init__(self, recorder: "Recorder", policy: dict[str, str] | None = None, *, window: int = 50,
                 z_threshold: float = 6.0, grad_norm_threshold: float | None = None, grad_norm_factor: float = 10.0,
                 throughput_drop: float = 0.5, memory_growth_steps: int = 20,
                 all_reduce_flag: Callable[[bool], bool] | None = None,
                 memory_fn: Callable[[], int] = current_memory_bytes, clock: Callable[[], float] = time.perf_counter):
        unknown = set(policy or {}) - set(ANOMALY_KINDS)
        if unknown:
            raise ValueError(f"anomaly policy: unknown kind(s) {sorted(unknown)}; expected {', '.join(ANOMALY_KINDS)}")
        self.policy = {**DEFAULT_POLICY, **(policy or {})}
        for kind, action in self.policy.items():
            if action not in ACTIONS:
                raise ValueError(f"anomaly policy: {kind}={action!r}; expected one of {', '.join(ACTIONS)}")
        self.recorder = recorder
        self.z_threshold = z_threshold
        self.grad_norm_threshold = grad_norm_threshold
        self.grad_norm_factor = grad_norm_factor
        self.throughput_drop = throughput_drop
        self.memory_growth_steps = memory_growth_steps
        self.all_reduce_flag = all_reduce_flag
        self.memory_fn = memory_fn
        self.clock = StepClock(clock)
        self.min_history = min(MIN_HISTORY, window)
        self.losses: deque[float] = deque(maxlen=window)
        self.grad_norms: deque[float] = deque(maxlen=window)
        self.throughputs: deque[float] = deque(maxlen=window)
        self._last_memory: int | None = None
        self._memory_rises = 0
        self._memory_rise_start = 0
        self.events: list[Anomaly] = []
        self.stopped_reason: str | None = None

    @classmethod
    def from_config(cls, cfg: "MonitoringConfig", recorder: "Recorder", *,
                    all_reduce_flag: Callable[[bool], bool] | None = None) -> "AnomalyDetector":
        return cls(recorder, {kind: getattr(cfg, f"on_{kind}") for kind in ANOMALY_KINDS},
                   window=cfg.anomaly_window, z_threshold=cfg.loss_spike_z, grad_norm_threshold=cfg.grad_norm_threshold,
                   grad_norm_factor=cfg.grad_norm_factor, throughput_drop=cfg.throughput_drop,
                   memory_growth_steps=cfg.memory_growth_logs, all_reduce_flag=all_reduce_flag)

    def on_train_begin(self, args, state, control, **kwargs):
        stopping_local = [k for k in RANK_LOCAL_KINDS if self.policy[k] == "stop"]
        if args.world_size > 1 and stopping_local and self.all_reduce_flag is None:
            raise ValueError(f"AnomalyDetector: policy 'stop' for per-rank {sorted(stopping_local)} on "
                             f"{args.world_size} ranks needs all_reduce_flag so that every rank stops together")

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.step_begin()

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:  # eval logs and the final train summary carry no "loss"
            return
        step = state.global_step
        found = self.check(step, logs, args)
        for anomaly in found:
            self.events.append(anomaly)
            self.recorder.log_event(step, EVENT_PREFIX + anomaly.kind,
                                    {"action": self.policy[anomaly.kind], "message": anomaly.message, **anomaly.values})
        stopping = [a for a in found if self.policy[a.kind] == "stop"]
        stop = self.all_reduce_flag(bool(stopping)) if self.all_reduce_flag else bool(stopping)
        if not stop:
            return
        self.stopped_reason = stopping[0].message if stopping else "anomaly detected on another rank"
        control.should_training_stop = True
        if any(a.kind in MODEL_STATE_KINDS for a in stopping):  # same on every rank: these kinds are deterministic
            control.should_save = False  # keep the last good checkpoint; these weights are suspect
            control.should_evaluate = False
        self.recorder.log_event(step, "training_stopped", {"reason": self.stopped_reason})

    def check(self, step: int, logs: dict, args) -> list[Anomaly]:
        """Anomalies in this train log (kinds with policy 'off' are skipped); updates the running histories."""
        found: list[Anomaly] = []
        loss, grad_norm = logs.get("loss"), logs.get("grad_norm")
        on = {k for k, action in self.policy.items() if action != "off"}

        non_finite = {k: v for k, v in (("loss", loss), ("grad_norm", grad_norm)) if v is not None and not math.isfinite(v)}
        if non_finite:
            if "nan_loss" in on:
                found.append(Anomaly("nan_loss", step, f"non-finite {' and '.join(non_finite)} at step {step}",
                                     {k: str(v) for k, v in non_finite.items()}))
        else:
            if "loss_spike" in on and len(self.losses) >= self.min_history:
                z = robust_z(loss, list(self.losses))
                if z > self.z_threshold:
                    found.append(Anomaly("loss_spike", step, f"loss {loss:.4g} at step {step} is {z:.1f} robust sd above "
                                         f"the median {statistics.median(self.losses):.4g}",
                                         {"loss": loss, "z": z, "median": statistics.median(self.losses)}))
            self.losses.append(loss)
            if grad_norm is not None:
                found += self._check_grad_norm(step, grad_norm, on)
                self.grad_norms.append(grad_norm)

        steps, seconds = self.clock.take()
        if steps and seconds > 0:
            throughput = steps * samples_per_step(args) / seconds
            if "throughput_drop" in on and len(self.throughputs) >= self.min_history:
                median = statistics.median(self.throughputs)
                if throughput < self.throughput_drop * median:
                    found.append(Anomaly("throughput_drop", step, f"{throughput:.3g} samples/s at step {step}, below "
                                         f"{self.throughput_drop:g} x the median {median:.3g}",
                                         {"samples_per_s": throughput, "median": median}))
            self.throughputs.append(throughput)

        if "memory_growth" in on:
            found += self._check_memory(step)
        return found

    def _check_grad_norm(self, step: int, grad_norm: float, on: set[str]) -> list[Anomaly]:
        if "grad_norm_explosion" not in on:
            return []
        if self.grad_norm_threshold is not None and grad_norm > self.grad_norm_threshold:
            return [Anomaly("grad_norm_explosion", step, f"grad norm {grad_norm:.4g} at step {step} above the limit "
                            f"{self.grad_norm_threshold:g}", {"grad_norm": grad_norm, "limit": self.grad_norm_threshold})]
        if len(self.grad_norms) >= self.min_history:
            median = statistics.median(self.grad_norms)
            if grad_norm > self.grad_norm_factor * median:
                return [Anomaly("grad_norm_explosion", step, f"grad norm {grad_norm:.4g} at step {step} is over "
                                f"{self.grad_norm_factor:g} x the median {median:.4g}",
                                {"grad_norm": grad_norm, "median": median})]
        return []

    def _check_memory(self, step: int) -> list[Anomaly]:
        """Memory that rose at each of `memory_growth_steps` consecutive logs; re-arms after reporting."""
        memory = self.memory_fn()
        previous, self._last_memory = self._last_memory, memory
        if previous is None or memory <= previous:
            self._memory_rises = 0
            return []
        if self._memory_rises == 0:
            self._memory_rise_start = previous
        self._memory_rises += 1
        if self._memory_rises < self.memory_growth_steps:
            return []
        self._memory_rises = 0
        return [Anomaly("memory_growth", step, f"memory grew at each of the last {self.memory_growth_steps} logs, "
                        f"{self._memory_rise_start} -> {memory} bytes at step {step}",
                        {"from_bytes": self._memory_rise_start, "to_bytes": memory, "logs": self.memory_growth_steps})]
