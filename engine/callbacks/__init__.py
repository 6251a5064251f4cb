"""Monitoring callbacks (transformers TrainerCallback, built on every rank): anomalies, memory, profiling, custom ones.

They cause no side effects themselves: metrics and events go through the recorder they are given (`log_metrics`,
`log_event`; a null recorder off rank 0). Anything all ranks must agree on is computed on every rank from the same
values, or agreed through a flag reduction the caller provides; collectives run on every rank, never in rank-0-only code.
"""
from engine.callbacks.anomaly import ANOMALY_KINDS, Anomaly, AnomalyDetector
from engine.callbacks.loading import load_custom_callbacks
from engine.callbacks.memory_usage import MemoryTracker, gather_peak_bytes, local_peak_bytes
from engine.callbacks.profiler import Profiler, estimate_flops_per_token, peak_flops_for_device

__all__ = [
    "ANOMALY_KINDS", "Anomaly", "AnomalyDetector", "MemoryTracker", "Profiler", "estimate_flops_per_token",
    "gather_peak_bytes", "load_custom_callbacks", "local_peak_bytes", "peak_flops_for_device",
]
