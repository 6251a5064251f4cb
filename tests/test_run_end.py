"""What happens after training, at every parallelism: the model is registered before anything optional runs, and
`data.test_file` is summarized into submission.csv by a plain model load (under ZeRO-3 transformers' process-wide
DeepSpeed setting once made that load a `deepspeed.zero.Init` for the finished world, and every such run failed)."""
from __future__ import annotations

import csv

import pytest

from engine.data import read_dialogues
from engine.store import Registry, Tracker, open_store
from launch_helpers import REPO_ROOT, run_dialsum, small_config

TEST_ROWS = 5


def small_test_file(tmp_path):
    """What a competition gives: fname, dialogue (a few rows of the shipped test split)."""
    path = tmp_path / "test.csv"
    rows = read_dialogues(REPO_ROOT / "data/dialogsum-mini/test.csv", require_summary=False, limit=TEST_ROWS)
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows([("fname", "dialogue"), *((r.fname, r.dialogue) for r in rows)])
    return path, [r.fname for r in rows]


def assert_registered_with_submission(tmp_path, fnames: list[str]) -> dict:
    store = open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}")
    [summary] = Tracker(store).list_runs()
    run = Tracker(store).get_run(summary["run_id"])
    assert run["status"] == "completed", run["error"]
    version = Registry(store).get("e2e", "latest")
    assert version["run_id"] == run["run_id"]
    submission = tmp_path / "out" / "runs" / run["run_id"] / "submission.csv"
    with open(submission, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["fname"] for r in rows] == fnames and all(r["summary"].strip() for r in rows)
    [event] = [e for e in run["events"] if e["kind"] == "submission"]
    assert event["data"]["rows"] == len(fnames)
    return run


DDP, ZERO1, ZERO3 = {"deepspeed": False, "zero_stage": None}, {"zero_stage": 1}, {"zero_stage": 3}


@pytest.mark.slow
@pytest.mark.parametrize("model, parallel", [("bart", DDP), ("bart", ZERO1), ("bart", ZERO3), ("llama", DDP),
                                             ("llama", ZERO3)],
                         ids=["bart-ddp", "bart-zero1", "bart-zero3", "llama-ddp", "llama-zero3"])
def test_two_ranks_register_and_write_the_submission(tmp_path, tiny_model_dir, tiny_llama_dir, model, parallel):
    """Both tasks: the encoder-decoder and the decoder-only model, trained with evaluation by generation under plain
    DDP and ZeRO (ZeRO-3's evaluation gathers the decoder-only model once, as the plan found it fits)."""
    test_file, fnames = small_test_file(tmp_path)
    config = small_config(tmp_path, tiny_model_dir if model == "bart" else tiny_llama_dir, parallel=parallel,
                          data={"test_file": str(test_file)}, training={"max_steps": 4, "eval_steps": 4})
    proc = run_dialsum("launch", str(config), "--nproc", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "find_unused_parameters=True was specified" not in proc.stdout + proc.stderr  # DDP's warning: off by plan
    run = assert_registered_with_submission(tmp_path, fnames)
    assert run["plan"]["zero_stage"] == (parallel["zero_stage"] or 0)
    assert run["plan"]["use_deepspeed"] == (parallel.get("deepspeed") is not False)
    assert run["plan"]["task"] == {"bart": "seq2seq", "llama": "causal"}[model]


class EventLog:
    """A recorder that keeps the events it is given (what rank 0's recorder would write)."""

    def __init__(self):
        self.events = []

    def log_event(self, step, kind, data):
        self.events.append((step, kind, data))


def test_a_failing_submission_is_an_event_not_a_failed_run(tmp_path, tiny_model_dir):
    from engine.plan import Plan
    from engine.trainer import DialogueSummarizationTrainer

    test_file, _ = small_test_file(tmp_path)
    config = small_config(tmp_path, tiny_model_dir, data={"test_file": str(test_file)})
    from engine.config import load_config

    loaded = load_config([config])
    plan = Plan(run_id="r1", config=loaded.to_dict(), config_sources={}, device="cpu", backend="gloo", nnodes=1,
                nproc_per_node=1, world_size=1, precision="fp32", zero_stage=0, use_deepspeed=False,
                offload_optimizer=False, offload_params=False, gradient_checkpointing=False, micro_batch_size=8,
                gradient_accumulation_steps=1, global_batch_size=8, deepspeed_config=None, eval_batch_size=4)
    broken = tmp_path / "broken-model"  # a model folder whose weights are gone: loading it fails after training
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    recorder = EventLog()
    assert DialogueSummarizationTrainer(plan)._write_submission(broken, recorder, step=6) is None
    [(step, kind, data)] = recorder.events
    assert (step, kind, data["test_file"]) == (6, "submission_failed", str(test_file)) and data["error"]
    assert not (tmp_path / "out" / "runs" / "r1" / "submission.csv").exists()
