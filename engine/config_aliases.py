"""The one table of other projects' names for dialsum's config keys and metrics.

Sweep YAMLs and `wandb.config` name parameters the way their training script reads them: flat Hugging Face
`TrainingArguments` / `Seq2SeqTrainingArguments` and generation names (`learning_rate`, `num_train_epochs`,
`per_device_train_batch_size`, `num_beams`...), Keras/fastai names (`lr`, `epochs`, `batch_size`), or dialsum's own
dotted keys. `to_config_params` turns such a mapping into dialsum's dotted keys, `metric_key` does the same for a
metric name. Anything else is a one-line error with a did-you-mean over dialsum keys and aliases, across sections.

Batch: dialsum has one batch key, `training.global_batch_size`; the planner picks micro-batch and accumulation. So
`per_device_train_batch_size` x `gradient_accumulation_steps` x world size becomes the global batch (a missing
accumulation is 1; a missing per-device size means the base config's global batch is the batch before accumulation).
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from typing import Any

from engine.errors import UserError
from engine.rouge import METRIC_KEYS
from engine.schema import DialsumConfig

GLOBAL_BATCH = "training.global_batch_size"
PER_DEVICE, ACCUMULATION = "per_device_train_batch_size", "gradient_accumulation_steps"

ALIASES: dict[str, str] = {
    # transformers TrainingArguments / Seq2SeqTrainingArguments
    "learning_rate": "training.learning_rate",
    "num_train_epochs": "training.num_train_epochs",
    "max_steps": "training.max_steps",
    "weight_decay": "training.weight_decay",
    "warmup_ratio": "training.warmup_ratio",
    "warmup_steps": "training.warmup_steps",
    "lr_scheduler_type": "training.lr_scheduler_type",
    "optim": "training.optim",
    "max_grad_norm": "training.max_grad_norm",
    "label_smoothing_factor": "training.label_smoothing_factor",
    "logging_steps": "training.logging_steps",
    "eval_strategy": "training.eval_strategy",
    "evaluation_strategy": "training.eval_strategy",
    "eval_steps": "training.eval_steps",
    "save_total_limit": "training.save_total_limit",
    "metric_for_best_model": "training.metric_for_best_model",
    "greater_is_better": "training.greater_is_better",
    "early_stopping_patience": "training.early_stopping_patience",
    "early_stopping_threshold": "training.early_stopping_threshold",
    "dataloader_num_workers": "training.dataloader_num_workers",
    "per_device_eval_batch_size": "parallel.eval_batch_size",
    "gradient_checkpointing": "parallel.gradient_checkpointing",
    "seed": "experiment.seed",
    "generation_num_beams": "generation.num_beams",
    # generation (GenerationConfig)
    "num_beams": "generation.num_beams",
    "max_new_tokens": "generation.max_new_tokens",
    "min_new_tokens": "generation.min_new_tokens",
    "length_penalty": "generation.length_penalty",
    "no_repeat_ngram_size": "generation.no_repeat_ngram_size",
    "do_sample": "generation.do_sample",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "repetition_penalty": "generation.repetition_penalty",
    # PEFT's LoraConfig, as LLM fine-tuning scripts and their sweep files name it (lora_r, lora_alpha, ...)
    "lora_r": "lora.r",
    "lora_alpha": "lora.alpha",
    "lora_dropout": "lora.dropout",
    "lora_target_modules": "lora.target_modules",
    "target_modules": "lora.target_modules",
    "modules_to_save": "lora.modules_to_save",
    # run_summarization.py's ModelArguments / DataTrainingArguments
    "model_name_or_path": "model.name_or_path",
    "tokenizer_name": "model.tokenizer",
    "max_source_length": "data.max_source_length",
    "max_target_length": "data.max_target_length",
    "source_prefix": "data.source_prefix",
    "max_train_samples": "data.max_train_samples",
    "max_eval_samples": "data.max_eval_samples",
    "train_file": "data.train_file",
    "validation_file": "data.eval_file",
    "test_file": "data.test_file",
    "pad_to_multiple_of": "data.pad_to_multiple_of",  # DataCollatorForSeq2Seq's argument
    # the seed's competition baseline config (tokenizer.encoder_max_len, ...), flat
    "encoder_max_len": "data.max_source_length",
    "decoder_max_len": "data.max_target_length",
    # Keras / fastai / plain scripts
    "lr": "training.learning_rate",
    "epochs": "training.num_train_epochs",
    "num_epochs": "training.num_train_epochs",
    "batch_size": GLOBAL_BATCH,
}
# Names whose value is a total length including the decoder start token: max_new_tokens = value - 1.
LENGTHS_WITH_START_TOKEN: dict[str, str] = {"generation_max_length": "generation.max_new_tokens",
                                            "generate_max_length": "generation.max_new_tokens",
                                            "max_length": "generation.max_new_tokens"}
BATCH_FACTORS = (PER_DEVICE, ACCUMULATION)
# List keys whose value a script takes as one comma-separated string.
COMMA_LISTS = ("lora.target_modules", "lora.modules_to_save")
# Known names dialsum deliberately does not take, with what to do instead.
REFUSED: dict[str, str] = {
    "fp16": "precision is one key: use parallel.precision (auto, fp32, bf16, fp16)",
    "bf16": "precision is one key: use parallel.precision (auto, fp32, bf16, fp16)",
    "deepspeed": "the planner renders the DeepSpeed config; pin parallel.zero_stage or parallel.offload_* instead",
    "output_dir": "runs are written under experiment.output_root/runs/<run id>",
    "pad_to_max_length": "batches pad to their longest row, rounded up to data.pad_to_multiple_of; padding every "
                         "batch to the max length only adds compute",
}

METRIC_ALIASES: dict[str, str] = {
    "loss": "loss", "eval_loss": "loss", "val_loss": "loss", "eval/loss": "loss", "validation_loss": "loss",
    "valid_loss": "loss", "eval/val_loss": "loss",
    **{f"{prefix}{name}": key for key, names in {
        "rouge1_f1": ("rouge1", "rouge-1", "rouge_1", "rouge1_f1", "rouge1_fmeasure"),
        "rouge2_f1": ("rouge2", "rouge-2", "rouge_2", "rouge2_f1", "rouge2_fmeasure"),
        "rougeL_f1": ("rougeL", "rougel", "rouge-l", "rouge_l", "rougeL_f1", "rougeLsum", "rouge-lsum"),
        "rouge_combined_f1": ("rouge_combined_f1", "rouge_combined", "rouge_sum", "combined_rouge"),
    }.items() for name in names for prefix in ("", "eval_", "eval/", "val_", "best/")},
}


@functools.cache
def config_keys() -> tuple[str, ...]:
    """Every dotted config key in the schema (callbacks excluded: not a sweep parameter)."""
    return tuple(f"{section}.{key}" for section, body in dataclasses.asdict(DialsumConfig()).items()
                 if isinstance(body, dict) for key in body)


def _all_names() -> list[str]:
    return [*config_keys(), *ALIASES, *LENGTHS_WITH_START_TOKEN, *BATCH_FACTORS]


def did_you_mean(name: str) -> str:
    """A near miss across sections: the whole name, then its last part (model.learning_rate -> training.learning_rate)."""
    names = _all_names()
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [n for n in config_keys() if n.rsplit(".", 1)[-1] == leaf]
    match = same_leaf or difflib.get_close_matches(name, names, n=1, cutoff=0.6) \
        or difflib.get_close_matches(leaf, names, n=1, cutoff=0.75)
    if not match:
        return ""
    key = ALIASES.get(match[0]) or LENGTHS_WITH_START_TOKEN.get(match[0]) or match[0]
    return f" (did you mean '{key}'?)"


def target_of(name: str) -> str:
    """The dialsum key a parameter name sets; raises ValueError with the reason when there is none."""
    if name in config_keys():
        return name
    if name in ALIASES:
        return ALIASES[name]
    if name in LENGTHS_WITH_START_TOKEN:
        return LENGTHS_WITH_START_TOKEN[name]
    if name in BATCH_FACTORS:
        return GLOBAL_BATCH
    if name in REFUSED:
        raise ValueError(f"not taken by dialsum: {REFUSED[name]}")
    raise ValueError(f"unknown parameter{did_you_mean(name)}")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (W&B nested parameters, a nested wandb.config) -> dotted names."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def to_config_params(params: Mapping[str, Any], origin: str, *, world: int, base_global: int
                     ) -> tuple[dict[str, Any], list[str]]:
    """{user name: value} -> ({dotted config key: value}, notes). `origin` prefixes errors ("sweep.yaml: parameters")."""
    out: dict[str, Any] = {}
    named: dict[str, str] = {}
    notes: list[str] = []
    factors: dict[str, Any] = {}
    for name, value in flatten(params).items():
        try:
            key = target_of(name)
        except ValueError as exc:
            raise UserError(f"{origin}.{name}: {exc}") from None
        if key in named and not (name in BATCH_FACTORS and named[key] in BATCH_FACTORS):
            raise UserError(f"{origin}.{name}: sets {key}, as {named[key]} does; keep one of them")
        named[key] = name
        if name in BATCH_FACTORS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{origin}.{name}: expected an integer >= 1, got {value!r}")
            factors[name] = value
            continue
        if name in LENGTHS_WITH_START_TOKEN and isinstance(value, int) and not isinstance(value, bool):
            notes.append(f"{name} {value} -> {key} {value - 1} (the length counts the decoder start token)")
            value -= 1
        elif name != key:
            notes.append(f"{name} -> {key}")
        if key in COMMA_LISTS and isinstance(value, str):  # "q_proj,v_proj", as scripts pass it on a command line
            value = [part.strip() for part in value.split(",") if part.strip()]
        out[key] = value
    if factors:
        per_device = factors.get(PER_DEVICE)
        accumulation = factors.get(ACCUMULATION, 1)
        if per_device is None:
            out[GLOBAL_BATCH] = base_global * accumulation
            notes.append(f"{ACCUMULATION} x the base global batch -> {GLOBAL_BATCH}, e.g. {accumulation} x "
                         f"{base_global} = {out[GLOBAL_BATCH]} (the planner picks micro-batch and accumulation)")
        else:
            out[GLOBAL_BATCH] = per_device * accumulation * world
            notes.append(f"{PER_DEVICE} x {ACCUMULATION} x world size -> {GLOBAL_BATCH}, e.g. {per_device} x "
                         f"{accumulation} x {world} = {out[GLOBAL_BATCH]} (the planner picks micro-batch and "
                         "accumulation)")
    return out, notes


def metric_key(name: str, config_metric: str) -> str | None:
    """A metric name as a sweep or script writes it -> the bare key dialsum runs log (`eval/<key>`, `best/<key>`)."""
    name = name.strip()
    if name in (config_metric, f"eval/{config_metric}", f"eval_{config_metric}", f"best/{config_metric}"):
        return config_metric
    if name in METRIC_KEYS:
        return name
    return METRIC_ALIASES.get(name) or METRIC_ALIASES.get(name.lower())


def logged_metrics() -> tuple[str, ...]:
    return ("loss", *METRIC_KEYS)
