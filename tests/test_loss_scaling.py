"""Gradient accumulation must not change the loss: seq2seq models take **kwargs in forward but ignore
`num_items_in_batch`, which made the Trainer skip its division by accumulation (loss and gradients x accumulation).
The engine's model loading tells the Trainer the truth; this checks the logged loss with accumulation 1 vs 4."""
from __future__ import annotations

from transformers import DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

from engine.tasks.seq2seq import Seq2SeqEncoder
from engine.data import read_dialogues, tokenize_split
from engine.modeling import load_model_and_tokenizer
from engine.oom import OOMBackoffTrainer
from engine.recorder import NullRecorder
from engine.schema import ModelConfig
from launch_helpers import REPO_ROOT


def _first_loss(tmp_path, model_dir, micro: int, accumulation: int) -> float:
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(model_dir)), [])
    rows = read_dialogues(REPO_ROOT / "data/dialogsum-mini/train.csv", require_summary=True, limit=8)
    data = tokenize_split(rows, tokenizer, Seq2SeqEncoder(64, 16), with_labels=True, cache_dir=None)
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / f"{micro}x{accumulation}"), use_cpu=True,
                                    report_to="none", per_device_train_batch_size=micro,
                                    gradient_accumulation_steps=accumulation, max_steps=1, logging_steps=1, seed=3,
                                    learning_rate=0.0, disable_tqdm=True)
    trainer = OOMBackoffTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
                                recorder=NullRecorder())
    trainer.train()
    return next(h["loss"] for h in trainer.state.log_history if "loss" in h)


def test_logged_loss_does_not_scale_with_accumulation(tmp_path, tiny_model_dir):
    whole = _first_loss(tmp_path, tiny_model_dir, micro=8, accumulation=1)
    accumulated = _first_loss(tmp_path, tiny_model_dir, micro=2, accumulation=4)
    assert abs(accumulated - whole) / whole < 0.1, (whole, accumulated)
