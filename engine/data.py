"""Dialogues in, tokenized datasets out.

`read_dialogues` reads CSV or JSON-lines splits (fname, dialogue, summary or summary1..N, optional topic) and rejects bad
rows with a `UserError` naming the file, the row and what was expected. `tokenize_split` turns them into a
`SummarizationDataset` of unpadded id lists, source (what the model reads: a dialogue, a prompt) and target (the
summary), with the task's encoder (engine/tasks); padding and label masking happen in the task's collator. The ids
are cached on disk as `.npz`, keyed by everything that changes them, so every rank and every rerun skips tokenization.
"""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from engine.atomic import atomic_write_bytes
from engine.errors import UserError

PLACEHOLDER_RE = re.compile(r"#[A-Za-z][A-Za-z0-9_]*#")
_SUMMARY_COL = re.compile(r"summary(\d*)")
_EXPECTED = "expected fname, dialogue, summary[, topic] or summary1..N"
_CACHE_FORMAT = 2  # bump when the cache layout changes


@dataclass
class Dialogue:
    fname: str
    dialogue: str
    references: list[str]
    topic: str = ""


def read_dialogues(path: str | Path, *, require_summary: bool, limit: int | None = None, key: str = "",
                   require_dialogue: bool = True) -> list[Dialogue]:
    """Read a CSV or JSON-lines split. References come from `summary` or `summary1..N` (empty ones dropped);
    `key` is the config key that named the file, so errors point the user at it. Scoring alone needs no dialogue
    (`require_dialogue=False`: an answer file `fname,summary1,summary2,summary3`)."""
    needed = ("fname", "dialogue") if require_dialogue else ("fname",)
    path = Path(path)
    where = f"{key}: {path}" if key else str(path)
    if not path.is_file():
        raise UserError(f"{key + ': ' if key else ''}no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _csv_records(path, where, require_summary, needed)
    elif suffix in (".jsonl", ".json"):
        records = _jsonl_records(path, where, require_summary, needed)
    else:
        raise UserError(f"{where}: unknown data format {suffix or '(no extension)'!r} (expected .csv, .jsonl or .json lines)")

    dialogues: list[Dialogue] = []
    first_row: dict[str, str] = {}
    try:
        for label, row in records:
            dialogues.append(_to_dialogue(row, f"{where}: {label}", require_summary, needed))
            previous = first_row.setdefault(dialogues[-1].fname, label)
            if previous != label:
                raise UserError(f"{where}: {label}: duplicate fname {dialogues[-1].fname!r} (first at {previous})")
            if len(dialogues) == limit:  # rows past the limit are not read, so not checked either
                break
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{where}: malformed CSV: {exc}") from None
    if not dialogues:
        raise UserError(f"{where}: no rows")
    return dialogues


def _csv_records(path: Path, where: str, require_summary: bool, needed: tuple[str, ...]):
    """Yield ("row N", row) with 1-based data row numbers; quoted fields may span lines."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        _check_columns(reader.fieldnames or [], where, require_summary, needed)
        for number, row in enumerate(reader, start=1):
            if None in row:
                raise UserError(f"{where}: row {number}: {len(reader.fieldnames) + len(row[None])} fields, "
                                f"the header has {len(reader.fieldnames)}")
            yield f"row {number}", row


def _jsonl_records(path: Path, where: str, require_summary: bool, needed: tuple[str, ...]):
    """Yield ("line N", record) for each non-blank line, which must hold one JSON object."""
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{where}: line {number}: bad JSON ({exc.msg}; expected one object per line)") from None
            if not isinstance(record, dict):
                raise UserError(f"{where}: line {number}: expected a JSON object, got {type(record).__name__}")
            _check_columns(list(record), f"{where}: line {number}", require_summary, needed)
            yield f"line {number}", record


def _check_columns(columns: list[str], where: str, require_summary: bool, needed: tuple[str, ...]) -> None:
    for name in needed:
        if name not in columns:
            raise UserError(f"{where}: missing column {name!r} ({_EXPECTED})")
    if require_summary and not _summary_columns(columns):
        raise UserError(f"{where}: missing column 'summary' ({_EXPECTED})")


def _summary_columns(columns) -> list[str]:
    """`summary` first, then summary1..N in numeric order."""
    found = [(int(m.group(1) or 0), k) for k in columns if (m := _SUMMARY_COL.fullmatch(k))]
    return [k for _, k in sorted(found)]


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _to_dialogue(row: dict, where: str, require_summary: bool, needed: tuple[str, ...]) -> Dialogue:
    columns = _summary_columns(row)
    for name in needed:
        if not _text(row.get(name)):
            raise UserError(f"{where}: empty {name!r}")
    references = [t for t in (_text(row[c]) for c in columns) if t]
    if require_summary and not references:
        raise UserError(f"{where}: empty {columns[0]!r}")
    topic = _text(row.get("topic", row.get("topic1")))
    return Dialogue(fname=_text(row["fname"]), dialogue=_text(row.get("dialogue")), references=references, topic=topic)


def find_placeholder_tokens(dialogues: list[Dialogue]) -> list[str]:
    """Every `#Tag#` (speaker or anonymised entity) in dialogues and references, sorted: these become special tokens."""
    found: set[str] = set()
    for d in dialogues:
        for text in (d.dialogue, *d.references):
            found.update(PLACEHOLDER_RE.findall(text))
    return sorted(found)


class SummarizationDataset(torch.utils.data.Dataset):
    """Unpadded token ids as flat int32 arrays + offsets; items are dicts of python int lists for the collator."""

    def __init__(self, dialogues: list[Dialogue], arrays: dict[str, np.ndarray], *, from_cache: bool,
                 content_hash: str = ""):
        self.fnames = [d.fname for d in dialogues]
        self.content_hash = content_hash
        self.references = [d.references for d in dialogues]
        self.from_cache = from_cache
        self._src, self._src_off = arrays["src_ids"], arrays["src_offsets"]
        self._tgt, self._tgt_off = arrays.get("tgt_ids"), arrays.get("tgt_offsets")

    def __len__(self) -> int:
        return len(self._src_off) - 1

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ids = self._src[self._src_off[i]:self._src_off[i + 1]].tolist()
        item = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if self._tgt is not None:
            item["labels"] = self._tgt[self._tgt_off[i]:self._tgt_off[i + 1]].tolist()
        return item


def length_order(dataset: SummarizationDataset) -> list[int]:
    """Row indices, longest source first; equal lengths keep dataset order (a stable sort)."""
    return np.argsort(-np.diff(dataset._src_off), kind="stable").tolist()


class LengthSorted(torch.utils.data.Dataset):
    """`dataset` longest source first, for generation: consecutive batches pad little. `restore` puts per-row results
    back in dataset order."""

    def __init__(self, dataset: SummarizationDataset):
        self.dataset = dataset
        self.order = length_order(dataset)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> dict[str, list[int]]:
        return self.dataset[self.order[k]]

    def restore(self, values: list) -> list:
        out = [None] * len(values)
        for k, i in enumerate(self.order):
            out[i] = values[k]
        return out


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides token ids: the serialized backend (vocab, merges, normalizers, added tokens) + special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # minus the truncation/padding state each tokenizer call leaves behind
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:  # a python-only tokenizer: its vocabulary is the best proxy we have
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.all_special_tokens, tokenizer.padding_side, tokenizer.truncation_side]).encode())
    return h.hexdigest()


def content_hash(dialogues: list[Dialogue]) -> str:
    """Hash of the rows as read (fnames, dialogues, references): recorded with registered models, keys the cache."""
    h = hashlib.sha256()
    for d in dialogues:
        h.update(json.dumps([d.fname, d.dialogue, d.references]).encode())
    return h.hexdigest()


def _cache_key(data_hash: str, tokenizer, encoder, with_labels: bool) -> str:
    key = [_CACHE_FORMAT, tokenizer_fingerprint(tokenizer), list(encoder.key), with_labels, data_hash]
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]


def _flatten(seqs: list[list[int]], prefix: str) -> dict[str, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    ids = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int32, count=int(offsets[-1]))
    return {f"{prefix}_ids": ids, f"{prefix}_offsets": offsets}


def _load_cache(path: Path, n_rows: int, with_labels: bool) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or does not fit (then we re-tokenize)."""
    names = ["src_ids", "src_offsets"] + (["tgt_ids", "tgt_offsets"] if with_labels else [])
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in names}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if any(len(arrays[n]) != n_rows + 1 for n in names if n.endswith("_offsets")):
        return None
    return arrays


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Atomic: ranks tokenizing the same split at once each write a whole file; readers never see half."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


