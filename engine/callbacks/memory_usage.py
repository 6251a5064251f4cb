"""Per-rank system metrics: memory now and at peak (CUDA allocated/reserved on GPU, process RSS on CPU) and CPU/GPU
utilisation, gathered from all ranks to rank 0 through torch.distributed (other ranks never write).

`gather_objects` is a collective: every rank calls it (in `on_log` and `on_train_end`, which all ranks run), never
inside rank-0-only code.
"""
from __future__ import annotations

import functools
import os
import resource
import sys
from typing import TYPE_CHECKING

import psutil
import torch
from transformers import TrainerCallback

from engine.distributed import is_distributed

if TYPE_CHECKING:
    from engine.recorder import Recorder


def _on_cuda() -> bool:
    """True once this process has put work on a GPU (a CPU run on a GPU machine reports RSS)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def current_memory_bytes() -> int:
    """Memory in use now: CUDA allocated on GPU, resident set size on CPU."""
    return int(torch.cuda.memory_allocated()) if _on_cuda() else int(psutil.Process().memory_info().rss)


def local_peak_bytes() -> int:
    """This rank's peak: CUDA max allocated on GPU, process peak RSS on CPU."""
    if _on_cuda():
        return int(torch.cuda.max_memory_allocated())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux kilobytes
    return max(int(peak), int(psutil.Process().memory_info().rss))  # Linux updates the high-water mark lazily


def memory_snapshot() -> dict[str, float]:
    """Current and peak memory of this rank as `memory/*` metrics."""
    metrics = {"memory/rss_bytes": float(psutil.Process().memory_info().rss)}
    if _on_cuda():
        metrics.update({
            "memory/allocated_bytes": float(torch.cuda.memory_allocated()),
            "memory/reserved_bytes": float(torch.cuda.memory_reserved()),
            "memory/peak_allocated_bytes": float(torch.cuda.max_memory_allocated()),
            "memory/peak_reserved_bytes": float(torch.cuda.max_memory_reserved()),
        })
    else:
        metrics["memory/peak_rss_bytes"] = float(local_peak_bytes())
    return metrics


@functools.lru_cache(maxsize=None)
def _nvml_handle(cuda_index: int):
    """NVML's handle for this process's CUDA device (the indices differ under CUDA_VISIBLE_DEVICES)."""
    import pynvml

    from engine.nvml import nvml_index, nvml_text

    pynvml.nvmlInit()
    uuids = [nvml_text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i)))
             for i in range(pynvml.nvmlDeviceGetCount())]
    return pynvml.nvmlDeviceGetHandleByIndex(nvml_index(cuda_index, dict(os.environ), uuids))


def _gpu_utilization_percent() -> float | None:
    """This rank's GPU busy percentage from NVML (None when NVML or a driver is missing)."""
    try:
        import pynvml

        return float(pynvml.nvmlDeviceGetUtilizationRates(_nvml_handle(torch.cuda.current_device())).gpu)
    except Exception:  # NVML absent or not permitted: utilisation is optional
        return None


def system_snapshot() -> dict[str, float]:
    """This rank's memory (see memory_snapshot) and CPU/GPU utilisation."""
    metrics = memory_snapshot()
    metrics["system/cpu_percent"] = float(psutil.Process().cpu_percent(interval=None))
    if _on_cuda() and (gpu := _gpu_utilization_percent()) is not None:
        metrics["system/gpu_percent"] = gpu
    return metrics


def gather_objects(obj) -> list:
    """Every rank's `obj`, indexed by rank (a collective when torch.distributed is initialised: call on all ranks)."""
    if not is_distributed():
        return [obj]
    gathered: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def gather_peak_bytes() -> list[int]:
    """Every rank's peak, indexed by rank (a collective: call on all ranks)."""
    return [int(p) for p in gather_objects(local_peak_bytes())]


class MemoryTracker(TrainerCallback):
    """Records this rank's memory at each train log; at the end, every rank's peak (gathered) on rank 0's recorder,
    next to the planner's prediction so `dialsum plan` can show how far off past predictions were."""

    def __init__(self, recorder: "Recorder", plan_memory: dict | None = None):
        self.recorder = recorder
        self.plan_memory = plan_memory or {}
        self.peaks: list[int] = []

    def predicted_bytes(self) -> int | None:
        """The plan's per-rank peak in the units measured here: CUDA max-allocated does not see the CUDA context and
        framework overhead the planner adds, process RSS on CPU does."""
        predicted = self.plan_memory.get("predicted_peak_bytes_per_gpu")
        if predicted is None:
            return None
        return int(predicted - self.plan_memory.get("overhead_bytes_per_gpu", 0)) if _on_cuda() else int(predicted)

    def on_log(self, args, state, control, logs=None, **kwargs):
        """At each train log every rank contributes its snapshot (a gather all ranks run); rank 0's recorder writes
        rank 0's values under their own names and every rank's under `rank<i>/`."""
        if not (logs and "loss" in logs):  # train logs only; eval logs at the same step would duplicate
            return
        snapshots = gather_objects(system_snapshot())
        metrics = dict(snapshots[0])
        for rank, snapshot in enumerate(snapshots):
            metrics.update({f"rank{rank}/{key}": value for key, value in snapshot.items()})
        self.recorder.log_metrics(state.global_step, metrics)

    def on_train_end(self, args, state, control, **kwargs):
        self.peaks = gather_peak_bytes()
        step = state.global_step
        measured = max(self.peaks)
        predicted = self.predicted_bytes()
        self.recorder.log_metrics(step, {f"memory/peak_bytes_rank{r}": float(p) for r, p in enumerate(self.peaks)})
        self.recorder.log_event(step, "memory_peaks", {
            "peak_bytes_per_rank": self.peaks, "max_bytes": measured, "device": "cuda" if _on_cuda() else "cpu",
            "predicted_bytes": predicted,
            "prediction_error": None if predicted is None else (predicted - measured) / measured,
        })
