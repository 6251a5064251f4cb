"""A config's training and evaluation splits as token ids: the rows read, the speaker tags found in them added to
the tokenizer, each row encoded by the task (engine/tasks) and cached. The ranks do this in `prepare_data`; the
launcher does it first where a task audits its rows before any rank starts (the ranks then read the cache)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.data import SummarizationDataset, find_placeholder_tokens, read_dialogues, tokenize_split
from engine.modeling import load_tokenizer
from engine.schema import DialsumConfig


@dataclass
class Datasets:
    train: SummarizationDataset
    eval: SummarizationDataset


def prepare_datasets(cfg: DialsumConfig, task) -> tuple[object, Datasets]:
    """(tokenizer with the data's speaker tags, the tokenized splits)."""
    d = cfg.data
    train_rows = read_dialogues(d.train_file, require_summary=True, limit=d.max_train_samples, key="data.train_file")
    eval_rows = read_dialogues(d.eval_file, require_summary=True, limit=d.max_eval_samples, key="data.eval_file")
    tags = find_placeholder_tokens(train_rows + eval_rows) if d.speaker_tokens else []
    tokenizer = load_tokenizer(cfg.model, tags)
    encoder = task.encoder(cfg, tokenizer)
    cache_dir = Path(d.cache_dir or Path(cfg.experiment.output_root) / "cache")
    return tokenizer, Datasets(
        train=tokenize_split(train_rows, tokenizer, encoder, with_labels=True, cache_dir=cache_dir),
        eval=tokenize_split(eval_rows, tokenizer, encoder, with_labels=True, cache_dir=cache_dir))
