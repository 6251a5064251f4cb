"""The anchor: the plain transformers Seq2SeqTrainer script a user would write instead of dialsum.

Started by `torchrun` (or `python` for one process) from bench_engine_vs_trainer.py. It reads the same CSV, tokenizes
with the tokenizer's ordinary call, and trains with the same hyperparameters and DeepSpeed config as the engine. Only
what changes the maths is matched (`average_tokens_across_devices=False`: otherwise the Trainer
rescales BART's loss by the world size); bookkeeping is left at the Trainer's defaults and nothing is tracked.
With `--eval` (bench_vs_plain_ddp.py) it also evaluates by generation at the Trainer's defaults (eval batch 8, dataset
order), decoding and scoring with the engine's functions so that both sides' ROUGE are measured alike.
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
    p.add_argument("--eval", default="", help="dev CSV: evaluate by generation every --eval-steps (ROUGE)")
    p.add_argument("--eval-rows", type=int, default=0)
    p.add_argument("--eval-steps", type=int, default=0)
    p.add_argument("--beams", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--min-new-tokens", type=int, default=0)
    a = p.parse_args()

    with open(a.train, newline="", encoding="utf-8-sig") as fh:
        rows = [r for _, r in zip(range(a.rows), csv.DictReader(fh))]
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForSeq2SeqLM.from_pretrained(a.model)
    enc = tokenizer([r["dialogue"].strip() for r in rows], max_length=a.max_source, truncation=True)
    tgt = tokenizer(text_target=[r["summary"].strip() for r in rows], max_length=a.max_target, truncation=True)
    train = [{"input_ids": i, "attention_mask": m, "labels": l}
             for i, m, l in zip(enc["input_ids"], enc["attention_mask"], tgt["input_ids"])]

    dev, compute_metrics = None, None
    if a.eval:  # generation settings spelled out as a user would; decoding and ROUGE are the engine's (the measure)
        from engine.modeling import decode_summaries
        from engine.rouge import score_summaries

        with open(a.eval, newline="", encoding="utf-8-sig") as fh:
            dev_rows = [r for _, r in zip(range(a.eval_rows), csv.DictReader(fh))]
        src = tokenizer([r["dialogue"].strip() for r in dev_rows], max_length=a.max_source, truncation=True)
        ref = tokenizer(text_target=[r["summary"].strip() for r in dev_rows], max_length=a.max_target, truncation=True)
        dev = [{"input_ids": i, "attention_mask": m, "labels": l}
               for i, m, l in zip(src["input_ids"], src["attention_mask"], ref["input_ids"])]
        model.generation_config.update(num_beams=a.beams, max_length=a.max_new_tokens + 1,
                                       min_length=a.min_new_tokens + 1 if a.min_new_tokens else 0,
                                       max_new_tokens=None, min_new_tokens=None, early_stopping=a.beams > 1,
                                       length_penalty=1.0, no_repeat_ngram_size=0, do_sample=False)

        def compute_metrics(pred):
            summaries = decode_summaries(tokenizer, pred.predictions)
            return score_summaries(summaries[:len(dev_rows)], [[r["summary"].strip()] for r in dev_rows])

    world = int(os.environ.get("WORLD_SIZE", "1"))
    evaluate = {} if not a.eval else dict(eval_strategy="steps", eval_steps=a.eval_steps, predict_with_generate=True,
                                          generation_max_length=a.max_new_tokens + 1, generation_num_beams=a.beams)
    args = Seq2SeqTrainingArguments(
        output_dir=a.out, seed=a.seed, use_cpu=not a.cuda, deepspeed=json.load(open(a.deepspeed)) if a.deepspeed else None,
        per_device_train_batch_size=a.global_batch // world, learning_rate=a.lr, max_steps=a.steps,
        logging_steps=a.logging_steps, save_strategy="no", report_to="none",
        average_tokens_across_devices=False, include_num_input_tokens_seen="non_padding" if a.count_tokens else "no",
        **({"eval_strategy": "no"} | evaluate),
    )
    trainer = Seq2SeqTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                             compute_metrics=compute_metrics, processing_class=tokenizer,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                             callbacks=[StepTimer(a.timer_out)])
    trainer.train()
    del trainer, model
    if torch.distributed.is_initialized():  # clean gloo teardown (avoids rare aborts at exit)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
