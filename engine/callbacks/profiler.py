"""Step time, samples/s, tokens/s and MFU per logging window; an optional torch.profiler trace window.

Timing covers the optimizer steps between two train logs: from the first `on_step_begin` after a log to the next train
`on_log`. Evaluation and checkpointing run after the log, so they never count as training time; the Trainer's loss
`.item()` just before `on_log` synchronises the GPU, so the window includes all queued GPU work.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from transformers import TrainerCallback

if TYPE_CHECKING:
    from engine.recorder import Recorder
    from engine.schema import MonitoringConfig

# Dense bf16 tensor-core peak per GPU (vendor datasheets). Matched in order against the device name.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("4090", 165.2e12),
)


def peak_flops_for_device(device_name: str | None = None) -> float | None:
    """Dense bf16 peak FLOP/s of this rank's GPU from the table; None on CPU or for an unknown GPU."""
    if device_name is None:
        if not torch.cuda.is_available():
            return None
        device_name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


def estimate_flops_per_token(num_params: int, *, target_to_source: float | None = None,
                             frozen: bool = False) -> float:
    """Training FLOPs per counted token: 6·N (forward 2·N, backward 4·N: the activations' gradients and the weights').
    A frozen base (adapters) computes no weight gradients: 4·N.

    For an encoder-decoder whose counted tokens are the source tokens only (`state.num_input_tokens_seen`),
    pass the target/source length ratio: each stack holds about half the parameters and sees its own tokens, so the
    cost per source token is (6·N/2)·(1 + ratio).
    """
    per_token = (4.0 if frozen else 6.0) * num_params
    return per_token if target_to_source is None else per_token / 2 * (1.0 + target_to_source)


class StepClock:
    """Optimizer steps and wall seconds since the last train log (see the module docstring for the window)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self._start: float | None = None
        self._steps = 0

    def step_begin(self) -> None:
        if self._start is None:
            self._start = self.clock()

    def step_end(self) -> None:
        self._steps += 1

    def take(self) -> tuple[int, float]:
        """(steps, seconds) of the window ending now; starts a new window. (0, 0.0) when no step ran."""
        if self._start is None or self._steps == 0:
            return 0, 0.0
        result = (self._steps, self.clock() - self._start)
        self._start, self._steps = None, 0
        return result


def samples_per_step(args) -> int:
    """Samples in one optimizer step across all ranks."""
    return args.train_batch_size * args.gradient_accumulation_steps * args.world_size


class Profiler(TrainerCallback):
    """Records `perf/*` metrics at each train log; MFU when FLOPs per token, peak FLOP/s and token counts are known.

    Tokens come from `state.num_input_tokens_seen`, summed over ranks (the engine's trainer keeps it, see engine/oom.py;
    a plain Trainer does with `include_num_input_tokens_seen`). MFU = flops_per_token · tokens/s / (peak_flops · world_size).
    The trace window (`trace_dir` and `trace_start_step` set) writes one Chrome trace per rank, the only file this
    callback writes, written whole then renamed.
    """

    def __init__(self, recorder: "Recorder", flops_per_token: float | None = None, peak_flops: float | None = None, *,
                 trace_dir: str | Path = "", trace_start_step: int | None = None, trace_steps: int = 3,
                 clock: Callable[[], float] = time.perf_counter):
        self.recorder = recorder
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.trace_dir = Path(trace_dir) if trace_dir else None
        self.trace_start_step = trace_start_step
        self.trace_steps = trace_steps
        self.clock = StepClock(clock)
        self.last_metrics: dict[str, float] = {}
        self.trace_path: Path | None = None
        self._tokens_at_last_log = 0
        self._trace: torch.profiler.profile | None = None
        self._trace_first_step = 0

    @classmethod
    def from_config(cls, cfg: "MonitoringConfig", recorder: "Recorder", *, flops_per_token: float | None = None,
                    trace_dir: str | Path = "") -> "Profiler":
        """`flops_per_token`: the task's estimate for the counted tokens (engine/tasks)."""
        return cls(recorder, flops_per_token, peak_flops_for_device(), trace_dir=trace_dir,
                   trace_start_step=cfg.profile_start_step, trace_steps=cfg.profile_steps)

    def on_train_begin(self, args, state, control, **kwargs):
        self._tokens_at_last_log = state.num_input_tokens_seen

    def on_step_begin(self, args, state, control, **kwargs):
        self.clock.step_begin()
        if (self.trace_dir is not None and self.trace_start_step is not None and self._trace is None
                and self.trace_path is None and state.global_step >= self.trace_start_step):
            self._start_trace(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.clock.step_end()
        if self._trace is not None:
            self._trace.step()
            if state.global_step - self._trace_first_step >= self.trace_steps:
                self._stop_trace(args, state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        steps, seconds = self.clock.take()
        if steps == 0 or seconds <= 0:
            return
        metrics = {"perf/step_time_s": seconds / steps,
                   "perf/samples_per_s": steps * samples_per_step(args) / seconds}
        tokens = state.num_input_tokens_seen - self._tokens_at_last_log
        self._tokens_at_last_log = state.num_input_tokens_seen
        if tokens > 0:
            metrics["perf/tokens_per_s"] = tokens / seconds
            if self.flops_per_token:
                achieved = self.flops_per_token * metrics["perf/tokens_per_s"] / args.world_size
                metrics["perf/tflops_per_device"] = achieved / 1e12
                if self.peak_flops:
                    metrics["perf/mfu"] = achieved / self.peak_flops
        self.last_metrics = metrics
        self.recorder.log_metrics(state.global_step, metrics)

    def on_train_end(self, args, state, control, **kwargs):
        if self._trace is not None:  # training ended inside the window
            self._stop_trace(args, state)

    def _start_trace(self, step: int) -> None:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._trace = torch.profiler.profile(activities=activities)
        self._trace.__enter__()
        self._trace_first_step = step

    def _stop_trace(self, args, state) -> None:
        trace, self._trace = self._trace, None
        trace.__exit__(None, None, None)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        path = self.trace_dir / f"trace_rank{args.process_index}_steps{self._trace_first_step + 1}-{state.global_step}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        trace.export_chrome_trace(str(tmp))
        os.replace(tmp, path)
        self.trace_path = path
        self.recorder.log_event(state.global_step, "profiler_trace",
                                {"path": str(path), "first_step": self._trace_first_step + 1, "last_step": state.global_step})
