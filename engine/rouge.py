"""ROUGE-1/2/L F1 for summaries, multi-reference by the competition rule, with tokenizers that keep Korean.

Scoring is rouge-score's `RougeScorer` (n-gram overlap and LCS are not reimplemented here); only the tokenizer changes:
- "default": the language's default. English: rouge-score's own tokenizer (lowercase, ASCII letters and digits only),
  so results equal rouge-score exactly. Korean: "whitespace", since rouge-score's deletes every non-Latin character
  and Korean would score 0.
- "whitespace": lowercase, punctuation to spaces (Unicode-aware, keeps Hangul), split on whitespace.
- "morpheme": kiwipiepy morphemes (lowercased forms, punctuation dropped); the competition's choice for Korean.

Multi-reference: for each metric, the best F1 over that dialogue's references (rouge-score's `score_multi`), then the
mean over dialogues. `rouge_combined_f1` = rouge1 + rouge2 + rougeL F1, the one definition used everywhere.
"""
from __future__ import annotations

import functools
import re

from engine.errors import UserError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
METRIC_KEYS = ("rouge1_f1", "rouge2_f1", "rougeL_f1", "rouge_combined_f1")
TOKENIZERS = ("default", "whitespace", "morpheme")
LANGS = ("en", "ko")

_NON_WORD = re.compile(r"[\W_]+")
# kiwipiepy tags for punctuation and symbols; SL (Latin), SH (Hanja) and SN (numbers) are kept.
_KIWI_PUNCT_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW"})


class WhitespaceTokenizer:
    """Lowercase, every run of non-letter/non-digit characters becomes a space, split. Keeps Hangul."""

    def tokenize(self, text: str) -> list[str]:
        return _NON_WORD.sub(" ", text.lower()).split()


class MorphemeTokenizer:
    """Korean morphemes from kiwipiepy's `Kiwi().tokenize` (forms, lowercased), punctuation dropped."""

    def __init__(self):
        self._kiwi = _kiwi()

    def tokenize(self, text: str) -> list[str]:
        return [t.form.lower() for t in self._kiwi.tokenize(text) if t.tag not in _KIWI_PUNCT_TAGS]


@functools.lru_cache(maxsize=1)
def _kiwi():
    """One Kiwi instance per process: loading its model takes about a second."""
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        raise UserError("evaluation.tokenizer: 'morpheme' needs kiwipiepy; install it with "
                        "`pip install 'dialsum[korean]'` or choose tokenizer 'whitespace'") from None
    return Kiwi()


@functools.lru_cache(maxsize=8)
def make_scorer(lang: str = "en", tokenizer: str = "default", use_stemmer: bool = False):
    """A rouge-score `RougeScorer` for ROUGE-1/2/L with the tokenizer for this language (cached: Kiwi is slow to load).
    `use_stemmer` (Porter) applies to English's default tokenizer only."""
    from rouge_score.rouge_scorer import RougeScorer

    if lang not in LANGS:
        raise UserError(f"evaluation.lang: expected one of {', '.join(LANGS)}, got {lang!r}")
    if tokenizer not in TOKENIZERS:
        raise UserError(f"evaluation.tokenizer: expected one of {', '.join(TOKENIZERS)}, got {tokenizer!r}")
    if tokenizer == "default" and lang == "en":
        return RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    tok = MorphemeTokenizer() if tokenizer == "morpheme" else WhitespaceTokenizer()
    return RougeScorer(list(ROUGE_TYPES), tokenizer=tok)


def score_dialogue(prediction: str, references: list[str], *, lang: str = "en", tokenizer: str = "default",
                   use_stemmer: bool = False) -> dict[str, float]:
    """ROUGE F1 of one prediction: for each metric, the best F1 over the references."""
    best = make_scorer(lang, tokenizer, use_stemmer).score_multi(references, prediction)
    scores = {f"{t}_f1": float(best[t].fmeasure) for t in ROUGE_TYPES}
    scores["rouge_combined_f1"] = sum(scores[f"{t}_f1"] for t in ROUGE_TYPES)
    return scores


def score_summaries(predictions: list[str], references: list[list[str]], *, lang: str = "en",
                    tokenizer: str = "default", use_stemmer: bool = False) -> dict[str, float]:
    """Mean over dialogues of the per-dialogue best-over-references F1 (fractions 0..1), plus `num_samples`."""
    if len(predictions) != len(references):
        raise UserError(f"ROUGE: {len(predictions)} predictions but {len(references)} reference lists")
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for i, (pred, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise UserError(f"ROUGE: dialogue {i} has no reference summary")
        scores = score_dialogue(pred, refs, lang=lang, tokenizer=tokenizer, use_stemmer=use_stemmer)
        for t in ROUGE_TYPES:
            totals[t] += scores[f"{t}_f1"]
    n = len(predictions)
    result: dict[str, float] = {f"{t}_f1": (totals[t] / n if n else 0.0) for t in ROUGE_TYPES}
    result["rouge_combined_f1"] = sum(result[f"{t}_f1"] for t in ROUGE_TYPES)
    result["num_samples"] = n
    return result
