"""Monitoring callbacks with injected log values, on real TrainerState/TrainerControl/TrainingArguments objects; a real
Trainer run that hits NaN; a real 2-rank gloo run for the gathered peaks and the agreed stop; custom callbacks."""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from engine.callbacks import (AnomalyDetector, MemoryTracker, Profiler, estimate_flops_per_token, load_custom_callbacks,
                              local_peak_bytes, peak_flops_for_device)
from engine.callbacks.examples import LossEMA
from engine.config import load_config
from engine.errors import UserError
from engine.schema import CallbackSpec, MonitoringConfig
from launch_helpers import run_processes

ROOT = Path(__file__).resolve().parents[1]


class ListRecorder:
    """The recorder interface the callbacks use, keeping what they report in memory."""

    def __init__(self):
        self.metrics: list[tuple[int, dict]] = []
        self.events: list[tuple[int, str, dict]] = []

    def log_metrics(self, step: int, metrics: dict) -> None:
        self.metrics.append((step, dict(metrics)))

    def log_event(self, step: int, kind: str, data: dict) -> None:
        self.events.append((step, kind, dict(data)))

    def kinds(self) -> list[str]:
        return [kind for _, kind, _ in self.events]


class ManualClock:
    """A clock the test moves by hand, for throughput windows."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def args(tmp_path_factory) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path_factory.mktemp("out")), use_cpu=True,
                             per_device_train_batch_size=4, report_to=[])


def _log(cb, args, state: TrainerState, control: TrainerControl, step: int, **logs) -> None:
    state.global_step = step
    cb.on_log(args, state, control, logs=logs)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    det = AnomalyDetector(rec)
    _log(det, args, state, control, 10, loss=2.0, grad_norm=1.0)
    assert not control.should_training_stop and rec.events == []
    control.should_save = control.should_evaluate = True  # the step was due for a save and an evaluation
    _log(det, args, state, control, 20, loss=float("nan"), grad_norm=1.0)
    assert control.should_training_stop and not control.should_save and not control.should_evaluate
    step, kind, data = rec.events[0]
    assert (step, kind, data["action"], data["loss"]) == (20, "anomaly_nan_loss", "stop", "nan")
    assert rec.events[-1][1] == "training_stopped" and "non-finite loss at step 20" in det.stopped_reason


def test_nan_grad_norm_counts_when_the_trainer_filtered_the_loss(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    det = AnomalyDetector(rec)
    _log(det, args, state, control, 5, loss=2.0, grad_norm=float("inf"))
    assert control.should_training_stop and "non-finite grad_norm" in det.stopped_reason


def test_nan_with_warn_policy_records_but_continues(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    det = AnomalyDetector(rec, {"nan_loss": "warn"})
    _log(det, args, state, control, 5, loss=float("inf"))
    assert not control.should_training_stop and det.stopped_reason is None
    assert rec.kinds() == ["anomaly_nan_loss"] and rec.events[0][2]["action"] == "warn"
    assert AnomalyDetector(rec, {"nan_loss": "off"}).check(5, {"loss": float("nan")}, args) == []


def test_loss_spike_by_robust_z_score(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    det = AnomalyDetector(rec, {"loss_spike": "stop"}, window=20, z_threshold=6.0)
    noise = [0.02, -0.01, 0.03, -0.02, 0.0, 0.01, -0.03, 0.02, -0.01, 0.01]
    for i, n in enumerate(noise):
        _log(det, args, state, control, i + 1, loss=2.0 + n)
    _log(det, args, state, control, 11, loss=2.05)  # within the noise
    assert rec.events == [] and not control.should_training_stop
    control.should_save = True
    _log(det, args, state, control, 12, loss=4.0)
    assert rec.kinds() == ["anomaly_loss_spike", "training_stopped"] and control.should_training_stop
    data = rec.events[0][2]
    assert data["loss"] == 4.0 and data["z"] > 6.0 and data["median"] == pytest.approx(2.01, abs=0.02)
    assert not control.should_save  # a spiked model is not saved over the last good one


def test_falling_noisy_loss_is_not_a_spike(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    det = AnomalyDetector(rec, window=50)
    for step in range(1, 200):
        loss = 8.0 * math.exp(-step / 40) + 1.0 + 0.05 * math.sin(step * 1.7)
        _log(det, args, state, control, step, loss=loss, grad_norm=3.0 + math.sin(step))
    assert rec.events == []


def test_grad_norm_explosion_absolute_and_relative(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    det = AnomalyDetector(rec, grad_norm_threshold=100.0, grad_norm_factor=10.0)
    _log(det, args, state, control, 1, loss=2.0, grad_norm=150.0)  # over the absolute limit before any history
    assert rec.kinds() == ["anomaly_grad_norm_explosion"] and rec.events[0][2]["limit"] == 100.0
    for step in range(2, 12):
        _log(det, args, state, control, step, loss=2.0, grad_norm=4.0 + 0.1 * step)
    assert len(rec.events) == 1
    _log(det, args, state, control, 12, loss=2.0, grad_norm=60.0)  # under the limit, but 10x the median
    step, kind, data = rec.events[-1]
    assert (step, kind, data["grad_norm"], data["action"]) == (12, "anomaly_grad_norm_explosion", 60.0, "warn")
    assert not control.should_training_stop


def _window(det, args, state, control, clock: ManualClock, step: int, steps: int, seconds_per_step: float,
            gap: float = 0.0) -> None:
    """`steps` optimizer steps, then a train log; `gap` seconds pass after the log (evaluation, saving)."""
    for _ in range(steps):
        det.on_step_begin(args, state, control)
        clock.now += seconds_per_step
        det.on_step_end(args, state, control)
    _log(det, args, state, control, step, loss=2.0)
    clock.now += gap


def test_throughput_drop_against_running_median(args):
    rec, state, control, clock = ListRecorder(), TrainerState(), TrainerControl(), ManualClock()
    det = AnomalyDetector(rec, {"throughput_drop": "stop"}, throughput_drop=0.5, clock=clock)
    for i in range(10):  # 5 steps x 4 samples in 5 s = 4 samples/s; long evaluations between logs do not count
        _window(det, args, state, control, clock, 5 * (i + 1), steps=5, seconds_per_step=1.0, gap=100.0)
    _window(det, args, state, control, clock, 55, steps=5, seconds_per_step=1.5)  # 2.67 samples/s: not below half
    assert rec.events == []
    control.should_save = True
    _window(det, args, state, control, clock, 60, steps=5, seconds_per_step=4.0)  # 1 sample/s
    step, kind, data = rec.events[0]
    assert (step, kind) == (60, "anomaly_throughput_drop")
    assert data["samples_per_s"] == pytest.approx(1.0) and data["median"] == pytest.approx(4.0)
    assert control.should_training_stop and control.should_save  # the weights are fine: the save still happens


def test_memory_growth_over_consecutive_logs(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    readings = iter([100, 110, 105, 120, 130, 140, 150, 160, 170, 170])
    det = AnomalyDetector(rec, memory_growth_steps=5, memory_fn=lambda: next(readings))
    for step in range(1, 10):
        _log(det, args, state, control, step, loss=2.0)
    # 110 then a drop to 105 resets; 105 -> 120 -> ... -> 160 rises 5 times in a row at step 8.
    assert rec.kinds() == ["anomaly_memory_growth"]
    step, _, data = rec.events[0]
    assert (step, data["from_bytes"], data["to_bytes"], data["action"]) == (8, 105, 160, "warn")
    _log(det, args, state, control, 10, loss=2.0)  # flat: no second event
    assert len(rec.events) == 1


def test_all_ranks_stop_together_through_the_flag(args):
    """A stop found on another rank (flag reduction returns True) stops this rank too; the flag runs every log."""
    calls: list[bool] = []

    def other_rank_stops(local: bool) -> bool:
        calls.append(local)
        return len(calls) == 3

    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    det = AnomalyDetector(rec, all_reduce_flag=other_rank_stops)
    for step in (1, 2):
        _log(det, args, state, control, step, loss=2.0)
    det.on_log(args, state, control, logs={"eval_loss": 9.0})  # eval logs are not train logs: no flag call
    assert calls == [False, False] and not control.should_training_stop
    _log(det, args, state, control, 3, loss=2.0)
    assert calls == [False, False, False] and control.should_training_stop
    assert det.stopped_reason == "anomaly detected on another rank" and rec.kinds() == ["training_stopped"]


def test_policy_from_config_and_validation():
    cfg = MonitoringConfig(on_loss_spike="stop", on_memory_growth="off", anomaly_window=30, loss_spike_z=4.0)
    det = AnomalyDetector.from_config(cfg, ListRecorder())
    assert det.policy == {"nan_loss": "stop", "loss_spike": "stop", "grad_norm_explosion": "warn",
                          "throughput_drop": "warn", "memory_growth": "off"}
    assert det.losses.maxlen == 30 and det.z_threshold == 4.0
    with pytest.raises(ValueError, match="unknown kind"):
        AnomalyDetector(ListRecorder(), {"loss_explosion": "stop"})
    with pytest.raises(ValueError, match="halt"):
        AnomalyDetector(ListRecorder(), {"loss_spike": "halt"})


def test_memory_tracker_records_rss_and_peaks(args):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    tracker = MemoryTracker(rec)
    state.global_step = 3
    tracker.on_log(args, state, control, logs={"loss": 1.0})
    tracker.on_log(args, state, control, logs={"eval_loss": 1.0})  # not recorded twice for the step
    assert len(rec.metrics) == 1
    step, metrics = rec.metrics[0]
    assert step == 3 and metrics["memory/rss_bytes"] > 10e6
    assert metrics["memory/peak_rss_bytes"] >= metrics["memory/rss_bytes"]
    tracker.on_train_end(args, state, control)
    assert len(tracker.peaks) == 1 and tracker.peaks[0] <= local_peak_bytes()
    assert rec.metrics[-1][1]["memory/peak_bytes_rank0"] == tracker.peaks[0] > 10e6
    assert rec.events[-1][1] == "memory_peaks" and rec.events[-1][2]["device"] == "cpu"


def test_profiler_throughput_tokens_and_mfu(args):
    rec, state, control, clock = ListRecorder(), TrainerState(), TrainerControl(), ManualClock()
    prof = Profiler(rec, flops_per_token=6e9, peak_flops=1e15, clock=clock)
    prof.on_train_begin(args, state, control)
    for _ in range(4):
        prof.on_step_begin(args, state, control)
        clock.now += 0.5
        state.global_step += 1
        state.num_input_tokens_seen += 1000
        prof.on_step_end(args, state, control)
    prof.on_log(args, state, control, logs={"loss": 1.0})
    step, m = rec.metrics[-1]
    assert step == 4 and m["perf/step_time_s"] == pytest.approx(0.5)
    assert m["perf/samples_per_s"] == pytest.approx(4 * 4 / 2.0)
    assert m["perf/tokens_per_s"] == pytest.approx(4000 / 2.0)
    assert m["perf/mfu"] == pytest.approx(6e9 * 2000 / 1e15)
    prof.on_log(args, state, control, logs={"loss": 1.0})  # no step since the last log: nothing recorded
    assert len(rec.metrics) == 1


def test_flops_and_peak_tables():
    assert estimate_flops_per_token(1_000_000) == 6e6
    assert estimate_flops_per_token(1_000_000, target_to_source=0.25) == pytest.approx(3.75e6)
    assert peak_flops_for_device("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for_device("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for_device("NVIDIA H200") == 989e12
    assert peak_flops_for_device("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_device("NVIDIA GeForce RTX 4090") == 165.2e12
    assert peak_flops_for_device("Tesla T4") is None
    if not torch.cuda.is_available():
        assert peak_flops_for_device() is None


def test_profiler_trace_window_writes_a_chrome_trace(args, tmp_path):
    rec, state, control = ListRecorder(), TrainerState(), TrainerControl()
    prof = Profiler(rec, trace_dir=tmp_path / "traces", trace_start_step=2, trace_steps=2)
    x = torch.randn(64, 64)
    for _ in range(6):
        prof.on_step_begin(args, state, control)
        (x @ x).sum()
        state.global_step += 1
        prof.on_step_end(args, state, control)
    assert prof.trace_path == tmp_path / "traces" / "trace_rank0_steps3-4.json"
    trace = json.loads(prof.trace_path.read_text())
    assert any("mm" in e.get("name", "") for e in trace["traceEvents"])
    assert rec.events == [(4, "profiler_trace", {"path": str(prof.trace_path), "first_step": 3, "last_step": 4})]
    assert [p.name for p in prof.trace_path.parent.iterdir()] == [prof.trace_path.name]  # no temp file left


def test_custom_callback_from_the_example_config(args):
    cfg = load_config([ROOT / "configs" / "callbacks_example.yaml"], overrides=["model.name_or_path=x"]).config
    rec = ListRecorder()
    (cb,) = load_custom_callbacks(cfg.callbacks, recorder=rec)
    assert isinstance(cb, LossEMA) and cb.recorder is rec and cb.alpha == 0.2 and cb.stop_below == 0.05
    state, control = TrainerState(), TrainerControl()
    _log(cb, args, state, control, 1, loss=1.0)
    _log(cb, args, state, control, 2, loss=0.5)
    assert rec.metrics[-1] == (2, {"custom/loss_ema": pytest.approx(0.9)})
    for step in range(3, 40):
        _log(cb, args, state, control, step, loss=0.01)
    assert control.should_training_stop and cb.ema < 0.05


@pytest.mark.parametrize("spec, message", [
    (CallbackSpec("engine.callbacks.examples.LossEMA"), "callbacks[1].path: expected 'package.module:ClassName'"),
    (CallbackSpec("no_such_pkg.mod:Cb"), "callbacks[1].path: cannot import module 'no_such_pkg.mod'"),
    (CallbackSpec("engine.callbacks.examples:Missing"), "callbacks[1].path: module 'engine.callbacks.examples' has no"),
    (CallbackSpec("engine.errors:UserError"), "callbacks[1].path: 'engine.errors:UserError' is not a transformers"),
    (CallbackSpec("engine.rouge:score_summaries"), "is not a transformers.TrainerCallback"),
    (CallbackSpec("engine.callbacks.examples:LossEMA", {"beta": 1}), "callbacks[1].kwargs: engine.callbacks.examples:LossEMA"),
])
def test_bad_custom_callback_specs_are_user_errors(spec, message):
    good = CallbackSpec("engine.callbacks.examples:LossEMA", {"alpha": 0.5})
    with pytest.raises(UserError) as err:
        load_custom_callbacks([good, spec])
    assert str(err.value).startswith(message) or message in str(err.value)
    assert "\n" not in str(err.value)


class Rows(torch.utils.data.Dataset):
    """64 regression rows, each derived from its index."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        x = torch.randn(4, generator=torch.Generator().manual_seed(i))
        return {"x": x, "y": x.sum()}


