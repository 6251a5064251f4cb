"""LoRA, DoRA and QLoRA (engine/adapters.py): targets checked from the config before any rank starts; adapters trained
under ZeRO-3 on 2 CPU ranks and saved whole; registered with what they are; `dialsum predict` with the adapter writes
the evaluation's summaries again; `dialsum export --merge` gives a full model that summarizes the same; QLoRA's
4-bit base on this CPU; a preempted adapter run resumes onto the loss curve of an uninterrupted one."""
from __future__ import annotations

import csv
import json
import os

import pytest
from safetensors.torch import load_file

from engine.adapters import check_adapters
from engine.config import config_from_dict
from engine.data import read_dialogues
from engine.errors import UserError
from engine.plan import PREEMPTED_EXIT_CODE
from engine.rouge import score_summaries
from engine.store import Registry, Tracker, open_store
from launch_helpers import REPO_ROOT, run_dialsum, small_config


def test_target_modules_that_match_no_layer_are_refused_naming_the_layers():
    from launcher.memory_estimate import model_spec

    neox = model_spec({"model_type": "gpt_neox", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "intermediate_size": 64, "vocab_size": 100})
    assert set(neox.linear_layers) == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    cfg = config_from_dict({"model": {"name_or_path": "x"}, "training": {"method": "lora"},
                            "lora": {"target_modules": ["q_proj", "v_proj", "dense"]}})
    with pytest.raises(UserError, match=r"lora.target_modules: q_proj, v_proj match no layer of gpt_neox; its linear "
                                        r"layers are dense, dense_4h_to_h, dense_h_to_4h, query_key_value"):
        check_adapters(cfg, neox.model_type, list(neox.linear_layers))
    cfg.lora.target_modules = ["query_key_value", "dense"]
    check_adapters(cfg, neox.model_type, list(neox.linear_layers))


def test_a_launch_with_a_wrong_target_fails_before_any_rank_starts(tmp_path, tiny_llama_dir):
    config = small_config(tmp_path, tiny_llama_dir, training={"method": "lora"},
                          lora={"target_modules": ["query_key_value"]})
    proc = run_dialsum("launch", str(config), "--nproc", "2", timeout=120)
    assert proc.returncode == 2 and "match no layer of llama" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "runs").exists()


def dev_subset(tmp_path, n: int = 12):
    path = tmp_path / "dev12.csv"
    rows = read_dialogues(REPO_ROOT / "data/dialogsum-mini/dev.csv", require_summary=True, limit=n)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("fname", "dialogue", "summary"), *((r.fname, r.dialogue, r.references[0])
                                                                      for r in rows)])
    return path, [r.references for r in rows]


def summaries(path) -> list[str]:
    with open(path, newline="") as fh:
        return [r["summary"] for r in csv.DictReader(fh)]


