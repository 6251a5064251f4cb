"""Run reports and comparisons: PNG plots of the tracker's history with events marked, and a markdown summary.

Figures are built with matplotlib's object API (`Figure`, no pyplot): no global figure registry, no GUI backend, nothing
to close, PNGs rendered by Agg. The plotting functions return the figures so callers (and tests) can read back exactly
what was drawn; `save_figures` renders and writes them atomically.
"""
from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from engine.atomic import atomic_write_bytes, atomic_write_text
from engine.rouge import METRIC_KEYS
from launcher.display import fmt

GIB = 2.0 ** 30
ANOMALY_PREFIX = "anomaly_"  # engine.callbacks.anomaly.EVENT_PREFIX (not imported: it pulls in transformers)
MARKED_EVENTS = ("oom_backoff", "training_stopped", "preempted")  # drawn as vertical lines, like anomalies
EVENT_COLORS = {"oom_backoff": "tab:orange", "training_stopped": "black", "preempted": "tab:purple"}
EVENT_GID = "event:"  # gid prefix of event lines, so readers can tell them from metric lines
CURVE_KEYS = ("train/loss", "eval/rouge_combined_f1")  # what comparisons overlay, one subplot each


@dataclass(frozen=True)
class Axis:
    """One subplot: the metric keys it draws (exact names, or prefixes ending in '/') and a unit scale."""
    ylabel: str
    keys: tuple[str, ...]
    scale: float = 1.0


@dataclass(frozen=True)
class Panel:
    """One PNG: `name`.png with one subplot per Axis that has data."""
    name: str
    title: str
    axes: tuple[Axis, ...]


RUN_PANELS = (
    Panel("loss", "Loss", (Axis("loss", ("train/loss", "eval/loss")),)),
    Panel("rouge", "Evaluation ROUGE F1", (Axis("F1", tuple(f"eval/{k}" for k in METRIC_KEYS)),)),
    Panel("learning_rate", "Learning rate", (Axis("learning rate", ("train/learning_rate",)),)),
    Panel("grad_norm", "Gradient norm", (Axis("grad norm", ("train/grad_norm",)),)),
    Panel("memory", "Memory", (Axis("GiB", ("memory/",), scale=1 / GIB),)),
    Panel("throughput", "Throughput", (Axis("samples/s", ("perf/samples_per_s",)),
                                       Axis("tokens/s", ("perf/tokens_per_s",)))),
)


@dataclass
class RunReport:
    out_dir: Path
    files: list[Path]  # the PNGs, then report.md
    numbers: dict[str, Any]


# ---------------------------------------------------------------------------------------------------- data