class Tiny(torch.nn.Module):
    """Linear regression whose loss turns NaN from its `nan_from`-th forward on."""

    def __init__(self, nan_from: int):
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)
        self.calls, self.nan_from = 0, nan_from

    def forward(self, x, y):
        self.calls += 1
        loss = ((self.lin(x).squeeze(-1) - y) ** 2).mean()
        return {"loss": loss * float("nan") if self.calls >= self.nan_from else loss}


def test_real_trainer_run_stops_on_nan_and_reports(tmp_path):
    """A real Trainer with the Trainer's default NaN filter: the loss is masked, the NaN grad norm still stops it."""
    from transformers import Trainer, TrainingArguments

    rec = ListRecorder()
    det, prof, mem = AnomalyDetector(rec), Profiler(rec), MemoryTracker(rec)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=4, max_steps=12,
                             logging_steps=1, save_strategy="steps", save_steps=1, report_to=[], disable_tqdm=True,
                             learning_rate=1e-2)
    trainer = Trainer(model=Tiny(nan_from=7), args=args, train_dataset=Rows(),
                      callbacks=[det, prof, mem])
    trainer.train()
    assert trainer.state.global_step == 7
    assert det.stopped_reason == "non-finite grad_norm at step 7"
    assert [k for k in rec.kinds() if k.startswith("anomaly_")] == ["anomaly_nan_loss"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == [f"checkpoint-{i}" for i in range(1, 7)]
    perf_steps = [s for s, m in rec.metrics if "perf/samples_per_s" in m]
    assert perf_steps == list(range(1, 8))
    assert any("memory/peak_bytes_rank0" in m for _, m in rec.metrics)


DIST_SCRIPT = """
import json, os, sys
import torch
import torch.distributed as dist
from transformers import TrainerControl, TrainerState, TrainingArguments
from engine.callbacks import AnomalyDetector, MemoryTracker

out = sys.argv[1]
args = TrainingArguments(output_dir=out, use_cpu=True, per_device_train_batch_size=2, report_to=[])
if not dist.is_initialized():
    dist.init_process_group("gloo")
rank = dist.get_rank()


class Rec:
    def __init__(self):
        self.metrics, self.events = [], []
    def log_metrics(self, step, metrics):
        self.metrics.append([step, metrics])
    def log_event(self, step, kind, data):
        self.events.append([step, kind, data])


def any_rank(flag):
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


try:
    AnomalyDetector(Rec(), {"throughput_drop": "stop"}).on_train_begin(args, TrainerState(), TrainerControl())
    refused = ""
except ValueError as exc:
    refused = str(exc)

now = [0.0]
rec = Rec()
det = AnomalyDetector(rec, {"throughput_drop": "stop"}, all_reduce_flag=any_rank, clock=lambda: now[0])
mem = MemoryTracker(rec)
state, control = TrainerState(), TrainerControl()
det.on_train_begin(args, state, control)
for step in range(1, 16):
    det.on_step_begin(args, state, control)
    now[0] += 10.0 if (rank == 1 and step == 12) else 1.0  # rank 1 alone slows down at step 12
    state.global_step = step
    det.on_step_end(args, state, control)
    det.on_log(args, state, control, logs={"loss": 2.0})
    if control.should_training_stop:
        break
mem.on_train_end(args, state, control)
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump({"stop_step": state.global_step, "reason": det.stopped_reason, "events": rec.events,
               "metrics": rec.metrics, "peaks": mem.peaks, "world": args.world_size, "refused": refused}, fh)
dist.barrier()
dist.destroy_process_group()
"""


def test_two_gloo_ranks_gather_peaks_and_stop_together(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(DIST_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    [done] = run_processes([[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             str(script), str(tmp_path)]], 300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert "needs all_reduce_flag" in r0["refused"] and "needs all_reduce_flag" in r1["refused"]
    assert r0["stop_step"] == r1["stop_step"] == 12
    assert r0["reason"] == "anomaly detected on another rank" and "samples/s at step 12" in r1["reason"]
    assert [e[1] for e in r1["events"]] == ["anomaly_throughput_drop", "training_stopped", "memory_peaks"]
    assert len(r0["peaks"]) == len(r1["peaks"]) == 2 and r0["peaks"] == r1["peaks"] and min(r0["peaks"]) > 10e6
    assert r0["metrics"][-1][1] == {f"memory/peak_bytes_rank{i}": float(p) for i, p in enumerate(r0["peaks"])}