@pytest.mark.slow
def test_lora_under_zero3_saves_the_whole_adapter_and_predict_and_merge_reproduce_it(tmp_path, tiny_model_dir):
    """BART with LoRA on q/v and DoRA's magnitudes off, ZeRO-3 on 2 ranks: every adapter tensor is saved (trl#4416:
    40-byte adapters under ZeRO-3), trained (LoRA's B starts at zero), registered as an adapter of its base;
    `dialsum predict` with it writes the best evaluation's summaries word for word, and the merged model's ROUGE is
    the adapter's within 0.002."""
    config = small_config(tmp_path, tiny_model_dir, parallel={"zero_stage": 3},
                          training={"method": "lora", "learning_rate": 1e-2},
                          lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    proc = run_dialsum("launch", str(config), "--nproc", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}")
    [run] = Tracker(store).list_runs()
    version = Registry(store).get("e2e", "best")
    meta = version["metadata"]
    assert meta["method"] == "lora" and meta["adapter"]["r"] == 4 and meta["adapter_base_model"] == str(tiny_model_dir)
    assert 0 < meta["trainable_parameters"] < meta["total_parameters"] / 10
    model_dir = tmp_path / "out" / "runs" / run["run_id"] / "model"
    tensors = load_file(model_dir / "adapter_model.safetensors")
    lora = {k: v for k, v in tensors.items() if ".lora_" in k}
    adapted = 2 * 2 + 2 * 2 * 2  # q and v: 2 encoder layers' self-attention, 2 decoder layers' self- and cross-
    assert len(lora) == 2 * adapted, sorted(lora)[:6]  # A and B per adapted linear layer
    assert all(v.norm() > 0 for k, v in lora.items() if "lora_B" in k), "B starts at zero: these were trained"

    dev, references = dev_subset(tmp_path)
    best = tmp_path / "out" / "runs" / run["run_id"] / "predictions.csv"
    proc = run_dialsum("predict", str(config), "--model", "e2e@best", "--input", str(dev), "--out",
                       str(tmp_path / "adapter.csv"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summaries(tmp_path / "adapter.csv") == summaries(best), "the evaluation's summaries, word for word"
    proc = run_dialsum("export", str(config), "--model", "e2e@best", "--merge", str(tmp_path / "merged"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "merged" / "model.safetensors").exists() and not (tmp_path / "merged" / "adapter_config.json").exists()
    import torch

    from engine.config import load_config
    from engine.predict import summarize_file

    (tmp_path / "m").mkdir()
    cfg = load_config([small_config(tmp_path / "m", tmp_path / "merged")]).config
    out, _ = summarize_file(cfg, tmp_path / "merged", dev, tmp_path / "merged.csv", batch_size=4,
                            device=torch.device("cpu"))
    adapter_rouge = score_summaries(summaries(tmp_path / "adapter.csv"), references)["rouge_combined_f1"]
    merged_rouge = score_summaries(summaries(out), references)["rouge_combined_f1"]
    assert abs(merged_rouge - adapter_rouge) <= 0.002, (merged_rouge, adapter_rouge)


@pytest.mark.slow
def test_qlora_trains_a_4bit_base_on_cpu_ranks(tmp_path, tiny_llama_dir):
    config = small_config(tmp_path, tiny_llama_dir, parallel={"deepspeed": False, "zero_stage": None},
                          training={"method": "qlora", "max_steps": 4, "eval_steps": 4},
                          lora={"r": 4, "target_modules": ["all-linear"]})
    proc = run_dialsum("launch", str(config), "--nproc", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}")
    [run] = Tracker(store).list_runs()
    run = Tracker(store).get_run(run["run_id"])
    assert run["status"] == "completed" and Registry(store).get("e2e", "best")["metadata"]["method"] == "qlora"
    card = json.loads((tmp_path / "out" / "runs" / run["run_id"] / "model" / "dialsum-model.json").read_text())
    assert card["method"] == "qlora" and card["task"] == "causal"


@pytest.mark.slow
def test_a_preempted_adapter_run_resumes_onto_the_uninterrupted_loss_curve(tmp_path, tiny_llama_dir):
    """LoRA with dropout on 2 DDP ranks: SIGUSR1 at step 5, resume from the checkpoint, and every later step's loss
    within 1e-4 of an uninterrupted run's (adapter weights, optimizer moments, RNG and data order restored)."""
    common = dict(parallel={"deepspeed": False, "zero_stage": None},
                  training={"method": "lora", "max_steps": 12, "eval_strategy": "no", "logging_steps": 1},
                  lora={"r": 4, "dropout": 0.1, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")])}
    (tmp_path / "whole").mkdir(), (tmp_path / "cut").mkdir()
    whole = small_config(tmp_path / "whole", tiny_llama_dir, **common)
    assert run_dialsum("launch", str(whole), "--nproc", "2", env=env).returncode == 0
    signal = [{"path": "fault_callbacks:Fault", "kwargs": {"rank": 0, "step": 5, "action": "signal_parent"}}]
    cut = small_config(tmp_path / "cut", tiny_llama_dir, callbacks=signal, **common)
    proc = run_dialsum("launch", str(cut), "--nproc", "2", "--run-id", "cut", env=env)
    assert proc.returncode == PREEMPTED_EXIT_CODE, proc.stdout[-2000:] + proc.stderr[-2000:]
    resumed = small_config(tmp_path / "cut", tiny_llama_dir, **common)
    proc = run_dialsum("launch", str(resumed), "--nproc", "2", "--run-id", "cut", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    def losses(root, run_id=None):
        tracker = Tracker(open_store(f"sqlite:///{root / 'out' / 'dialsum.db'}"))
        run = tracker.get_run(run_id or tracker.list_runs()[0]["run_id"])
        return run, {h["step"]: h["train/loss"] for h in run["history"] if "train/loss" in h}

    _, expected = losses(tmp_path / "whole")
    run, got = losses(tmp_path / "cut", "cut")
    [event] = [e for e in run["events"] if e["kind"] == "resumed"]
    after = [s for s in sorted(expected) if s > event["step"] and s < 12]  # step 12's record holds a mean too
    assert after and max(abs(got[s] - expected[s]) for s in after) <= 1e-4, {s: (got[s], expected[s]) for s in after}