def series(history: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, in step order; NaN values stay (they draw as gaps)."""
    points = [(h["step"], float(h[key]) * scale) for h in history if key in h]
    return [s for s, _ in points], [v for _, v in points]


def matching_keys(history: list[dict[str, Any]], patterns: tuple[str, ...]) -> list[str]:
    """Metric keys in the history that an Axis draws, in the Axis' order (prefix matches sorted)."""
    present = {k for h in history for k in h if k != "step"}
    keys: list[str] = []
    for pattern in patterns:
        if pattern.endswith("/"):
            keys += sorted(k for k in present if k.startswith(pattern) and k not in keys)
        elif pattern in present:
            keys.append(pattern)
    return keys


def is_marked(kind: str) -> bool:
    return kind.startswith(ANOMALY_PREFIX) or kind in MARKED_EVENTS


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def key_numbers(run: dict[str, Any]) -> dict[str, Any]:
    """The numbers a reader looks for first: outcome, losses, best ROUGE and its step, peak memory, throughput, events,
    then everything the run recorded in its summary (best/*, final/*)."""
    history = run["history"]
    numbers: dict[str, Any] = {"status": run["status"], "duration_s": run["duration_s"],
                               "last_step": history[-1]["step"] if history else None}
    steps, losses = series(history, "train/loss")
    finite_losses = _finite(losses)
    if losses:
        numbers["train_loss_last"] = losses[-1]
        numbers["train_loss_min"] = min(finite_losses) if finite_losses else None
        numbers["train_loss_non_finite"] = len(losses) - len(finite_losses)
    steps, combined = series(history, "eval/rouge_combined_f1")
    if _finite(combined):
        best = max(_finite(combined))
        numbers["eval_rouge_combined_f1_best"] = best
        numbers["eval_rouge_combined_f1_best_step"] = steps[combined.index(best)]
    peaks = [v for k in matching_keys(history, ("memory/",)) for v in _finite(series(history, k)[1])]
    if peaks:
        numbers["memory_peak_gib"] = max(peaks) / GIB
    for key in ("perf/samples_per_s", "perf/tokens_per_s"):
        values = _finite(series(history, key)[1])
        if values:
            numbers[f"{key.split('/')[1]}_mean"] = sum(values) / len(values)
    numbers["events"] = dict(Counter(e["kind"] for e in run["events"]))
    numbers.update(sorted(run["summary"].items()))
    return numbers


# ---------------------------------------------------------------------------------------------------- figures

def _mark_events(ax, events: list[dict[str, Any]]) -> None:
    """A dashed vertical line at each anomaly/OOM/stop event's step; one legend entry per kind."""
    labelled: set[str] = set()
    for e in events:
        if not is_marked(e["kind"]):
            continue
        kind = e["kind"]
        ax.axvline(e["step"], color=EVENT_COLORS.get(kind, "tab:red"), linestyle="--", linewidth=1, alpha=0.8,
                   label=kind if kind not in labelled else "_nolegend_", gid=EVENT_GID + kind)
        labelled.add(kind)


def _plot_line(ax, steps: list[int], values: list[float], label: str) -> None:
    ax.plot(steps, values, label=label, marker="o" if len(steps) <= 30 else None, markersize=3, linewidth=1.2)


def _new_figure(rows: int, cols: int = 1) -> Figure:
    fig = Figure(figsize=(6.5 * cols, 3.2 * rows), layout="constrained")
    fig.subplots(rows, cols, sharex=cols == 1, squeeze=False)
    return fig


def run_figures(run: dict[str, Any]) -> dict[str, Figure]:
    """One figure per RUN_PANELS entry that has data, keyed by panel name; lines are labelled with their metric key."""
    history, figures = run["history"], {}
    for panel in RUN_PANELS:
        axes = [(axis, keys) for axis in panel.axes if (keys := matching_keys(history, axis.keys))]
        if not axes:
            continue
        fig = _new_figure(len(axes))
        for ax, (axis, keys) in zip(fig.axes, axes):
            for key in keys:
                _plot_line(ax, *series(history, key, axis.scale), label=key)
            _mark_events(ax, run["events"])
            ax.set_ylabel(axis.ylabel)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        fig.axes[-1].set_xlabel("step")
        fig.suptitle(f"{panel.title} - run {run['run_id']}")
        figures[panel.name] = fig
    return figures


def metric_bars(title: str, labels: list[str], metrics: dict[str, list[float | None]]) -> Figure:
    """Grouped bar chart: one group per metric, one bar per label (run or model version); missing values are gaps."""
    fig = _new_figure(1)
    ax = fig.axes[0]
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(metrics))]
        heights = [math.nan if v[i] is None else v[i] for v in metrics.values()]
        bars = ax.bar(xs, heights, width=width, label=label)
        ax.bar_label(bars, fmt="%.3g", fontsize="x-small")
    ax.set_xticks(range(len(metrics)), list(metrics), rotation=15)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def _rouge_values(metrics: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, float | None]:
    """METRIC_KEYS looked up under the first prefix that has each ('best/' before 'eval/' for runs)."""
    out: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        found = [metrics[p + key] for p in prefixes if isinstance(metrics.get(p + key), (int, float))]
        out[key] = float(found[0]) if found else None
    return out


