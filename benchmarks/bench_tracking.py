"""Rank-0 tracking cost per logged step: 15 metrics from three callbacks into the SQLite store + W&B offline.

Parts timed separately in the same process: the W&B call alone (`run.log`, the anchor: what a plain Trainer with
report_to="wandb" pays per log), the tracker write alone (`Tracker.log_metrics`), the three callbacks' metrics written
separately (what the engine did before the recorder merged a step's metrics) and what one train log does now: three
`Rank0Recorder.log_metrics` calls (trainer logs, profiler, memory) and the `flush` after the last callback.
Target: <= 1 ms per logged step.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from common import BENCH_ENV, fmt_s, median, print_report

TARGET_S = 1e-3
METRIC_NAMES = ["train/loss", "train/grad_norm", "train/learning_rate", "train/epoch", "system/cpu_percent",
                "perf/step_time_s", "perf/samples_per_s", "perf/tokens_per_s", "perf/tflops_per_device", "perf/mfu",
                "memory/rss_bytes", "memory/peak_rss_bytes", "memory/allocated_bytes", "memory/reserved_bytes",
                "memory/peak_allocated_bytes"]


def make_recorder(root: Path):
    from engine.environment import collect_environment
    from engine.recorder import Rank0Recorder
    from engine.schema import DialsumConfig
    from engine.plan import Plan

    cfg = DialsumConfig()
    cfg.experiment.output_root = str(root)
    cfg.tracking.heartbeat_seconds = 3600.0
    plan = Plan(run_id="benchtracking", config=asdict(cfg), config_sources={}, device="cpu", backend="gloo", nnodes=1,
                nproc_per_node=1, world_size=1, precision="fp32", zero_stage=2, use_deepspeed=True,
                offload_optimizer=False, offload_params=False, gradient_checkpointing=False, micro_batch_size=8,
                gradient_accumulation_steps=1, global_batch_size=8, deepspeed_config=None)
    return Rank0Recorder(plan, cfg, collect_environment({}))


def per_call(fn, steps: int, first_step: int) -> list[float]:
    times = []
    for step in range(first_step, first_step + steps):
        metrics = {name: 1.0 / (step + 1 + i) for i, name in enumerate(METRIC_NAMES)}
        t0 = time.perf_counter()
        fn(step, metrics)
        times.append(time.perf_counter() - t0)
    return times


def by_callback(metrics: dict[str, float]) -> list[dict[str, float]]:
    """The step's metrics as the three callbacks that log them at a train log (trainer logs, profiler, memory)."""
    items = list(metrics.items())
    return [dict(items[i:i + 5]) for i in range(0, len(items), 5)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="logged steps per variant")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: 10 steps")
    a = p.parse_args(argv)
    steps = 10 if a.quick else a.steps
    os.environ.update({k: BENCH_ENV[k] for k in ("WANDB_MODE", "WANDB_SILENT")})

    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as tmp:
        recorder = make_recorder(Path(tmp))
        recorder.start()
        recorder.wandb.wait()  # W&B starts in the background; the run must exist before the variants write to it
        recorder.writer.drain(timeout=60)
        run_id = recorder.run_id

        def separate_writes(step: int, metrics: dict[str, float]) -> None:
            for part in by_callback(metrics):
                recorder.tracker.log_metrics(run_id, step, part)
                recorder.wandb.log(step, part)

        def merged_write(step: int, metrics: dict[str, float]) -> None:
            for part in by_callback(metrics):
                recorder.log_metrics(step, part)
            recorder.flush()

        variants = [
            ("anchor: W&B offline `run.log` alone", lambda s, m: recorder.wandb.run.log(m, step=s)),
            ("tracker (SQLite) `Tracker.log_metrics` alone", lambda s, m: recorder.tracker.log_metrics(run_id, s, m)),
            ("before: each callback's metrics written on their own (tracker + W&B, 3 writes)", separate_writes),
            ("dialsum: 3 `Rank0Recorder.log_metrics` + `flush` (one write, queued to the writer thread)", merged_write),
        ]
        results, step = [], 0
        for name, fn in variants:
            times = per_call(fn, steps, step)
            step += steps
            results.append((name, median(times), sorted(times)[int(0.95 * (len(times) - 1))], sum(times) / len(times)))
        recorder.finish("completed")
        db = Path(tmp) / "dialsum.db"
        db_kib = db.stat().st_size // 1024 if db.exists() else 0

    anchor = results[0][1]
    rows = [[name, fmt_s(med), fmt_s(p95), fmt_s(mean), f"{med / anchor:.2f}",
             ("met" if med <= TARGET_S else "MISSED") if name.startswith("dialsum") else "-"]
            for name, med, p95, mean in results]
    print_report(
        "Rank-0 tracking cost per logged step (15 metrics)",
        ["call", "median", "p95", "mean", "vs anchor", f"target <= {fmt_s(TARGET_S)}"], rows,
        [f"{steps} logged steps per variant, {len(METRIC_NAMES)} metrics each; SQLite store (WAL) in a temp dir "
         f"({db_kib} KiB at the end), W&B offline"])


if __name__ == "__main__":
    main()
