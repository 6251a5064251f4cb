"""ROUGE: equal to rouge-score on English, best-over-references per metric, Korean scored on Hangul, `dialsum evaluate`."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rouge_score.rouge_scorer import RougeScorer

from engine import rouge
from engine.errors import UserError
from engine.rouge import score_dialogue, score_summaries

ROOT = Path(__file__).resolve().parents[1]
TEST_CSV = ROOT / "data" / "dialogsum-mini" / "test.csv"
TYPES = ("rouge1", "rouge2", "rougeL")


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with open(TEST_CSV, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_single_reference_equals_rouge_score_exactly(rows):
    scorer = RougeScorer(list(TYPES), use_stemmer=False)
    for ref_col in ("summary2", "summary3"):
        preds = [r["summary1"] for r in rows]
        refs = [r[ref_col] for r in rows]
        expected = {t: 0.0 for t in TYPES}
        for pred, ref in zip(preds, refs):
            theirs = scorer.score(ref, pred)
            ours = score_dialogue(pred, [ref])
            for t in TYPES:
                assert ours[f"{t}_f1"] == theirs[t].fmeasure
                expected[t] += theirs[t].fmeasure
        got = score_summaries(preds, [[ref] for ref in refs])
        assert got["num_samples"] == len(rows) == 100
        for t in TYPES:
            assert got[f"{t}_f1"] == expected[t] / len(rows)
        assert 0.3 < got["rouge1_f1"] < 0.8  # human summaries of the same dialogue overlap, but not fully


def test_multi_reference_is_best_f1_per_metric_on_dialogsum(rows):
    scorer = RougeScorer(list(TYPES), use_stemmer=False)
    preds = [r["summary1"] for r in rows]
    refs = [[r["summary2"], r["summary3"]] for r in rows]
    expected = {t: sum(max(scorer.score(ref, p)[t].fmeasure for ref in rs) for p, rs in zip(preds, refs)) / len(rows)
                for t in TYPES}
    got = score_summaries(preds, refs)
    for t in TYPES:
        assert got[f"{t}_f1"] == pytest.approx(expected[t], abs=1e-12)
    single = score_summaries(preds, [[rs[0]] for rs in refs])
    assert all(got[f"{t}_f1"] > single[f"{t}_f1"] for t in TYPES)  # a second reference can only help


def test_best_reference_chosen_separately_for_each_metric():
    # ref A matches every word but no bigram; ref B matches fewer words but a bigram and a longer common subsequence.
    got = score_summaries(["a b c d"], [["d c b a", "a b x y"]])
    assert got["rouge1_f1"] == pytest.approx(1.0)       # from A
    assert got["rouge2_f1"] == pytest.approx(1 / 3)     # from B: "a b" of 3 bigrams each
    assert got["rougeL_f1"] == pytest.approx(0.5)       # from B: LCS "a b" of 4 tokens
    assert got["rouge_combined_f1"] == pytest.approx(1.0 + 1 / 3 + 0.5)


def test_mean_over_dialogues_and_combined_is_the_sum(rows):
    got = score_summaries(["the cat sat", "completely different words"], [["the cat sat"], ["the cat sat"]])
    assert got["rouge1_f1"] == pytest.approx(0.5) and got["rouge2_f1"] == pytest.approx(0.5)
    assert got["rouge_combined_f1"] == pytest.approx(1.5)
    real = score_summaries([r["summary1"] for r in rows], [[r["summary2"], r["summary3"]] for r in rows])
    assert real["rouge_combined_f1"] == real["rouge1_f1"] + real["rouge2_f1"] + real["rougeL_f1"]


def test_stemmer_option_matches_rouge_score(rows):
    scorer = RougeScorer(list(TYPES), use_stemmer=True)
    pred, ref = "The students were running quickly", "A student runs quickly"
    ours = score_dialogue(pred, [ref], use_stemmer=True)
    assert ours["rouge1_f1"] == scorer.score(ref, pred)["rouge1"].fmeasure
    assert ours["rouge1_f1"] > score_dialogue(pred, [ref])["rouge1_f1"]


def test_korean_scores_on_hangul_tokens():
    pred, ref = "나는 오늘 학교에 간다.", "나는 내일 집에 간다!"
    assert RougeScorer(["rouge1"]).score(ref, pred)["rouge1"].fmeasure == 0.0  # the problem: Hangul deleted
    ws = score_summaries([pred], [[ref]], lang="ko", tokenizer="whitespace")
    assert score_summaries([pred], [[ref]], lang="ko", tokenizer="default") == ws  # Korean's default keeps Hangul
    assert ws["rouge1_f1"] == pytest.approx(0.5)  # 나는, 간다 of 4 tokens each; punctuation removed
    morph = score_summaries([pred], [[ref]], lang="ko", tokenizer="morpheme")
    assert morph["rouge1_f1"] > ws["rouge1_f1"]  # particles and endings (는, 에, ㄴ다) match as morphemes
    for tokenizer in ("whitespace", "morpheme"):
        same = score_summaries([pred, ref], [[pred], [ref]], lang="ko", tokenizer=tokenizer)
        assert same["rouge1_f1"] == same["rouge2_f1"] == same["rougeL_f1"] == pytest.approx(1.0)
        assert same["rouge_combined_f1"] == pytest.approx(3.0)


def test_morpheme_tokenizer_needs_kiwipiepy(monkeypatch):
    monkeypatch.setitem(sys.modules, "kiwipiepy", None)  # makes `import kiwipiepy` raise ImportError
    rouge._kiwi.cache_clear()
    rouge.make_scorer.cache_clear()
    try:
        with pytest.raises(UserError, match="needs kiwipiepy"):
            score_summaries(["가"], [["가"]], lang="ko", tokenizer="morpheme")
    finally:
        rouge._kiwi.cache_clear()
        rouge.make_scorer.cache_clear()


def test_bad_inputs_are_user_errors():
    with pytest.raises(UserError, match="2 predictions but 1"):
        score_summaries(["a", "b"], [["a"]])
    with pytest.raises(UserError, match="dialogue 0 has no reference"):
        score_summaries(["a"], [[]])
    with pytest.raises(UserError, match="evaluation.tokenizer"):
        score_summaries(["a"], [["a"]], tokenizer="bpe")


def test_fast_enough_for_500_dialogues_with_3_references(rows):
    preds = [r["summary1"] for r in rows] * 5
    refs = [[r["summary1"][::-1], r["summary2"], r["summary3"]] for r in rows] * 5
    start = time.perf_counter()
    got = score_summaries(preds, refs, lang="en", tokenizer="whitespace")
    assert got["num_samples"] == 500
    assert time.perf_counter() - start < 5.0


def _write_predictions(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "summary"])
        writer.writerows(rows)


def _dialsum(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)


def test_evaluate_cli_scores_and_rejects_missing_fnames(tmp_path, rows):
    preds = tmp_path / "preds.csv"
    _write_predictions(preds, [(r["fname"], r["summary1"]) for r in reversed(rows)])  # order must not matter
    done = _dialsum("evaluate", "--predictions", str(preds), "--references", str(TEST_CSV), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    expected = score_summaries([r["summary1"] for r in rows], [[r["summary1"], r["summary2"], r["summary3"]] for r in rows])
    assert got["rouge1_f1"] == got["rouge2_f1"] == got["rougeL_f1"] == 1.0  # summary1 is one of the references
    assert got["num_samples"] == 100 and got["rouge_combined_f1"] == expected["rouge_combined_f1"] == 3.0

    # Against a two-reference file without summary1 the numbers are the multi-reference scores.
    refs2 = tmp_path / "refs.csv"
    with open(refs2, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "dialogue", "summary1", "summary2"])
        writer.writerows((r["fname"], r["dialogue"], r["summary2"], r["summary3"]) for r in rows)
    done = _dialsum("evaluate", "--predictions", str(preds), "--references", str(refs2))
    assert done.returncode == 0, done.stderr
    expected = score_summaries([r["summary1"] for r in rows], [[r["summary2"], r["summary3"]] for r in rows])
    assert f"{expected['rouge_combined_f1']:.4f}" in done.stdout and "rouge2_f1" in done.stdout

    short = tmp_path / "short.csv"
    _write_predictions(short, [(r["fname"], r["summary1"]) for r in rows if r["fname"] != "test_3"])
    done = _dialsum("evaluate", "--predictions", str(short), "--references", str(TEST_CSV))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert str(short) in done.stderr and "'test_3'" in done.stderr

    extra = tmp_path / "extra.csv"
    _write_predictions(extra, [(r["fname"], r["summary1"]) for r in rows] + [("test_999", "x")])
    done = _dialsum("evaluate", "--predictions", str(extra), "--references", str(TEST_CSV))
    assert done.returncode == 2 and "'test_999'" in done.stderr and "Traceback" not in done.stderr


def test_evaluate_cli_korean(tmp_path):
    refs = tmp_path / "ko.csv"
    with open(refs, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "dialogue", "summary"])
        writer.writerow(["k1", "#Person1#: 안녕하세요.", "나는 내일 집에 간다"])
    preds = tmp_path / "p.csv"
    _write_predictions(preds, [("k1", "나는 오늘 학교에 간다")])
    done = _dialsum("evaluate", "--predictions", str(preds), "--references", str(refs), "--lang", "ko", "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["tokenizer"] == "default" and got["rouge1_f1"] == pytest.approx(0.5)  # Korean default: whitespace


def test_evaluate_cli_takes_an_answer_file_without_dialogues(tmp_path, rows):
    """The competition's answer file is `fname,summary1,summary2,summary3`: scoring needs no dialogue column."""
    answers = tmp_path / "answers.csv"
    with open(answers, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["fname", "summary1", "summary2", "summary3"])
        writer.writerows((r["fname"], r["summary1"], r["summary2"], r["summary3"]) for r in rows)
    preds = tmp_path / "preds.csv"
    _write_predictions(preds, [(r["fname"], r["summary2"]) for r in rows])
    done = _dialsum("evaluate", "--predictions", str(preds), "--references", str(answers), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["num_samples"] == 100 and got["rouge_combined_f1"] == 3.0  # summary2 is one of the three references
    with_dialogue = _dialsum("evaluate", "--predictions", str(preds), "--references", str(TEST_CSV), "--json")
    assert json.loads(with_dialogue.stdout) == got
    answers.write_text("fname,answer\ntest_0,x\n", encoding="utf-8")  # still needs a summary column
    done = _dialsum("evaluate", "--predictions", str(preds), "--references", str(answers))
    assert done.returncode == 2 and "missing column 'summary'" in done.stderr and "Traceback" not in done.stderr