def _curves(runs: list[tuple[str, dict[str, Any]]], keys: tuple[str, ...], title: str) -> Figure | None:
    """Side-by-side subplots, one per key with data, each overlaying that metric of every run."""
    present = [k for k in keys if any(series(r["history"], k)[0] for _, r in runs)]
    if not present:
        return None
    fig = _new_figure(1, len(present))
    for ax, key in zip(fig.axes, present):
        for label, r in runs:
            steps, values = series(r["history"], key)
            if steps:
                _plot_line(ax, steps, values, label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    return fig


def compare_runs_figures(runs: list[dict[str, Any]]) -> dict[str, Figure]:
    """`curves`: train loss and eval ROUGE-combined of every run overlaid; `metrics`: their ROUGE F1 as bars
    (the run's best/ summary, else its latest eval/ value)."""
    labelled = [(r["run_id"], r) for r in runs]
    figures: dict[str, Figure] = {}
    curves = _curves(labelled, CURVE_KEYS, "runs: " + ", ".join(r["run_id"] for r in runs))
    if curves is not None:
        figures["curves"] = curves
    values = [_rouge_values(r["metrics"], ("best/", "eval/")) for r in runs]
    bars = {k: [v[k] for v in values] for k in METRIC_KEYS if any(v[k] is not None for v in values)}
    if bars:
        figures["metrics"] = metric_bars("ROUGE F1 by run", [r["run_id"] for r in runs], bars)
    return figures


def compare_models_figures(versions: list[dict[str, Any]], runs: list[dict[str, Any] | None]) -> dict[str, Figure]:
    """`metrics`: the versions' registered ROUGE F1 (and each version's selection metric) as bars; `curves`: the
    training curves of the runs that produced them, where the tracker still has those runs."""
    labels = [v["ref"] for v in versions]
    keys = [k for k in METRIC_KEYS if any(k in v["metrics"] for v in versions)]
    keys += sorted({v["metric"] for v in versions} - set(keys))
    figures: dict[str, Figure] = {}
    bars = {k: [v["metrics"].get(k) if isinstance(v["metrics"].get(k), (int, float)) else None for v in versions]
            for k in keys}
    bars = {k: vals for k, vals in bars.items() if any(x is not None for x in vals)}
    if bars:
        figures["metrics"] = metric_bars(f"{versions[0]['name']}: registered metrics", labels, bars)
    tracked = [(label, r) for label, r in zip(labels, runs) if r is not None]
    curves = _curves(tracked, CURVE_KEYS, "training runs of " + ", ".join(labels))
    if curves is not None:
        figures["curves"] = curves
    return figures


# ---------------------------------------------------------------------------------------------------- writing

def save_figures(figures: dict[str, Figure], out_dir: str | Path, prefix: str = "") -> list[Path]:
    """Render each figure to `<out_dir>/<prefix><name>.png` (temp file + rename). Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        path = out_dir / f"{prefix}{name}.png"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def render_markdown(run: dict[str, Any], numbers: dict[str, Any], pngs: list[Path]) -> str:
    lines = [f"# Run {run['run_id']} ({run['name']})", ""]
    for field in ("status", "group", "tags", "created_at", "ended_at", "duration_s", "error"):
        if run.get(field) not in (None, "", []):
            lines.append(f"- {field}: {fmt(run[field])}")
    lines += ["", "## Key numbers", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {fmt(v)} |" for k, v in numbers.items() if k not in ("status", "duration_s")]
    marked = [e for e in run["events"] if is_marked(e["kind"])]
    lines += ["", f"## Marked events ({len(marked)}; drawn as dashed lines)", ""]
    if marked:
        lines += ["| step | kind | data |", "|---|---|---|"]
        lines += [f"| {e['step']} | {e['kind']} | {fmt(e['data']).replace('|', '/')} |" for e in marked]
    else:
        lines.append("none")
    lines += ["", "## Plots", ""]
    lines += [f"### {p.stem}\n\n![{p.stem}]({p.name})\n" for p in pngs] or ["no metrics logged"]
    return "\n".join(lines) + "\n"


def write_run_report(run: dict[str, Any], out_dir: str | Path) -> RunReport:
    """PNGs of every panel with data plus `report.md` (written last, so it only lists files that exist)."""
    out_dir = Path(out_dir)
    pngs = save_figures(run_figures(run), out_dir)
    numbers = key_numbers(run)
    md = atomic_write_text(out_dir / "report.md", render_markdown(run, numbers, pngs))
    return RunReport(out_dir=out_dir, files=[*pngs, md], numbers=numbers)
