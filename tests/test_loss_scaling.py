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


def _causal_step_loss(tmp_path, model_dir, micro: int, accumulation: int, learning_rate: float = 0.0,
                      steps: int = 1, save_to=None) -> float:
    """The first logged loss of a CausalTrainer run on 8 mini rows; `save_to`: keep the trained model."""
    from engine.schema import DialsumConfig
    from engine.tasks import get_task
    from engine.tasks.causal import CausalCollator, CausalTrainer

    task = get_task("causal")
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(model_dir)), [], task)
    cfg = DialsumConfig()
    cfg.data.max_source_length, cfg.data.max_target_length = 96, 48
    rows = read_dialogues(REPO_ROOT / "data/dialogsum-mini/train.csv", require_summary=True, limit=8)
    data = tokenize_split(rows, tokenizer, task.encoder(cfg, tokenizer), with_labels=True, cache_dir=None)
    args = Seq2SeqTrainingArguments(output_dir=str(tmp_path / f"causal-{micro}x{accumulation}-{steps}"), use_cpu=True,
                                    report_to="none", per_device_train_batch_size=micro,
                                    gradient_accumulation_steps=accumulation, max_steps=steps, logging_steps=1,
                                    seed=3, learning_rate=learning_rate, disable_tqdm=True, save_strategy="no",
                                    average_tokens_across_devices=True)
    trainer = CausalTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                            data_collator=CausalCollator(tokenizer), recorder=NullRecorder())
    trainer.train()
    if save_to is not None:
        model.save_pretrained(save_to)
        tokenizer.save_pretrained(save_to)
    return next(h["loss"] for h in trainer.state.log_history if "loss" in h)


def test_causal_loss_is_the_token_mean_of_the_whole_step(tmp_path, tiny_llama_dir):
    """8 rows (summaries of 12-45 tokens) in one micro-batch, or in 4 or 8 accumulated ones: the same loss, a mean over
    every completion token of the step. A mean of the micro-batches' means weighs a short summary's tokens more: it
    differs once the model predicts some rows better than others (trained here for 30 steps on them first; a fresh
    model's token losses are all about ln V, and any weighting gives the same)."""
    trained = tmp_path / "trained"
    _causal_step_loss(tmp_path, tiny_llama_dir, micro=8, accumulation=1, learning_rate=3e-3, steps=30, save_to=trained)
    whole = _causal_step_loss(tmp_path, trained, micro=8, accumulation=1)
    for micro, accumulation in ((2, 4), (1, 8)):
        accumulated = _causal_step_loss(tmp_path, trained, micro=micro, accumulation=accumulation)
        assert abs(accumulated - whole) / whole < 1e-4, (micro, accumulation, whole, accumulated)
