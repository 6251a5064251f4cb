"""`dialsum predict CONFIG --model NAME[:VERSION|@ALIAS] --input TEST.csv --out OUT.csv`: write a submission."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.config import add_config_arguments, load_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="summarize a dialogue file with a registered model (fname,summary CSV)")
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, metavar="NAME[:VERSION|@ALIAS]",
                        help="registered model: NAME (latest), NAME:3 or NAME@best, in the config's tracking store")
    parser.add_argument("--input", required=True, type=Path, help="CSV or JSONL with fname, dialogue")
    parser.add_argument("--out", required=True, type=Path, help="submission CSV to write (fname,summary)")
    parser.add_argument("--batch-size", type=int, default=16, help="dialogues per generate call (default: 16)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.predict import predict

    cfg = load_from_args(args).config
    result = predict(cfg, args.model, args.input, args.out, batch_size=args.batch_size)
    print(f"wrote {result.num_rows} summaries to {result.out_path} "
          f"(model {result.model_ref} on {result.device}, {result.seconds:.1f} s)")
    return 0
