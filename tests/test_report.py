"""Reports: `dialsum report`, `runs compare --plot`, `models compare --plot` against a store the test fills.

The plotting functions return their figures, so the drawn lines and bars are compared with the tracker's history and
the registry's metrics; the written files are checked as PNGs (signature, IHDR size, decodable by PIL)."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys

import numpy as np
import pytest

from engine.store import Registry, Tracker, open_store
from launcher.cli import main

STEPS = list(range(1, 31))
NAN_STEP, SPIKE_STEP, OOM_STEP = 24, 9, 15
ROUGE = {10: (0.30, 0.10, 0.25), 20: (0.36, 0.14, 0.31), 30: (0.34, 0.12, 0.30)}


def _loss(step: int) -> float:
    return math.nan if step == NAN_STEP else 5.0 / step + (3.0 if step == SPIKE_STEP else 0.0)


def _fill_run(tracker: Tracker, run_id: str, offset: float = 0.0) -> None:
    """30 logged steps: loss (a spike, a NaN), lr, grad norm, memory, throughput; evaluations every 10 steps."""
    tracker.create_run(run_id, name="demo", config={"training": {"learning_rate": 1e-3 + offset}}, plan=None,
                       environment={})
    tracker.start(run_id)
    for step in STEPS:
        tracker.log_metrics(run_id, step, {
            "train/loss": _loss(step) + offset, "train/learning_rate": 1e-3 * (1 - step / 31),
            "train/grad_norm": 1.0 + step / 10, "memory/rss_bytes": 2**30 + step * 2**20,
            "perf/samples_per_s": 40.0 + step, "perf/tokens_per_s": 7000.0 + 10 * step})
        if step in ROUGE:
            r1, r2, rl = (v + offset for v in ROUGE[step])
            tracker.log_metrics(run_id, step, {"eval/loss": 3.0 - step / 30, "eval/rouge1_f1": r1, "eval/rouge2_f1": r2,
                                               "eval/rougeL_f1": rl, "eval/rouge_combined_f1": r1 + r2 + rl})
    tracker.log_event(run_id, SPIKE_STEP, "anomaly_loss_spike", {"loss": _loss(SPIKE_STEP), "z": 9.1})
    tracker.log_event(run_id, OOM_STEP, "oom_backoff", {"micro_batch_size": 4, "new_micro_batch_size": 2})
    tracker.log_event(run_id, NAN_STEP, "anomaly_nan_loss", {"loss": "nan"})
    tracker.log_event(run_id, NAN_STEP, "training_stopped", {"reason": "nan_loss"})
    tracker.log_event(run_id, 20, "memory_peaks", {"peak_bytes": [2**31]})  # recorded, not drawn
    r1, r2, rl = (v + offset for v in ROUGE[20])
    tracker.set_summary(run_id, {"best/rouge1_f1": r1, "best/rouge2_f1": r2, "best/rougeL_f1": rl,
                                 "best/rouge_combined_f1": r1 + r2 + rl})
    tracker.finish(run_id, "failed", error="nan loss")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """Runs `a` and `b` (b's loss 0.5 higher, ROUGE 0.05 higher), and model `demo` v1 (from run a) and v2 (from a
    run the tracker does not have)."""
    monkeypatch.delenv("DIALSUM_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'dialsum.db'}"
    with open_store(uri) as s:
        tracker, registry = Tracker(s), Registry(s)
        _fill_run(tracker, "a")
        _fill_run(tracker, "b", offset=0.05)
        for run_id, rouge in (("a", 0.81), ("gone", 0.9)):
            registry.register("demo", run_id=run_id, checkpoint_dir=tmp_path / run_id, metric="rouge_combined_f1",
                              metrics={"rouge1_f1": 0.36, "rouge2_f1": 0.14, "rougeL_f1": 0.31,
                                       "rouge_combined_f1": rouge, "loss": 2.5}, greater_is_better=True, metadata={})
        runs = {r: tracker.get_run(r) for r in ("a", "b")}
        versions = [registry.get("demo", 1), registry.get("demo", 2)]
    return {"uri": uri, "runs": runs, "versions": versions, "tmp": tmp_path}


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _png_size(path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature; PIL must decode the whole image too."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    with Image.open(path) as image:
        image.load()
        assert image.size == struct.unpack(">II", data[16:24])
    return struct.unpack(">II", data[16:24])


def _lines(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {line.get_label(): (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
            for line in ax.get_lines() if not (line.get_gid() or "").startswith("event:")}


def _event_steps(ax) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in ax.get_lines():
        gid = line.get_gid() or ""
        if gid.startswith("event:"):
            xs = line.get_xdata()
            assert xs[0] == xs[1]  # vertical
            out.setdefault(gid.removeprefix("event:"), []).append(float(xs[0]))
    return out


def _history(run, key: str, scale: float = 1.0) -> tuple[list[float], list[float]]:
    points = [(h["step"], h[key] * scale) for h in run["history"] if key in h]
    return [float(s) for s, _ in points], [v for _, v in points]


def test_run_figures_draw_the_history_and_mark_events(store):
    from launcher.report import GIB, run_figures

    run = store["runs"]["a"]
    figures = run_figures(run)
    assert list(figures) == ["loss", "rouge", "learning_rate", "grad_norm", "memory", "throughput"]
    drawn = {
        "loss": [("train/loss", 1.0), ("eval/loss", 1.0)],
        "rouge": [("eval/rouge1_f1", 1.0), ("eval/rouge2_f1", 1.0), ("eval/rougeL_f1", 1.0),
                  ("eval/rouge_combined_f1", 1.0)],
        "learning_rate": [("train/learning_rate", 1.0)],
        "grad_norm": [("train/grad_norm", 1.0)],
        "memory": [("memory/rss_bytes", 1 / GIB)],
    }
    for name, keys in drawn.items():
        (ax,) = figures[name].axes
        lines = _lines(ax)
        assert list(lines) == [k for k, _ in keys]
        for key, scale in keys:
            xs, ys = _history(run, key, scale)
            np.testing.assert_array_equal(lines[key][0], xs)
            np.testing.assert_allclose(lines[key][1], ys, equal_nan=True)
    assert math.isnan(_lines(figures["loss"].axes[0])["train/loss"][1][NAN_STEP - 1])  # the NaN is a gap, not dropped
    samples_ax, tokens_ax = figures["throughput"].axes
    np.testing.assert_array_equal(_lines(samples_ax)["perf/samples_per_s"][1], _history(run, "perf/samples_per_s")[1])
    np.testing.assert_array_equal(_lines(tokens_ax)["perf/tokens_per_s"][1], _history(run, "perf/tokens_per_s")[1])
    for fig in figures.values():
        for ax in fig.axes:
            assert _event_steps(ax) == {"anomaly_loss_spike": [SPIKE_STEP], "oom_backoff": [OOM_STEP],
                                        "anomaly_nan_loss": [NAN_STEP], "training_stopped": [NAN_STEP]}


def test_report_command_writes_pngs_and_markdown(store, capsys):
    out_dir = store["tmp"] / "report"
    code, out, err = _cli(capsys, "report", "a", "--uri", store["uri"], "--out", str(out_dir), "--json")
    assert code == 0, err
    result = json.loads(out)
    names = ["loss", "rouge", "learning_rate", "grad_norm", "memory", "throughput"]
    assert result["files"] == [str(out_dir / f"{n}.png") for n in names] + [str(out_dir / "report.md")]
    for name in names:
        assert _png_size(out_dir / f"{name}.png") == ((650, 640) if name == "throughput" else (650, 320))
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([f"{n}.png" for n in names] + ["report.md"])

    numbers = result["numbers"]
    assert numbers["eval_rouge_combined_f1_best"] == pytest.approx(sum(ROUGE[20]))
    assert numbers["eval_rouge_combined_f1_best_step"] == 20
    assert numbers["train_loss_non_finite"] == 1 and numbers["train_loss_min"] == pytest.approx(5.0 / 30)
    assert numbers["memory_peak_gib"] == pytest.approx(1 + 30 / 1024)
    assert numbers["samples_per_s_mean"] == pytest.approx(40 + 15.5)
    assert numbers["events"]["anomaly_loss_spike"] == 1 and numbers["last_step"] == 30
    md = (out_dir / "report.md").read_text()
    assert "| eval_rouge_combined_f1_best_step | 20 |" in md
    assert f"| {SPIKE_STEP} | anomaly_loss_spike |" in md and f"| {OOM_STEP} | oom_backoff |" in md
    assert "memory_peaks |" not in md.split("## Marked events")[1]
    for name in names:
        assert f"![{name}]({name}.png)" in md


def test_report_default_folder_and_errors(store, capsys, tmp_path):
    code, _, err = _cli(capsys, "report", "b", "--uri", store["uri"], "--output-root", str(tmp_path / "root"))
    assert code == 0, err
    assert (tmp_path / "root" / "runs" / "b" / "report" / "report.md").is_file()
    code, _, err = _cli(capsys, "report", "nope", "--uri", store["uri"])
    assert code == 2 and "no run 'nope'" in err and len(err.strip().splitlines()) == 1


def test_run_without_metrics_gets_a_report_without_plots(tmp_path):
    from launcher.report import write_run_report

    with open_store(f"sqlite:///{tmp_path / 'db.sqlite'}") as s:
        Tracker(s).create_run("empty", name="x", config={}, plan=None, environment={})
        report = write_run_report(Tracker(s).get_run("empty"), tmp_path / "out")
    assert report.files == [tmp_path / "out" / "report.md"]
    assert "no metrics logged" in report.files[0].read_text()


def test_runs_compare_plot(store, capsys):
    from launcher.report import compare_runs_figures

    runs = [store["runs"]["a"], store["runs"]["b"]]
    figures = compare_runs_figures(runs)
    loss_ax, rouge_ax = figures["curves"].axes
    for ax, key in ((loss_ax, "train/loss"), (rouge_ax, "eval/rouge_combined_f1")):
        lines = _lines(ax)
        assert list(lines) == ["a", "b"]
        for run in runs:
            np.testing.assert_allclose(lines[run["run_id"]][1], _history(run, key)[1], equal_nan=True)
    (bars_ax,) = figures["metrics"].axes
    heights = [[bar.get_height() for bar in container] for container in bars_ax.containers]
    expected = [[run["summary"][f"best/{k}"] for k in ("rouge1_f1", "rouge2_f1", "rougeL_f1", "rouge_combined_f1")]
                for run in runs]
    np.testing.assert_allclose(heights, expected)

    out_dir = store["tmp"] / "cmp"
    code, out, err = _cli(capsys, "runs", "compare", "a", "b", "--uri", store["uri"], "--plot", "--out", str(out_dir),
                          "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["plots"] == [str(out_dir / "curves.png"), str(out_dir / "metrics.png")]
    assert _png_size(out_dir / "curves.png") == (1300, 320) and _png_size(out_dir / "metrics.png") == (650, 320)
    assert result["params"] == {"training.learning_rate": [1e-3, 1e-3 + 0.05]}  # the table output is unchanged


def test_models_compare_plot(store, capsys):
    from launcher.report import compare_models_figures

    versions = store["versions"]
    figures = compare_models_figures(versions, [store["runs"]["a"], None])
    (bars_ax,) = figures["metrics"].axes
    assert [c.get_label() for c in bars_ax.containers] == ["demo:1", "demo:2"]
    assert [t.get_text() for t in bars_ax.get_xticklabels()] == ["rouge1_f1", "rouge2_f1", "rougeL_f1",
                                                                 "rouge_combined_f1"]
    assert [bar.get_height() for bar in bars_ax.containers[1]] == pytest.approx([0.36, 0.14, 0.31, 0.9])
    lines = _lines(figures["curves"].axes[0])
    assert list(lines) == ["demo:1"]  # version 2's run is not in the tracker
    np.testing.assert_allclose(lines["demo:1"][1], _history(store["runs"]["a"], "train/loss")[1], equal_nan=True)

    code, out, err = _cli(capsys, "models", "compare", "demo:1", "demo:2", "--uri", store["uri"], "--plot",
                          "--output-root", str(store["tmp"] / "root"))
    assert code == 0, err
    out_dir = store["tmp"] / "root" / "reports" / "demo-v1-v2"
    assert f"plots: {out_dir / 'metrics.png'}, {out_dir / 'curves.png'}" in out
    assert _png_size(out_dir / "metrics.png") == (650, 320)


def test_constants_match_their_sources_and_help_stays_light():
    from engine.callbacks.anomaly import EVENT_PREFIX
    from launcher.report import ANOMALY_PREFIX

    assert ANOMALY_PREFIX == EVENT_PREFIX
    code = ("import sys; import launcher.commands.report, launcher.commands.predict, launcher.commands.runs, "
            "launcher.commands.models; print(sorted(m for m in ('matplotlib', 'torch', 'transformers') "
            "if m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"
