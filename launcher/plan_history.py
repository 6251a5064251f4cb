"""How far off were past memory predictions for this model? Read from the tracker's `memory_peaks` events."""
from __future__ import annotations

import logging
import statistics
from pathlib import Path

from engine.schema import DialsumConfig

MAX_RUNS = 10
log = logging.getLogger(__name__)


def past_predictions(cfg: DialsumConfig) -> list[dict]:
    """Newest first: run id, ranks, ZeRO stage, micro-batch, method, predicted and measured peak bytes, relative
    error."""
    from engine.store import Tracker, open_store, store_uri

    uri = store_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return []
    with open_store(uri, create=False) as store:
        return _past_predictions(Tracker(store), cfg)


def _past_predictions(tracker, cfg: DialsumConfig) -> list[dict]:
    rows = []
    for event in tracker.events_of_kind("memory_peaks", status="completed"):
        data, plan = event["data"], event["plan"]
        if event["config"].get("model", {}).get("name_or_path") != cfg.model.name_or_path \
                or not data.get("predicted_bytes"):
            continue
        rows.append({"run_id": event["run_id"], "world_size": plan.get("world_size"), "zero_stage": plan.get("zero_stage"),
                     "micro_batch_size": plan.get("micro_batch_size"), "device": data["device"],
                     "method": plan.get("method", "full"),
                     "predicted_bytes": data["predicted_bytes"], "measured_bytes": data["max_bytes"],
                     "prediction_error": data["prediction_error"],
                     "correction": (plan.get("memory") or {}).get("correction", 1.0)})
        if len(rows) >= MAX_RUNS:
            break
    return rows


def memory_corrections(cfg: DialsumConfig, device: str, methods: tuple[str, ...] = ("full",)) -> dict:
    """{method: (factor, reason)} to scale this model's predicted memory by, for each of `methods` with past runs: the
    median measured/predicted peak of its past runs on the same kind of device with that training method (a frozen
    base's memory is another model's), each taken against its plan's uncorrected formula (so corrections do not
    compound). The store is read once for all methods."""
    try:
        rows = [r for r in past_predictions(cfg) if r["device"] == device]
    except Exception as exc:  # a store that cannot be read (locked, unreachable, older schema) must not stop a plan
        log.warning("memory history unavailable (%s): planning without it", " ".join(str(exc).split())[:200])
        return {}
    corrections = {}
    for method in methods:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        ratio = statistics.median(r["measured_bytes"] * r["correction"] / r["predicted_bytes"] for r in runs)
        named = f"{', '.join(r['run_id'] for r in runs[:3])}{', ...' if len(runs) > 3 else ''}"
        corrections[method] = ratio, (f"predictions x{ratio:.2f}: median measured/predicted peak of {len(runs)} past "
                                      f"run(s) of this model on {device}{'' if method == 'full' else ' with ' + method}"
                                      f" ({named})")
    return corrections
