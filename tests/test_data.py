"""engine.data: reading splits (CSV / JSONL, errors naming file, row and key), placeholder tags, tokenization + cache."""
from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from engine.tasks.seq2seq import Seq2SeqEncoder
from engine.compat import fast_encode
from engine.data import (Dialogue, find_placeholder_tokens, read_dialogues, tokenize_split,
                         tokenizer_fingerprint)
from engine.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# -- reading ----------------------------------------------------------------------------------------------------

def test_reads_mini_train_csv(mini_data):
    rows = read_dialogues(mini_data["train_csv"], require_summary=True)
    assert len(rows) == 1000
    first = rows[0]
    assert first.fname == "train_0"
    assert first.dialogue.startswith("#Person1#: Hi, Mr. Smith.") and "\n#Person2#: I found" in first.dialogue
    assert first.references == ["Mr. Smith's getting a check-up, and Doctor Hawkins advises him to have one every year. "
                                "Hawkins'll give some information about their classes and medications to help Mr. Smith "
                                "quit smoking."]
    assert first.topic == "get a check-up"
    assert len({r.fname for r in rows}) == 1000


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_csv_and_jsonl_agree(mini_data, split):
    from_csv = read_dialogues(mini_data[f"{split}_csv"], require_summary=True)
    from_jsonl = read_dialogues(mini_data[f"{split}_jsonl"], require_summary=True)
    assert from_csv == from_jsonl


def test_several_references_in_order(mini_data):
    rows = read_dialogues(mini_data["test_csv"], require_summary=True)
    raw = next(csv.DictReader(open(mini_data["test_csv"], newline="", encoding="utf-8")))
    assert rows[0].references == [raw["summary1"], raw["summary2"], raw["summary3"]]
    assert rows[0].topic == raw["topic1"]


def test_limit_and_optional_summary(tmp_path):
    rows = [[f"d{i}", f"#Person1#: hi {i}"] for i in range(5)] + [["d5", ""]]  # a bad row past the limit is not read
    path = write_csv(tmp_path / "x.csv", ["fname", "dialogue"], rows)
    with pytest.raises(UserError, match="row 6: empty 'dialogue'"):
        read_dialogues(path, require_summary=False)
    rows = read_dialogues(path, require_summary=False, limit=2)
    assert [r.fname for r in rows] == ["d0", "d1"] and rows[0].references == [] and rows[0].topic == ""


def test_summary_columns_sorted_numerically_and_empty_dropped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(json.dumps({"fname": 7, "dialogue": "a", "summary10": "ten", "summary2": "", "summary1": "one"}) + "\n\n")
    (row,) = read_dialogues(path, require_summary=True)
    assert row.fname == "7" and row.references == ["one", "ten"]


def _bad_csv(tmp_path, header, rows):
    return write_csv(tmp_path / "bad.csv", header, rows)


OK = ["#Person1#: hello\n#Person2#: hi", "They greet."]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.csv", "data.eval_file: no such file: "),
    (lambda p: (p / "x.txt").write_text("a") and p / "x.txt", "unknown data format '.txt'"),
    (lambda p: _bad_csv(p, ["fname", "dialogue", "topic"], [["a", "b", "c"]]),
     "bad.csv: missing column 'summary' (expected fname, dialogue, summary[, topic] or summary1..N)"),
    (lambda p: _bad_csv(p, ["name", "dialogue", "summary"], [["a", "b", "c"]]), "missing column 'fname'"),
    # multi-line quoted fields before the bad row: the number counts data rows, not lines
    (lambda p: _bad_csv(p, ["fname", "dialogue", "summary"], [[f"d{i}", *OK] for i in range(16)] + [["d16", "  ", "s"]]),
     "bad.csv: row 17: empty 'dialogue'"),
    (lambda p: _bad_csv(p, ["fname", "dialogue", "summary"], [["d0", *OK], ["d1", "x", ""]]), "row 2: empty 'summary'"),
    (lambda p: _bad_csv(p, ["fname", "dialogue", "summary"], [["d0", *OK], ["d1", *OK], ["d0", *OK]]),
     "row 3: duplicate fname 'd0' (first at row 1)"),
    (lambda p: _bad_csv(p, ["fname", "dialogue", "summary"], [["d0", *OK, "extra"]]), "row 1: 4 fields, the header has 3"),
    (lambda p: _bad_csv(p, ["fname", "dialogue", "summary"], []), "bad.csv: no rows"),
    (lambda p: (p / "b.jsonl").write_text('{"fname": "a", "dialogue": "b", "summary": "c"}\n\n{"fname": "b",\n')
     and p / "b.jsonl", "b.jsonl: line 3: bad JSON"),
    (lambda p: (p / "b.jsonl").write_text('{"fname": "a", "dialogue": "b", "summary": "c"}\n[1]\n') and p / "b.jsonl",
     "line 2: expected a JSON object, got list"),
    (lambda p: (p / "b.jsonl").write_text('{"fname": "a", "dialogue": "b"}\n') and p / "b.jsonl",
     "b.jsonl: line 1: missing column 'summary'"),
    (lambda p: (p / "b.csv").write_bytes(b"fname,dialogue,summary\na,\xff\xfe,c\n") and p / "b.csv", "not UTF-8 text"),
])
def test_bad_input_is_a_user_error_naming_key_file_and_row(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(UserError) as info:
        read_dialogues(path, require_summary=True, key="data.eval_file")
    text = str(info.value)
    assert message in text and "\n" not in text
    assert text.startswith("data.eval_file: ")


def test_error_without_key_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"^no such file: .*nope\.csv$"):
        read_dialogues(tmp_path / "nope.csv", require_summary=True)


