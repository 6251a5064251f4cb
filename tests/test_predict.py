"""`dialsum predict`: a registered tiny BART summarizes dialogues into `fname,summary`, row for row equal to
`model.generate` called directly with the configured settings, in input order; bad model references exit 2."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from engine.tasks.seq2seq import Seq2SeqEncoder
from engine.store import Registry, open_store
from launcher.cli import main

MAX_SOURCE = 256  # long enough that the dialogues' token lengths differ (and sorting reorders them)
GENERATION = {"num_beams": 2, "max_new_tokens": 10, "min_new_tokens": 3, "length_penalty": 0.8,
              "no_repeat_ngram_size": 2, "early_stopping": True}


@pytest.fixture
def one_thread():
    """Generation here is thousands of tiny ops: one intra-op thread is faster, and does not crawl when the (shared,
    2-core) machine is busy the way spinning OpenMP threads do."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def varied_model_dir(tmp_path_factory, tiny_model_dir):
    """The untrained tiny BART writes the same summary for every dialogue; noise on its weight matrices makes the
    summaries depend on the input, so a summary written to the wrong row would be caught."""
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.add_(torch.randn(param.shape, generator=generator) * 0.3)
    out = tmp_path_factory.mktemp("varied-model")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture
def project(tmp_path, varied_model_dir, mini_data, monkeypatch):
    """A config whose store holds `tiny` v1 (the varied tiny BART) and `tiny` v2 (its checkpoint deleted), and an input
    file of 7 test dialogues."""
    monkeypatch.delenv("DIALSUM_TRACKING_URI", raising=False)
    root = tmp_path / "out"
    with open_store(f"sqlite:///{root / 'dialsum.db'}") as store:
        registry = Registry(store)
        for run_id, checkpoint in (("r1", varied_model_dir), ("r2", tmp_path / "deleted-checkpoint")):
            registry.register("tiny", run_id=run_id, checkpoint_dir=checkpoint, metrics={"rouge_combined_f1": 0.1},
                              metric="rouge_combined_f1", greater_is_better=True, metadata={})
    config = tmp_path / "predict.yaml"
    config.write_text(yaml.safe_dump({
        "experiment": {"output_root": str(root)},
        "model": {"name_or_path": str(varied_model_dir)},
        "data": {"max_source_length": MAX_SOURCE},
        "generation": GENERATION,
    }))
    rows = [json.loads(line) for line in mini_data["test_jsonl"].read_text().splitlines()[:7]]
    source = tmp_path / "test.csv"
    with open(source, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "dialogue"])
        writer.writerows((r["fname"], r["dialogue"]) for r in rows)
    return {"config": config, "input": source, "rows": rows, "out": tmp_path / "sub" / "submission.csv"}


def _predict(project, model_ref: str, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["predict", str(project["config"]), "--model", model_ref, "--input", str(project["input"]),
                 "--out", str(project["out"]), *extra])
    return code, capsys.readouterr().err


