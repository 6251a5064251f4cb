"""The end-to-end slice for real: `dialsum launch` spawns 2 DeepSpeed ZeRO-2 CPU ranks that train the tiny model,
evaluate by generation, and leave one tracked run, one registry version, one W&B offline run and a predictions CSV."""
from __future__ import annotations

import csv
import json

import pytest

from engine.store import Registry, Tracker, open_store
from engine.data import read_dialogues
from engine.rouge import score_summaries
from launch_helpers import REPO_ROOT, run_dialsum, small_config, wandb_history
from test_run_end import assert_registered_with_submission, small_test_file


@pytest.mark.slow
def test_launch_two_deepspeed_ranks_trains_tracks_and_registers(tmp_path, tiny_model_dir):
    test_file, fnames = small_test_file(tmp_path)
    config = small_config(tmp_path, tiny_model_dir, data={"test_file": str(test_file)})
    secret = "sekrit-4f1c9a"  # what a user's key looks like in the environment; it must land nowhere
    proc = run_dialsum("launch", str(config), "--nproc", "2", env={"WANDB_API_KEY": secret, "HF_TOKEN": secret})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert secret not in proc.stdout + proc.stderr
    console = proc.stdout + proc.stderr  # quiet by default: rank 0 alone, known library noise filtered at its source
    assert "[rank1]" not in console
    for noise in ("Running in WANDB offline mode", "The new embeddings will be initialized", "Loading weights",
                  "FutureWarning", "Using default tokenizer"):
        assert noise not in console, noise

    out = tmp_path / "out"
    store = open_store(f"sqlite:///{out / 'dialsum.db'}")
    runs = Tracker(store).list_runs()
    assert len(runs) == 1, "exactly one run, not one per rank"
    run = Tracker(store).get_run(runs[0]["run_id"])
    assert run["status"] == "completed"
    assert run["plan"]["world_size"] == 2 and run["plan"]["zero_stage"] == 2 and run["plan"]["use_deepspeed"]

    losses = [h["train/loss"] for h in run["history"] if "train/loss" in h]
    assert len(losses) >= 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, f"training loss did not go down: {losses}"

    version = Registry(store).get("e2e", "latest")
    assert version["version"] == 1 and version["run_id"] == run["run_id"]
    meta = version["metadata"]
    assert meta["architecture"] and meta["base_model"] == str(tiny_model_dir) and len(meta["git_commit"]) == 40
    assert set(meta["data_hashes"]) == {"train", "eval"}
    combined = version["metrics"]["rouge_combined_f1"]
    parts = sum(version["metrics"][k] for k in ("rouge1_f1", "rouge2_f1", "rougeL_f1"))
    assert combined == pytest.approx(parts) and combined > 0
    assert (out / "runs" / run["run_id"] / "model" / "model.safetensors").exists()
    assert_registered_with_submission(tmp_path, fnames)
    rank1_logs = list((out / "runs" / run["run_id"] / "logs").glob("*/attempt_0/1/stderr.log"))
    assert len(rank1_logs) == 1  # rank 1 writes its output to its own file

    wandb_runs = list((out / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1, "one W&B run for the job, written by rank 0 alone"
    history = wandb_history(wandb_runs[0])
    eval_rows = [h for h in history if "eval/rouge_combined_f1" in h]
    assert [h["_step"] for h in eval_rows] == [8, 16]

    with open(out / "runs" / run["run_id"] / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["fname"] for r in rows] == [f"dev_{i}" for i in range(12)]
    assert all(set(r) == {"fname", "summary"} for r in rows)
    # System metrics of every rank, gathered to rank 0 at each train log (other ranks never write).
    system = [h for h in run["history"] if "train/loss" in h]
    assert all(h["rank0/memory/rss_bytes"] > 0 and h["rank1/memory/rss_bytes"] > 0 for h in system)
    assert all("rank1/system/cpu_percent" in h for h in system)

    # Predicted vs measured peak memory is on the run, and `dialsum plan` shows it for the next run of this model.
    peaks = [e["data"] for e in run["events"] if e["kind"] == "memory_peaks"]
    assert len(peaks) == 1 and len(peaks[0]["peak_bytes_per_rank"]) == 2 and peaks[0]["predicted_bytes"] > 0
    plan = run_dialsum("plan", str(config), "--nproc", "2", "--json")
    assert plan.returncode == 0, plan.stderr
    history = json.loads(plan.stdout)["past_predictions"]
    assert [h["run_id"] for h in history] == [run["run_id"]]
    assert history[0]["measured_bytes"] == max(peaks[0]["peak_bytes_per_rank"])

    leaked = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert leaked == [], f"secret written to {leaked}"

    # The registered metrics are the ROUGE of exactly these predictions against the dev references.
    refs = [d.references for d in read_dialogues(REPO_ROOT / "data/dialogsum-mini/dev.csv", require_summary=True, limit=12)]
    rescored = score_summaries([r["summary"] for r in rows], refs)
    assert rescored["rouge_combined_f1"] == pytest.approx(combined)