def test_placeholder_tokens_from_dialogues_and_references(mini_data):
    tags = find_placeholder_tokens(read_dialogues(mini_data["train_csv"], require_summary=True))
    assert {"#Person1#", "#Person2#"} <= set(tags) and tags == sorted(tags)
    rows = [Dialogue("a", "#Person2#: call #PhoneNumber# or # not a tag # or #1bad#", ["#Person1# and #Address_2# met."])]
    assert find_placeholder_tokens(rows) == ["#Address_2#", "#Person1#", "#Person2#", "#PhoneNumber#"]


# -- tokenization ---------------------------------------------------------------------------------------------------

def _split(mini_data, n=40):
    return read_dialogues(mini_data["train_csv"], require_summary=True, limit=n)


def test_tokenize_truncates_without_padding_and_keeps_metadata(mini_data, tokenizer):
    rows = _split(mini_data)
    ds = tokenize_split(rows, tokenizer, Seq2SeqEncoder(200, 16),
                        with_labels=True, cache_dir=None)
    assert len(ds) == 40 and ds.fnames == [r.fname for r in rows] and ds.references == [r.references for r in rows]
    assert not ds.from_cache
    item = ds[0]
    assert set(item) == {"input_ids", "attention_mask", "labels"}
    assert all(type(t) is int for t in item["input_ids"] + item["labels"])
    assert max(len(ds[i]["input_ids"]) for i in range(40)) == 200
    assert min(len(ds[i]["input_ids"]) for i in range(40)) < 200  # short dialogues are not padded
    assert item["attention_mask"] == [1] * len(item["input_ids"])
    assert item["input_ids"] == tokenizer(rows[0].dialogue, max_length=200, truncation=True)["input_ids"]
    assert item["labels"] == tokenizer(text_target=rows[0].references[0], max_length=16, truncation=True)["input_ids"]
    assert item["input_ids"][-1] == item["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.pad_token_id not in item["input_ids"]

    unlabeled = tokenize_split(rows, tokenizer, Seq2SeqEncoder(64, 16, "summarize: "),
                               with_labels=False, cache_dir=None)
    assert "labels" not in unlabeled[0]
    assert unlabeled[0]["input_ids"] == tokenizer("summarize: " + rows[0].dialogue, max_length=64,
                                                  truncation=True)["input_ids"]


def test_fast_source_encoding_matches_the_tokenizer_call(mini_data, tokenizer):
    texts = [r.dialogue for r in _split(mini_data, 200)]
    for side in ("right", "left"):
        tokenizer.truncation_side = side
        try:
            assert fast_encode(tokenizer, texts, 100) == tokenizer(texts, max_length=100, truncation=True)["input_ids"]
        finally:
            tokenizer.truncation_side = "right"


def test_collator_masks_label_padding_with_minus_100(mini_data, tokenizer):
    from transformers import DataCollatorForSeq2Seq

    ds = tokenize_split(_split(mini_data, 8), tokenizer, Seq2SeqEncoder(48, 24), with_labels=True, cache_dir=None)
    items = [ds[i] for i in range(8)]
    lengths = [len(it["labels"]) for it in items]
    assert len(set(lengths)) > 1  # the batch really needs padding
    batch = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)(items)
    labels = batch["labels"].numpy()
    for row, item in zip(labels, items):
        n = len(item["labels"])
        assert row[:n].tolist() == item["labels"]  # real tokens (pad id included, if any) untouched
        assert (row[n:] == -100).all()
    assert (labels == -100).sum() == sum(labels.shape[1] - n for n in lengths)
    mask = batch["attention_mask"].numpy()
    assert mask.sum(1).tolist() == [len(it["input_ids"]) for it in items]
    assert (batch["input_ids"].numpy()[mask == 0] == tokenizer.pad_token_id).all()