class SplitEncoder(Protocol):
    """How a task turns dialogues into (source ids, target ids or None); `key` names every setting the ids depend on
    (it keys the cache)."""
    key: tuple

    def encode(self, tokenizer, dialogues: list[Dialogue], with_labels: bool): ...


def tokenize_split(dialogues: list[Dialogue], tokenizer, encoder: SplitEncoder, *, with_labels: bool,
                   cache_dir: str | Path | None) -> SummarizationDataset:
    """Tokenize dialogues (and the first reference as the target when with_labels) with the task's encoder,
    truncating, never padding."""
    if with_labels:
        missing = [d.fname for d in dialogues if not d.references]
        if missing:
            raise UserError(f"cannot train or evaluate on dialogues without a summary: {', '.join(missing[:5])}")
    path = None
    data_hash = content_hash(dialogues)
    if cache_dir is not None:
        path = Path(cache_dir) / f"tokens-{_cache_key(data_hash, tokenizer, encoder, with_labels)}.npz"
        arrays = _load_cache(path, len(dialogues), with_labels)
        if arrays is not None:
            return SummarizationDataset(dialogues, arrays, from_cache=True, content_hash=data_hash)
    sources, targets = encoder.encode(tokenizer, dialogues, with_labels)
    arrays = _flatten(sources, "src")
    if with_labels:
        arrays.update(_flatten(targets, "tgt"))
    if path is not None:
        _save_cache(path, arrays)
    return SummarizationDataset(dialogues, arrays, from_cache=False, content_hash=data_hash)
