"""`dialsum export CONFIG --model NAME[:VERSION|@ALIAS] --merge OUT`: a registered adapter merged into its base model,
written as a full model folder (safetensors, tokenizer) that loads with `from_pretrained` alone."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.config import add_config_arguments, load_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="merge a registered LoRA/DoRA/QLoRA adapter into its base model")
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, metavar="NAME[:VERSION|@ALIAS]",
                        help="registered adapter: NAME (latest), NAME:3 or NAME@best, in the config's tracking store")
    parser.add_argument("--merge", required=True, type=Path, metavar="OUT",
                        help="model folder to write (must not exist or be empty)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engine.adapters import merge
    from engine.predict import resolve_model

    version = resolve_model(load_from_args(args).config, args.model)
    out = merge(version["checkpoint_dir"], args.merge)
    print(f"wrote {out}: {version['ref']} merged into {version['metadata'].get('base_model', 'its base model')}")
    return 0
