"""The anchor: the plain transformers Seq2SeqTrainer script a user would write instead of dialsum.

Started by `torchrun` (or `python` for one process) from bench_engine_vs_trainer.py. It reads the same CSV, tokenizes
with the tokenizer's ordinary call, and trains with the same hyperparameters and DeepSpeed config as the engine. Only
what changes the maths is matched (`average_tokens_across_devices=False`: otherwise the Trainer
rescales BART's loss by the world size); bookkeeping is left at the Trainer's defaults and nothing is tracked.
"""
from __future__ import annotations

import argparse
import csv
import json
import os

import torch
from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                          Seq2SeqTrainingArguments)

from step_timer import StepTimer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--timer-out", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--global-batch", type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--logging-steps", type=int, required=True)
    p.add_argument("--max-source", type=int, required=True)
    p.add_argument("--max-target", type=int, required=True)
    p.add_argument("--deepspeed", default="", help="DeepSpeed config JSON file; empty: no DeepSpeed")
    p.add_argument("--cuda", action="store_true", help="train on the GPU (default: CPU ranks)")
    p.add_argument("--count-tokens", action="store_true", help="count input tokens (for tokens/s)")
    a = p.parse_args()

    with open(a.train, newline="", encoding="utf-8-sig") as fh:
        rows = [r for _, r in zip(range(a.rows), csv.DictReader(fh))]
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(a.model)
    enc = tokenizer([r["dialogue"].strip() for r in rows], max_length=a.max_source, truncation=True)
    tgt = tokenizer(text_target=[r["summary"].strip() for r in rows], max_length=a.max_target, truncation=True)
    train = [{"input_ids": i, "attention_mask": m, "labels": l}
             for i, m, l in zip(enc["input_ids"], enc["attention_mask"], tgt["input_ids"])]

    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = Seq2SeqTrainingArguments(
        output_dir=a.out, seed=a.seed, use_cpu=not a.cuda, deepspeed=json.load(open(a.deepspeed)) if a.deepspeed else None,
        per_device_train_batch_size=a.global_batch // world, learning_rate=a.lr, max_steps=a.steps,
        logging_steps=a.logging_steps, save_strategy="no", eval_strategy="no", report_to="none",
        average_tokens_across_devices=False, include_num_input_tokens_seen="non_padding" if a.count_tokens else "no",
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                             callbacks=[StepTimer(a.timer_out)])
    trainer.train()
    del trainer, model
    if torch.distributed.is_initialized():  # clean gloo teardown (avoids rare aborts at exit)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
