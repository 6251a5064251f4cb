"""Pre-train the demo's mini BART by denoising DialogSum dialogues, so that minutes of fine-tuning learn summaries that
depend on the dialogue.

Fine-tuned from random weights for the demo's 500 steps, this 1.7M-parameter BART writes the same summary for every
dialogue: its decoder becomes a language model of summaries long before cross-attention learns to read the encoder
(ten variants measured: post-/pre-LN, T5, learning rates, 1,200 steps more; all one distinct summary). Learning first to
rebuild dialogue text from a corrupted copy (BART's text infilling: spans of 1-3 tokens replaced by one <mask>) teaches
cross-attention to read. Dialogues only: no summary is seen here. The tokenizer is the one `dialsum init-model --size
mini` trains on the same split, so both start from the same vocabulary.

The shipped `data/mini-bart-pretrained` was made with (about 7 minutes on 2 cores; DialogSum's train split):

    python scripts/pretrain_demo_model.py --dialogues PATH/TO/dialogsum/train.csv --out data/mini-bart-pretrained

`--arch llama` pre-trains the mini Llama of `dialsum init-model --arch llama` the same way, asked as a decoder-only
model is asked (CausalDenoising), with DialogSum's speaker tags as special tokens learned here rather than added at
fine-tuning. The shipped `data/mini-llama-pretrained` was made with `--arch llama --steps 1200` (about 11 minutes on one
thread); `configs/demo-causal.yaml` fine-tunes it for 300 steps on 2 CPU ranks to dev ROUGE r1+r2+rL 0.516, where
copying each dialogue's first words, as many as the prediction has, scores 0.442 (93 distinct summaries of 100).
Pre-trained by plain language modelling of the dialogues instead, it scored under that baseline (0.38 vs 0.54, one
process, 500 fine-tuning steps; issue 25 item 8).

A plain loop, not the Trainer: one process, one objective, and the noise is drawn per batch.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from engine.data import read_dialogues
from engine.errors import UserError
from launcher.model_init import SIZES, build_from_data, check_out_dir, save_model_dir

SHORT_WINDOW, LONG_WINDOW = 48, 126  # tokens of dialogue per example: short first (copying is learned there), then long


REPEAT_INSTRUCTION = "Repeat the following dialogue."


def corrupt(tokens: list[int], mask_id: int, rng: random.Random, rate: float = 0.1) -> list[int]:
    """Text infilling: at each position, with probability `rate`, a span of 1-3 tokens becomes one <mask>."""
    out, i = [], 0
    while i < len(tokens):
        if rng.random() < rate:
            out.append(mask_id)
            i += rng.randint(1, 3)
        else:
            out.append(tokens[i])
            i += 1
    return out


def padded(rows: list[list[int]], value: int):
    """A batch tensor of token rows, right-padded with `value` to the longest."""
    import torch

    width = max(map(len, rows))
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


class BartDenoising:
    """BART's objective: the encoder reads the corrupted window, the decoder rebuilds it."""

    def __init__(self, tokenizer):
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        self.mask = tokenizer.mask_token_id

    def batch(self, windows: list[list[int]], rng: random.Random) -> dict:
        source = padded([[self.bos, *corrupt(t, self.mask, rng), self.eos] for t in windows], self.pad)
        return {"input_ids": source, "attention_mask": (source != self.pad).long(),
                "labels": padded([[self.bos, *t, self.eos] for t in windows], -100)}


class CausalDenoising:
    """The same denoising, as a decoder-only model would be asked it: a chat whose user turn holds an instruction and
    the corrupted window, and whose assistant turn (the only part with a loss) is the window rebuilt. It teaches the
    decoder to read what the prompt says, in the very template fine-tuning uses."""

    def __init__(self, tokenizer):
        from engine.tasks.causal import CausalCollator, CausalEncoder

        self.parts = CausalEncoder("", REPEAT_INSTRUCTION, 0, 0, "").parts(tokenizer)
        self.collate = CausalCollator(tokenizer)  # fine-tuning's batches: left padding, loss on the completion only
        self.mask = tokenizer.mask_token_id

    def batch(self, windows: list[list[int]], rng: random.Random) -> dict:
        p = self.parts
        batch = self.collate([{"input_ids": p.before + corrupt(t, self.mask, rng) + p.after,
                               "labels": p.lead + t + p.end} for t in windows])
        del batch["logits_to_keep"]  # the model's own loss takes logits and labels of the same width
        return batch


def pretrain(model, tokenizer, dialogues: list[str], *, steps: int, batch: int, lr: float, seed: int,
             log_every: int = 100) -> float:
    """Denoising steps on random windows of the dialogues; returns the last logged loss."""
    import torch

    torch.manual_seed(seed)
    rng = random.Random(seed)
    ids = tokenizer(dialogues, max_length=1024, truncation=True, add_special_tokens=False)["input_ids"]
    objective = BartDenoising(tokenizer) if model.config.is_encoder_decoder else CausalDenoising(tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = min(100, steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))))

    dropout = getattr(model.config, "dropout", None)
    if dropout is not None:
        model.config.dropout = 0.0  # nothing to regularise against in a few thousand steps; restored for fine-tuning
    model.train()
    loss_value = float("nan")
    for step in range(1, steps + 1):
        window = SHORT_WINDOW if step < 0.6 * steps else LONG_WINDOW
        texts = []
        for _ in range(batch):
            tokens = ids[rng.randrange(len(ids))]
            start = rng.randrange(max(1, len(tokens) - window + 1))
            texts.append(tokens[start:start + window])
        loss = model(**objective.batch(texts, rng)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        schedule.step()
        if step % log_every == 0 or step == steps:
            loss_value = loss.item()
            print(f"step {step}/{steps}  window {window}  loss {loss_value:.3f}", flush=True)
    if dropout is not None:
        model.config.dropout = dropout
    return loss_value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", required=True, help="CSV/JSONL with a dialogue column (DialogSum train)")
    parser.add_argument("--tokenizer-data", default=str(REPO / "data" / "dialogsum-mini" / "train.csv"),
                        help="split the BPE tokenizer is trained on (default: the shipped mini train split)")
    parser.add_argument("--out", required=True, help="model directory to create")
    parser.add_argument("--arch", default="bart", choices=["bart", "llama"])
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    spec = SIZES["mini"]
    try:
        check_out_dir(out)
        rows = read_dialogues(args.dialogues, require_summary=False, key="--dialogues")
        dialogues = [d.dialogue for d in rows]
        model, tokenizer = build_from_data(args.tokenizer_data, spec, spec.vocab_size, args.seed, args.arch)
        if args.arch == "llama":
            from engine.data import find_placeholder_tokens
            from engine.modeling import add_speaker_tokens

            add_speaker_tokens(tokenizer, find_placeholder_tokens(rows))
            model.resize_token_embeddings(len(tokenizer))
    except UserError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{len(dialogues)} dialogues, {model.num_parameters():,} parameters, {args.steps} steps")
    pretrain(model, tokenizer, dialogues, steps=args.steps, batch=args.batch, lr=args.lr, seed=args.seed)
    save_model_dir(model, tokenizer, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
