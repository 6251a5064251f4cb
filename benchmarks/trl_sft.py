"""The anchor for decoder-only models: the TRL SFTTrainer script a user would write instead of dialsum (issue 25).

Started by `torchrun` from bench_vs_trl.py. A prompt-completion dataset in chat form (the user turn holds the same
instruction and dialogue as dialsum's prompt, the assistant turn the summary), so SFTTrainer's default completion-only
loss applies; SFTConfig at its defaults except what the comparison fixes: steps, batch, learning rate and schedule,
seed, sequence length, CPU, and fp32 (SFTConfig's bf16 default would run CPU autocast, which dialsum's CPU plan does
not use: precision is held equal, not counted as a win). Gradient checkpointing stays at SFTConfig's default (on).
SFTTrainer has no evaluation by generation, so after training rank 0 generates the dev summaries as users do (batches
of 8, left padding, the prompt stripped), decoded and scored by the engine's functions so both sides are measured alike.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import time

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from step_timer import StepTimer

EVAL_BATCH = 8


def read_rows(path: str, limit: int) -> list[dict]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [r for _, r in zip(range(limit), csv.DictReader(fh))]


def user_turn(instruction: str, row: dict) -> list[dict]:
    return [{"role": "user", "content": f"{instruction}\n\n{row['dialogue'].strip()}"}]


def prompt_ids(tokenizer, instruction: str, row: dict, max_source: int) -> list[int]:
    """The generation prompt in at most `max_source` tokens, cut inside the dialogue (its end dropped) so that the
    template's end, the assistant header, stays: as dialsum's encoder cuts. The tokenizer's own truncation would cut
    that header off every prompt longer than `max_source` (26 of the first 100 dev rows at 256), and the model would
    go on writing the dialogue instead of a summary."""
    dialogue = tokenizer(row["dialogue"].strip(), add_special_tokens=False)["input_ids"]
    while True:
        text = tokenizer.apply_chat_template(user_turn(instruction, {"dialogue": tokenizer.decode(dialogue)}),
                                             tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_source:
            return ids
        dialogue = dialogue[:len(dialogue) - (len(ids) - max_source)]


def generate_summaries(model, tokenizer, prompts: list[list[int]], a: argparse.Namespace) -> list[str]:
    from engine.modeling import decode_summaries

    tokenizer.padding_side = "left"
    model.eval()
    summaries = []
    for start in range(0, len(prompts), EVAL_BATCH):
        batch = tokenizer.pad({"input_ids": prompts[start:start + EVAL_BATCH]}, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, num_beams=a.beams, max_new_tokens=a.max_new_tokens,
                                 min_new_tokens=a.min_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        summaries += decode_summaries(tokenizer, out[:, batch["input_ids"].shape[1]:])
    return summaries


def main() -> None:
    p = argparse.ArgumentParser()
    for flag in ("--model", "--train", "--eval", "--out", "--timer-out", "--result-out", "--instruction"):
        p.add_argument(flag, required=True)
    for flag in ("--rows", "--eval-rows", "--steps", "--global-batch", "--seed", "--max-source", "--max-target",
                 "--beams", "--max-new-tokens", "--min-new-tokens"):
        p.add_argument(flag, type=int, required=True)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--lr-scheduler", default="constant")
    a = p.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    train = Dataset.from_list([{"prompt": user_turn(a.instruction, r),
                                "completion": [{"role": "assistant", "content": r["summary"].strip()}]}
                               for r in read_rows(a.train, a.rows)])
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = SFTConfig(output_dir=a.out, max_steps=a.steps, per_device_train_batch_size=a.global_batch // world,
                     learning_rate=a.lr, lr_scheduler_type=a.lr_scheduler, warmup_steps=0, seed=a.seed,
                     max_length=a.max_source + a.max_target, use_cpu=True, bf16=False, save_strategy="no",
                     report_to="none")
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer,
                         callbacks=[StepTimer(a.timer_out)])
    trainer.train()
    if int(os.environ.get("RANK", "0")) == 0:
        from engine.rouge import score_summaries

        dev = read_rows(a.eval, a.eval_rows)
        started = time.time()
        prompts = [prompt_ids(tokenizer, a.instruction, r, a.max_source) for r in dev]
        summaries = generate_summaries(trainer.model, tokenizer, prompts, a)
        scores = score_summaries(summaries, [[r["summary"].strip()] for r in dev])
        with open(a.result_out, "w") as fh:
            json.dump({"eval_seconds": time.time() - started, "scores": scores, "predictions": summaries[:3]}, fh)
    if torch.distributed.is_initialized():  # the other ranks wait for rank 0's generation, as a user's script does
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