def test_predictions_match_direct_generation_in_input_order(project, varied_model_dir, capsys, one_thread):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from engine.modeling import decode_summaries

    code, err = _predict(project, "tiny@best", capsys, "--batch-size", "3")
    assert code == 0, err
    with open(project["out"], newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["fname", "summary"]
        written = list(reader)
    assert [r["fname"] for r in written] == [r["fname"] for r in project["rows"]]
    assert not list(project["out"].parent.glob(".*.tmp"))  # atomic write left no temp file

    model = AutoModelForSeq2SeqLM.from_pretrained(varied_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(varied_model_dir)
    expected, lengths = [], []
    for row in project["rows"]:
        ids = tokenizer(row["dialogue"], max_length=MAX_SOURCE, truncation=True, return_tensors="pt")
        lengths.append(ids["input_ids"].shape[1])
        with torch.inference_mode():
            expected += decode_summaries(tokenizer, model.generate(**ids, **GENERATION))
    assert lengths != sorted(lengths, reverse=True)  # longest-first batching reorders these rows
    assert [r["summary"] for r in written] == expected
    assert len(set(expected)) > 1  # distinct summaries, so a row put in the wrong place would show
    for summary in expected:
        assert summary and not any(t in summary for t in ("<s>", "</s>", "<pad>", "<unk>"))

    # the same dialogues as JSON lines (with their reference columns, which predict ignores) give the same file
    csv_text = project["out"].read_text(encoding="utf-8")
    project["input"] = project["input"].with_suffix(".jsonl")
    project["input"].write_text("".join(json.dumps(r) + "\n" for r in project["rows"]), encoding="utf-8")
    code, err = _predict(project, "tiny:1", capsys)
    assert code == 0, err
    assert project["out"].read_text(encoding="utf-8") == csv_text


@pytest.mark.parametrize("ref, message", [
    ("nope", "no model 'nope'"),
    ("tiny:9", "has no version 9"),
    ("tiny@production", "has no version at 'production'"),
    ("tiny:x", "expected NAME:VERSION"),
    ("tiny:2", "checkpoint directory"),
])
def test_bad_model_reference_exits_2(project, capsys, ref, message):
    code, err = _predict(project, ref, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not project["out"].exists()


def test_bad_input_and_batch_size_exit_2(project, capsys, tmp_path):
    code, err = _predict(project, "tiny", capsys, "--batch-size", "0")
    assert code == 2 and "--batch-size" in err
    project["input"] = tmp_path / "missing.csv"
    code, err = _predict(project, "tiny", capsys)
    assert code == 2 and "--input: no such file" in err


def test_generation_kwargs_follow_config():
    from engine.tasks.seq2seq import Seq2SeqTask
    from engine.schema import GenerationConfig

    generation_kwargs = Seq2SeqTask().generation_kwargs
    beams = generation_kwargs(GenerationConfig(num_beams=4, max_new_tokens=50, min_new_tokens=5, early_stopping=True))
    assert (beams["max_length"], beams["min_length"], beams["early_stopping"]) == (51, 6, True)
    greedy = generation_kwargs(GenerationConfig(num_beams=1, min_new_tokens=0, early_stopping=True))
    assert (greedy["num_beams"], greedy["min_length"], greedy["early_stopping"]) == (1, 0, False)


@pytest.fixture(scope="module")
def varied_dev(varied_model_dir, mini_data):
    """The varied tiny BART, its tokenizer and 16 dev dialogues (token lengths differ at MAX_SOURCE)."""
    from engine.data import read_dialogues, tokenize_split
    from engine.modeling import load_model_and_tokenizer
    from engine.schema import ModelConfig

    model, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(varied_model_dir)), [])
    rows = read_dialogues(mini_data["dev_csv"], require_summary=True, limit=16)
    dev = {labels: tokenize_split(rows, tokenizer, Seq2SeqEncoder(MAX_SOURCE, 64),
                                  with_labels=labels, cache_dir=None) for labels in (False, True)}
    return model.eval(), tokenizer, dev


def _generate_in_dataset_order(model, tokenizer, dataset, generation, batch_size: int) -> list[str]:
    import torch

    from engine.modeling import decode_summaries
    from engine.tasks.seq2seq import Seq2SeqTask

    out: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            rows = [{"input_ids": dataset[i]["input_ids"], "attention_mask": dataset[i]["attention_mask"]}
                    for i in range(start, min(start + batch_size, len(dataset)))]
            batch = tokenizer.pad(rows, return_tensors="pt")
            out += decode_summaries(tokenizer, model.generate(**batch, **Seq2SeqTask().generation_kwargs(generation)))
    return out


@pytest.mark.parametrize("num_beams", [1, 4])
def test_length_sorted_batches_generate_exactly_the_unsorted_summaries(varied_dev, num_beams, one_thread):
    """Padding is on the right and masked, so a row's summary does not depend on its batch (greedy and beam search)."""
    from engine.data import LengthSorted
    from engine.predict import summarize
    from engine.schema import GenerationConfig

    model, tokenizer, dev = varied_dev
    generation = GenerationConfig(num_beams=num_beams, max_new_tokens=12)
    one_by_one = _generate_in_dataset_order(model, tokenizer, dev[False], generation, batch_size=1)  # no padding
    unsorted = _generate_in_dataset_order(model, tokenizer, dev[False], generation, batch_size=8)
    sorted_ = summarize(model, tokenizer, dev[False], generation, batch_size=8, progress=False)
    assert LengthSorted(dev[False]).order != list(range(16)), "sorting reorders these dialogues"
    assert len(set(one_by_one)) > 8, "distinct summaries: a row in the wrong place would show"
    assert sorted_ == unsorted == one_by_one


def test_trainer_evaluation_runs_longest_first_and_returns_dataset_order(varied_dev, tmp_path, one_thread):
    """The engine's evaluation path: a LengthSorted eval set through OOMBackoffTrainer's eval loop (length-grouped
    training must not reshuffle it), predictions put back in dataset order by `evaluation_summaries`."""
    from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

    from engine.data import LengthSorted
    from engine.tasks.seq2seq import Seq2SeqTask
    from engine.oom import OOMBackoffTrainer
    from engine.recorder import NullRecorder
    from engine.schema import GenerationConfig
    from engine.trainer import evaluation_summaries

    model, tokenizer, dev = varied_dev
    generation = GenerationConfig(num_beams=2, max_new_tokens=12)
    model.generation_config.update(**Seq2SeqTask().generation_kwargs(generation))
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path), use_cpu=True, per_device_eval_batch_size=5,
                                    predict_with_generate=True, generation_max_length=generation.max_new_tokens + 1,
                                    generation_num_beams=generation.num_beams, report_to="none",
                                    train_sampling_strategy="group_by_length")
    eval_set = LengthSorted(dev[True])
    trainer = OOMBackoffTrainer(model=model, args=args, eval_dataset=eval_set, processing_class=tokenizer,
                                data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                                recorder=NullRecorder())
    widths = [batch["input_ids"].shape[1] for batch in trainer.get_eval_dataloader()]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1], "batches run longest first"
    summaries = evaluation_summaries(trainer.predict(eval_set), eval_set, tokenizer)
    assert summaries == _generate_in_dataset_order(model, tokenizer, dev[True], generation, batch_size=1)


@pytest.mark.parametrize("largest, rows, world, expected", [
    (64, 100, 2, 50),   # one round: 50 rows a rank, not 64 and 36
    (64, 500, 2, 63),   # four rounds of 2 x 63 (the last one short)
    (64, 16, 2, 8),
    (4, 100, 2, 4),     # the cap binds
    (64, 100, 1, 50),   # two batches of 50 rather than 64 + 36
])
def test_generation_batches_share_rows_evenly_across_ranks(largest, rows, world, expected):
    from engine.trainer import balanced_eval_batch

    assert balanced_eval_batch(largest, rows, world) == expected
