"""OOM backoff: splitting a micro-batch gives the same gradients, and an OOM injected into one rank's forward pass
under DeepSpeed makes every rank halve its micro-batch and finish the planned steps, with the event recorded."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

from engine.tasks.seq2seq import Seq2SeqEncoder
from engine.data import find_placeholder_tokens, read_dialogues, tokenize_split
from engine.modeling import load_model_and_tokenizer
from engine.oom import OOMBackoffTrainer, split_batch
from engine.recorder import NullRecorder
from engine.schema import ModelConfig
from engine.store import Tracker, open_store
from launch_helpers import REPO_ROOT, run_dialsum, small_config


def test_split_batch_keeps_rows_in_order():
    batch = {"input_ids": torch.arange(10).view(5, 2), "labels": torch.arange(5).view(5, 1), "flag": True}
    parts = split_batch(batch, 2)
    assert [p["input_ids"].shape[0] for p in parts] == [2, 3]
    assert torch.equal(torch.cat([p["labels"] for p in parts]), batch["labels"])
    assert all(p["flag"] is True for p in parts)
    assert len(split_batch(batch, 8)) == 5  # never an empty chunk


def _grads_after_step(trainer, batch, splits: int) -> list[torch.Tensor]:
    trainer.model.zero_grad(set_to_none=True)
    trainer.splits = splits
    trainer.training_step(trainer.model, dict(batch))
    return [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


@pytest.mark.parametrize("accumulation", [1, 2])
def test_split_chunks_give_the_same_gradients(tmp_path, tiny_model_dir, accumulation):
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir, dropout=0.0, attention_dropout=0.0,
                                                  activation_dropout=0.0)
    model.accepts_loss_kwargs = False
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = read_dialogues(REPO_ROOT / "data/dialogsum-mini/train.csv", require_summary=True, limit=4)
    data = tokenize_split(rows, tokenizer, Seq2SeqEncoder(64, 16), with_labels=True, cache_dir=None)
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    batch = collator([data[i] for i in range(4)])
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none",
                                    per_device_train_batch_size=4, gradient_accumulation_steps=accumulation)
    trainer = OOMBackoffTrainer(model=model, args=args, processing_class=tokenizer, recorder=NullRecorder())
    trainer.current_gradient_accumulation_steps = accumulation  # what the training loop sets before each step
    whole = _grads_after_step(trainer, batch, 1)
    tokens_after_whole = trainer.state.num_input_tokens_seen
    split = _grads_after_step(trainer, batch, 4)
    assert tokens_after_whole == int(batch["attention_mask"].sum()) > 0
    assert trainer.state.num_input_tokens_seen == 2 * tokens_after_whole, "a split micro-batch counts its tokens once"
    assert len(whole) == len(split) > 0
    for a, b in zip(whole, split):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_injected_oom_on_one_rank_backs_off_on_all_ranks_under_deepspeed(tmp_path, tiny_model_dir):
    # 48 rows = 6 steps x global batch 8: one epoch, so every row's source tokens are counted exactly once
    config = small_config(tmp_path, tiny_model_dir, data={"max_train_samples": 48},
                          training={"max_steps": 6, "eval_strategy": "no", "global_batch_size": 8},
                          callbacks=[{"path": "oom_injection:InjectOOM",
                                      "kwargs": {"step": 2, "rank": 1, "out": str(tmp_path)}}])
    proc = run_dialsum("launch", str(config), "--nproc", "2", env={"PYTHONPATH": str(REPO_ROOT / "tests")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    tracker = Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}"))
    [summary] = tracker.list_runs()
    run = tracker.get_run(summary["run_id"])
    assert run["status"] == "completed"
    events = [e for e in run["events"] if e["kind"] == "oom_backoff"]
    assert len(events) == 1, "one agreed backoff, recorded once by rank 0"
    assert events[0]["step"] == 2
    assert events[0]["data"] == {"micro_batch_size": 2, "chunks_per_batch": 2, "gradient_accumulation_steps": 2,
                                 "global_batch_size": 8}
    losses = {h["step"]: h["train/loss"] for h in run["history"] if "train/loss" in h}
    assert max(losses) == 6 and all(loss == loss and loss < 20 for loss in losses.values())

    # tokens: every rank's trainer state holds the sum over both ranks, counted once across the split
    mini = REPO_ROOT / "data/dialogsum-mini"
    rows = read_dialogues(mini / "train.csv", require_summary=True, limit=48)
    tags = find_placeholder_tokens(rows + read_dialogues(mini / "dev.csv", require_summary=True, limit=12))
    _, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(tiny_model_dir)), tags)
    data = tokenize_split(rows, tokenizer, Seq2SeqEncoder(128, 32), with_labels=True, cache_dir=None)
    expected = sum(len(data[i]["input_ids"]) for i in range(len(data)))
    counted = [int((tmp_path / f"tokens_rank{r}.txt").read_text()) for r in (0, 1)]
    assert counted == [expected, expected]
    tokens_per_s = [h["perf/tokens_per_s"] for h in run["history"] if "perf/tokens_per_s" in h]
    assert tokens_per_s and all(t > 0 for t in tokens_per_s)


@pytest.mark.slow
def test_oom_deep_in_a_zero3_forward_restarts_from_the_checkpoint_at_half_the_micro_batch(tmp_path, tiny_model_dir):
    """ZeRO-3, 2 ranks: rank 1 runs out of memory in the decoder's last layer at step 10, after the forward's earlier
    all-gathers (rank 0 is then inside the next one: no agreement can reach it). The rank exits 76, the launcher
    records `oom_restart` and restarts the run at micro-batch 2 x accumulation 2 (global batch 8 kept) from
    checkpoint-8, which completes the 16 steps, registers the model and writes the submission."""
    from test_run_end import assert_registered_with_submission, small_test_file

    test_file, fnames = small_test_file(tmp_path)
    config = small_config(tmp_path, tiny_model_dir, parallel={"zero_stage": 3}, data={"test_file": str(test_file)},
                          callbacks=[{"path": "oom_injection:InjectOOM",
                                      "kwargs": {"step": 9, "rank": 1, "module": "model.decoder.layers.1",
                                                 "micro_batch_size": 4}}])
    proc = run_dialsum("launch", str(config), "--nproc", "2", "--run-id", "oom3",
                       env={"PYTHONPATH": str(REPO_ROOT / "tests")}, timeout=500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ran out of memory in a ZeRO-3 forward" in proc.stdout
    run = Tracker(open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}")).get_run("oom3")
    assert run["status"] == "completed"
    [restart] = [e for e in run["events"] if e["kind"] == "oom_restart"]
    assert restart["step"] == 8 and restart["data"]["checkpoint"] == "checkpoint-8"
    assert restart["data"]["micro_batch_size"] == [4, 2] and restart["data"]["gradient_accumulation_steps"] == [1, 2]
    assert restart["data"]["global_batch_size"] == 8 and restart["data"]["failing_rank"] == 1
    [resumed] = [e for e in run["events"] if e["kind"] == "resumed"]
    assert resumed["step"] == 8
    assert not [e for e in run["events"] if e["kind"] == "oom_backoff"], "no in-step backoff under ZeRO-3"
    plan = json.loads((tmp_path / "out" / "runs" / "oom3" / "plan.json").read_text())
    assert plan["zero_stage"] == 3 and plan["micro_batch_size"] == 2 and plan["gradient_accumulation_steps"] == 2
    assert max(h["step"] for h in run["history"] if "train/loss" in h) == 16
    assert_registered_with_submission(tmp_path, fnames)  # the restarted world of 2 at micro-batch 2 ends as well