def test_cache_roundtrip_and_invalidation(tmp_path, mini_data, tokenizer):
    rows = _split(mini_data)
    encoder = Seq2SeqEncoder(64, 16)
    args = dict(with_labels=True, cache_dir=tmp_path)
    first = tokenize_split(rows, tokenizer, encoder, **args)
    files = list(tmp_path.glob("*.npz"))
    assert not first.from_cache and len(files) == 1
    assert not list(tmp_path.glob("*.tmp"))
    with np.load(files[0], allow_pickle=False) as npz:
        assert set(npz.files) == {"src_ids", "src_offsets", "tgt_ids", "tgt_offsets"}

    second = tokenize_split(rows, tokenizer, encoder, **args)
    assert second.from_cache
    assert [second[i] for i in range(len(rows))] == [first[i] for i in range(len(rows))]
    assert second.fnames == first.fnames and second.references == first.references

    # anything that changes the ids is a miss
    assert not tokenize_split(rows, tokenizer, Seq2SeqEncoder(64, 16, "summarize: "), **args).from_cache
    assert not tokenize_split(rows, tokenizer, Seq2SeqEncoder(64, 8), **args).from_cache
    assert not tokenize_split(rows, tokenizer, encoder, **{**args, "with_labels": False}).from_cache
    edited = [Dialogue(r.fname, r.dialogue + " ok", r.references) for r in rows]
    assert not tokenize_split(edited, tokenizer, encoder, **args).from_cache
    assert len(list(tmp_path.glob("*.npz"))) == 5

    # a corrupt cache file is re-tokenized and rewritten, not trusted
    files[0].write_bytes(b"not a zip")
    again = tokenize_split(rows, tokenizer, encoder, **args)
    assert not again.from_cache and again[3] == first[3]
    assert tokenize_split(rows, tokenizer, encoder, **args).from_cache


def test_tokenizer_fingerprint_sees_added_tokens_not_call_state(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    before = tokenizer_fingerprint(tok)
    tok(["some text"], max_length=7, truncation=True)  # leaves truncation state on the backend
    assert tokenizer_fingerprint(tok) == before
    tok.add_special_tokens({"additional_special_tokens": ["#Person1#"]})
    assert tokenizer_fingerprint(tok) != before


def test_labels_need_a_summary(tokenizer):
    rows = [Dialogue("t0", "#Person1#: hi", [])]
    with pytest.raises(UserError, match="without a summary: t0"):
        tokenize_split(rows, tokenizer, Seq2SeqEncoder(32, 8), with_labels=True, cache_dir=None)


def test_tokenizes_full_dialogsum_size_and_loads_it_back_from_the_cache(mini_data, tokenizer, tmp_path):
    """12.5k dialogues (the size of DialogSum train) tokenize and come back from the cache identical and far cheaper (the
    cache load against the tokenization in this run, CPU time, 0.14 s against 10.7 s here). Speed against the tokenizer
    itself is benchmarks/bench_tokenize.py's: timings of one core shared with other tests vary by 40%."""
    base = read_dialogues(mini_data["train_csv"], require_summary=True)
    rows = [Dialogue(f"{r.fname}-{k}", r.dialogue, r.references) for k in range(13) for r in base][:12500]
    args = dict(with_labels=True, cache_dir=tmp_path)
    start = time.process_time()
    ds = tokenize_split(rows, tokenizer, Seq2SeqEncoder(512, 128), **args)
    tokenize_s = time.process_time() - start
    assert len(ds) == 12500 and not ds.from_cache
    start = time.process_time()
    cached = tokenize_split(rows, tokenizer, Seq2SeqEncoder(512, 128), **args)
    assert cached.from_cache and time.process_time() - start < tokenize_s / 3
    assert cached[12499] == ds[12499]
