"""Tokenizing a DialogSum train split the way every rank does (`engine.data.tokenize_split`): cold and cached.

Cold: an empty cache directory (hashing, encoding sources and targets, writing the .npz). Cached: the same call again
(hashing, loading the .npz). The anchor is the plain script's way: the tokenizer's ordinary call on sources and
targets, with no cache. Reading the CSV is timed on its own. Tokenizer: the byte-level BPE BART tokenizer that
`dialsum init-model` trains, with the speaker tags added as the engine adds them, or `--model DIR`.
Targets: <= 10 s cold, <= 1 s cached for ~12.5k dialogues on 2 cores.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from common import MINI_DIR, fmt_s, median, print_report

TARGET_COLD_S, TARGET_CACHED_S = 10.0, 1.0


def replicated_train(src: Path, rows: int, out: Path) -> Path:
    """The shipped mini train repeated (fnames made unique) up to `rows` rows: a stand-in for the full split."""
    with open(src, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields, base = reader.fieldnames, list(reader)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for i in range(rows):
            writer.writerow({**base[i % len(base)], "fname": f"train_{i}"})
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return median(times), result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", default="", help="train split (CSV/JSONL); default: the mini train replicated to --rows")
    p.add_argument("--rows", type=int, default=12_500, help="rows when replicating the mini train")
    p.add_argument("--model", default="", help="model/tokenizer directory (default: `dialsum init-model` tiny)")
    p.add_argument("--max-source", type=int, default=512)
    p.add_argument("--max-target", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: 300 rows, one repeat")
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.repeats = 300, 1

    from engine.data import find_placeholder_tokens, read_dialogues, tokenize_split
    from launcher.model_init import init_model
    from engine.modeling import load_model_and_tokenizer
    from engine.schema import ModelConfig
    from engine.tasks.seq2seq import Seq2SeqEncoder

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        train = Path(a.train) if a.train else replicated_train(MINI_DIR / "train.csv", a.rows, tmp / "train.csv")
        model = a.model or str(init_model(MINI_DIR / "train.csv", tmp / "model", size="tiny", seed=0).out_dir)
        read_t, rows = timed(lambda: read_dialogues(train, require_summary=True), a.repeats)
        _, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=model), find_placeholder_tokens(rows))
        encoder = Seq2SeqEncoder(a.max_source, a.max_target)

        def plain():
            tokenizer([d.dialogue for d in rows], max_length=a.max_source, truncation=True)
            tokenizer(text_target=[d.references[0] for d in rows], max_length=a.max_target, truncation=True)

        anchor, _ = timed(plain, a.repeats)
        cold_runs = iter(range(a.repeats))
        cold, ds = timed(lambda: tokenize_split(rows, tokenizer, encoder, with_labels=True,
                                                cache_dir=tmp / f"cache-{next(cold_runs)}"), a.repeats)
        cached, ds_cached = timed(lambda: tokenize_split(rows, tokenizer, encoder, with_labels=True,
                                                         cache_dir=tmp / "cache-0"), a.repeats)
        assert not ds.from_cache and ds_cached.from_cache and ds_cached[len(rows) - 1] == ds[len(rows) - 1]

    tokens = int(ds._src_off[-1] + ds._tgt_off[-1])
    rows_out = [
        ["read CSV (`read_dialogues`)", fmt_s(read_t), "-", "-"],
        ["anchor: plain `tokenizer(...)` call, no cache", fmt_s(anchor), "1.00", "-"],
        ["dialsum `tokenize_split`, cold (empty cache)", fmt_s(cold), f"{cold / anchor:.2f}",
         "met" if cold + read_t <= TARGET_COLD_S else "MISSED"],
        ["dialsum `tokenize_split`, cached", fmt_s(cached), f"{cached / anchor:.2f}",
         "met" if cached + read_t <= TARGET_CACHED_S else "MISSED"],
    ]
    source = a.train or f"mini train replicated to {a.rows} rows"
    print_report(
        "Tokenizing a DialogSum train split",
        ["step", "time (median)", "vs anchor", "target (read + tokenize)"], rows_out,
        [f"{len(rows)} dialogues ({source}), {tokens} tokens kept, source/target {a.max_source}/{a.max_target}, "
         f"tokenizer {type(tokenizer).__name__} ({len(tokenizer)} tokens); median of {a.repeats}",
         f"targets: read + cold <= {TARGET_COLD_S:g} s ({fmt_s(read_t + cold)}), read + cached <= {TARGET_CACHED_S:g} s "
         f"({fmt_s(read_t + cached)})"])


if __name__ == "__main__":
    main()
