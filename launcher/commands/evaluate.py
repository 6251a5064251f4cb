"""`dialsum evaluate --predictions P.csv --references R.csv`: ROUGE of any predictions file against references.

Predictions are a submission (`fname,summary`); references need `fname` and `summary` or `summary1..N` (a data split
with its `dialogue` column, or an answer file without it). Rows are joined on fname; every reference dialogue needs exactly one prediction and vice versa.
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from engine.errors import UserError
from engine.rouge import LANGS, METRIC_KEYS, TOKENIZERS


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="ROUGE-1/2/L F1 of a predictions CSV against references")
    parser.add_argument("--predictions", required=True, type=Path, help="CSV with fname,summary (a submission)")
    parser.add_argument("--references", required=True, type=Path,
                        help="CSV or JSONL with fname and summary or summary1..N (best over references); a "
                             "dialogue column is allowed, not needed")
    parser.add_argument("--lang", choices=LANGS, default="en", help="language of the summaries (default: en)")
    parser.add_argument("--tokenizer", choices=TOKENIZERS, default="default",
                        help="ROUGE tokenizer; 'default' is rouge-score's for en and 'whitespace' for ko "
                             "(morpheme: kiwipiepy, for ko)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(func=run)


def read_predictions(path: Path) -> dict[str, str]:
    """fname -> summary from a `fname,summary` CSV; an empty summary is kept (it scores 0)."""
    if not path.is_file():
        raise UserError(f"--predictions: no such file: {path}")
    predictions: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in ("fname", "summary") if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: missing column {missing[0]!r} (expected fname,summary)")
            for number, row in enumerate(reader, start=1):
                fname = (row["fname"] or "").strip()
                if not fname:
                    raise UserError(f"{path}: row {number}: empty 'fname'")
                if fname in predictions:
                    raise UserError(f"{path}: row {number}: duplicate fname {fname!r}")
                predictions[fname] = (row["summary"] or "").strip()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise UserError(f"{path}: malformed CSV: {exc}") from None
    if not predictions:
        raise UserError(f"{path}: no rows")
    return predictions


def run(args: argparse.Namespace) -> int:
    from engine.data import read_dialogues
    from engine.rouge import score_summaries

    predictions = read_predictions(args.predictions)
    references = read_dialogues(args.references, require_summary=True, require_dialogue=False, key="--references")
    missing = [d.fname for d in references if d.fname not in predictions]
    if missing:
        raise UserError(f"{args.predictions}: no prediction for fname {missing[0]!r} "
                        f"({len(missing)} of {len(references)} reference dialogues missing)")
    known = {d.fname for d in references}
    extra = [f for f in predictions if f not in known]
    if extra:
        raise UserError(f"{args.predictions}: fname {extra[0]!r} is not in {args.references} ({len(extra)} extra)")
    scores = score_summaries([predictions[d.fname] for d in references], [d.references for d in references],
                             lang=args.lang, tokenizer=args.tokenizer)
    if args.json:
        print(json.dumps({**scores, "lang": args.lang, "tokenizer": args.tokenizer}, indent=2))
        return 0
    from launcher.display import console as make_console
    from rich.table import Table

    console = make_console()
    console.print(f"ROUGE F1 over {scores['num_samples']} dialogues (lang {args.lang}, tokenizer {args.tokenizer})")
    table = Table()
    table.add_column("metric")
    table.add_column("F1", justify="right")
    for key in METRIC_KEYS:
        table.add_row(key, f"{scores[key]:.4f}")
    console.print(table)
    return 0
