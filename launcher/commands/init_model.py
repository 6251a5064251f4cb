"""`dialsum init-model --from-data TRAIN --out DIR [--arch bart|llama]`: a fresh small BART or Llama + BPE tokenizer
trained on the data, for machines with no model hub (set `model.name_or_path: DIR`)."""
from __future__ import annotations

import argparse

from launcher.model_init import ARCHS, SIZES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("init-model", help="build a small randomly initialised BART or Llama + tokenizer from "
                                               "training data")
    parser.add_argument("--from-data", required=True, metavar="TRAIN",
                        help="training split (CSV or JSONL with fname, dialogue, summary) to train the tokenizer on")
    parser.add_argument("--out", required=True, metavar="DIR", help="model directory to create (must not exist or be empty)")
    parser.add_argument("--size", choices=list(SIZES), default="tiny", help="model size (default: tiny)")
    parser.add_argument("--arch", choices=list(ARCHS), default="bart",
                        help="bart: encoder-decoder; llama: decoder-only with a ChatML chat template (default: bart)")
    parser.add_argument("--vocab-size", type=int, default=None, metavar="N",
                        help="BPE vocabulary size (default: %s)" % ", ".join(f"{k} {v.vocab_size}" for k, v in SIZES.items()))
    parser.add_argument("--seed", type=int, default=42, help="seed for the weights (default: 42)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launcher.model_init import init_model

    result = init_model(args.from_data, args.out, size=args.size, vocab_size=args.vocab_size, seed=args.seed,
                        arch=args.arch)
    name = {"bart": "BART", "llama": "Llama"}[args.arch]
    print(f"wrote {result.out_dir}: {args.size} {name}, {result.num_parameters:,} parameters, vocabulary "
          f"{result.vocab_size}")
    print(f"use it with: --set model.name_or_path={result.out_dir}")
    return 0
