"""Typed configuration schema: the single source of truth for every config key.

Each section is a dataclass; `DialsumConfig` nests them. Loading, layering and validation live in
`engine.config`; this file only says which keys exist, their types, defaults and allowed ranges.
A field's `metadata` may carry `choices` (allowed values), `min`/`max` (inclusive bounds) and `help`.
`None` defaults mean "decide automatically" (the launcher's planner fills them into the Plan).
"""
from __future__ import annotations

from dataclasses import dataclass, field


def _f(default, help: str = "", **meta):
    """A dataclass field with a help text and validation metadata (choices, min, max)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class ExperimentConfig:
    name: str = _f("dialsum", "Experiment name; also the default registry model name.")
    output_root: str = _f("outputs", "Root folder for runs, checkpoints, caches, the SQLite store and W&B files.")
    seed: int = _f(42, "Random seed for model init, data order and sampling.", min=0)
    tags: list[str] = _f([], "Free-form tags stored on the run.")
    notes: str = _f("", "Free-form notes stored on the run.")
    group: str = _f("", "Run group (sweeps set this); also the W&B group.")


@dataclass
class ModelConfig:
    name_or_path: str = _f("", "Hugging Face hub id or local directory of a summarization model: encoder-decoder "
                               "(AutoModelForSeq2SeqLM) or decoder-only (AutoModelForCausalLM).")
    task: str = _f("auto", "seq2seq (encoder-decoder) or causal (decoder-only); auto: from the model's config.",
                   choices=["auto", "seq2seq", "causal"])
    trust_remote_code: bool = _f(False, "Run the model's own code from its directory or hub repo (EXAONE-style models);"
                                        " only for code you trust.")
    tokenizer: str = _f("", "Tokenizer hub id or directory; empty means the same as name_or_path.")
    registry_name: str = _f("", "Model name in the registry; empty means experiment.name.")


@dataclass
class DataConfig:
    train_file: str = _f("", "Training dialogues, CSV or JSONL with fname, dialogue, summary[, topic].")
    eval_file: str = _f("", "Evaluation dialogues (same columns; summary1..N for several references).")
    test_file: str = _f("", "Optional test dialogues (fname, dialogue) to predict after training.")
    max_source_length: int = _f(512, "Dialogue tokens kept (truncation).", min=8)
    max_target_length: int = _f(128, "Summary tokens kept (truncation).", min=4)
    pad_to_multiple_of: int | None = _f(None, "Pad each batch's dialogues and summaries to a multiple of this many "
                                        "tokens (default: 8 where it divides both max lengths; 1: off).", min=1)
    source_prefix: str = _f("", "Text prepended to every dialogue (e.g. 'summarize: ' for T5).")
    prompt_template: str = _f("", "Causal models: the prompt around {dialogue} (and {instruction}) when the tokenizer "
                                  "has no chat template, or to use instead of it; empty: the chat template, else "
                                  "'{instruction}\\n\\n{dialogue}\\n\\nSummary:'.")
    instruction: str = _f("", "Causal models: the instruction before the dialogue; empty: a default in "
                              "evaluation.lang (English or Korean).")
    max_train_samples: int | None = _f(None, "Use only the first N training rows.", min=1)
    max_eval_samples: int | None = _f(None, "Use only the first N evaluation rows.", min=1)
    cache_dir: str = _f("", "Tokenized-data cache; empty means <output_root>/cache.")
    speaker_tokens: bool = _f(True, "Add #...# speaker/placeholder tags found in the data as special tokens.")


@dataclass
class TrainingConfig:
    method: str = _f("full", "What is trained: full (every parameter), lora, dora (LoRA with a magnitude vector), "
                             "qlora (LoRA on a 4-bit NF4 base, bitsandbytes), or auto (the planner takes full "
                             "fine-tuning where it fits, else lora, else qlora); the `lora` section sizes the adapters.",
                     choices=["full", "lora", "dora", "qlora", "auto"])
    num_train_epochs: float = _f(1.0, "Epochs (ignored when max_steps > 0).", min=0.0)
    max_steps: int = _f(-1, "Optimizer steps; -1 means use num_train_epochs.", min=-1)
    learning_rate: float = _f(5e-5, "Peak learning rate.", min=0.0)
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0.0)
    warmup_ratio: float = _f(0.0, "Fraction of steps for linear warm-up.", min=0.0, max=1.0)
    warmup_steps: int = _f(0, "Linear warm-up steps; > 0 replaces warmup_ratio.", min=0)
    lr_scheduler_type: str = _f("linear", "transformers scheduler name.",
                                choices=["linear", "cosine", "constant", "constant_with_warmup", "polynomial"])
    optim: str = _f("auto", "transformers optimizer name; auto: the planner's choice (fused AdamW where torch has it).",
                    choices=["auto", "adamw_torch", "adamw_torch_fused", "adafactor"])
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.", min=0.0)
    label_smoothing_factor: float = _f(0.0, "Label smoothing.", min=0.0, max=1.0)
    global_batch_size: int = _f(8, "Samples per optimizer step across all ranks (micro-batch x accumulation x world).", min=1)
    logging_steps: int = _f(10, "Log train metrics every N steps.", min=1)
    eval_strategy: str = _f("steps", "When to evaluate.", choices=["no", "steps", "epoch"])
    eval_steps: int = _f(100, "Evaluate every N steps (eval_strategy=steps).", min=1)
    save_total_limit: int = _f(1, "Checkpoints kept besides the best.", min=1)
    metric_for_best_model: str = _f("rouge_combined_f1", "Metric that picks the best checkpoint and registry version.")
    greater_is_better: bool = _f(True, "Goal of metric_for_best_model.")
    early_stopping_patience: int | None = _f(None, "Stop after N evaluations without improvement.", min=1)
    early_stopping_threshold: float = _f(0.0, "Minimum improvement that resets patience.", min=0.0)
    dataloader_num_workers: int | None = _f(None, "DataLoader workers per rank (default: from the cores left per rank).",
                                            min=0)
    group_by_length: bool | None = _f(None, "Batch training samples of similar length (default: on; same samples per "
                                      "epoch, less padding).")


@dataclass
class LoraConfig:
    """Adapters (training.method lora, dora, qlora), through PEFT."""
    r: int = _f(16, "Rank of each adapter.", min=1)
    alpha: float = _f(32.0, "Scaling numerator: adapters are scaled by alpha / r.", min=0.0)
    dropout: float = _f(0.05, "Dropout on each adapted layer's input.", min=0.0, max=1.0)
    target_modules: list[str] = _f(["all-linear"], "Module names to adapt (as in the model, e.g. q_proj, v_proj; "
                                                   "GPT-NeoX: query_key_value, dense); [all-linear]: every linear "
                                                   "layer but the output head.")
    modules_to_save: list[str] = _f([], "Modules trained in full beside the adapters (e.g. lm_head).")


@dataclass
class GenerationConfig:
    num_beams: int = _f(4, "Beam width for evaluation and prediction.", min=1)
    max_new_tokens: int = _f(64, "Longest generated summary.", min=1)
    min_new_tokens: int = _f(0, "Shortest generated summary.", min=0)
    length_penalty: float = _f(1.0, "Beam length penalty.")
    no_repeat_ngram_size: int = _f(0, "Block repeated n-grams of this size (0 = off).", min=0)
    early_stopping: bool = _f(True, "Stop beams when all have finished.")
    do_sample: bool = _f(False, "Sample instead of searching (seeded by experiment.seed: a rerun writes the same "
                                "summaries).")
    temperature: float = _f(1.0, "Sampling temperature (do_sample).", min=0.0)
    top_p: float = _f(1.0, "Nucleus sampling: keep the smallest set of tokens with this much probability (do_sample).",
                      min=0.0, max=1.0)
    top_k: int = _f(50, "Sample among the k most likely tokens (do_sample; 0 = off).", min=0)
    repetition_penalty: float = _f(1.0, "Penalty on tokens already generated (1.0 = off).", min=0.0)


@dataclass
class ParallelConfig:
    """Planner pins: None lets the launcher decide; a value is honoured or the launch fails with a reason."""
    nproc_per_node: int | None = _f(None, "Rank processes per node (default: GPUs, or 1 on CPU).", min=1)
    zero_stage: int | None = _f(None, "DeepSpeed ZeRO stage.", min=0, max=3)
    offload_optimizer: bool | None = _f(None, "Offload optimizer states to CPU (ZeRO >= 1).")
    offload_params: bool | None = _f(None, "Offload parameters to CPU (ZeRO-3).")
    gradient_checkpointing: bool | None = _f(None, "Recompute activations in backward.")
    micro_batch_size: int | None = _f(None, "Per-rank batch per forward pass.", min=1)
    precision: str = _f("auto", "Training precision.", choices=["auto", "fp32", "bf16", "fp16"])
    deepspeed: bool | None = _f(None, "Train under DeepSpeed (default: only when ZeRO > 0 is needed; False: plain "
                                "DDP/single process).")
    eval_batch_size: int | None = _f(None, "Per-rank batch of evaluation generation (default: on GPUs sized "
                                     "for inference memory, on CPU 8 rows).", min=1)
    gather_for_generation: bool | None = _f(None, "ZeRO-3: gather the whole model once per evaluation instead of every "
                                            "layer for every generated token (default: when it fits one rank).")
    memory_headroom: float = _f(0.1, "Fraction of device memory the plan leaves free.", min=0.0, max=0.9)
    trace_memory: bool = _f(False, "Plan with activations traced on fake tensors (one step of the model class) "
                                   "instead of the formula alone (`dialsum plan --trace`).")
    deepspeed_config: str = _f("", "Your DeepSpeed config JSON: used as given, its \"auto\" values filled from the plan "
                                  "and its stage/offload/batch checked for memory; empty: dialsum renders one.")


@dataclass
class EvaluationConfig:
    lang: str = _f("en", "Language of the summaries (ROUGE tokenization).", choices=["en", "ko"])
    tokenizer: str = _f("default", "ROUGE tokenizer: rouge-score's default, whitespace, or morpheme (Korean, kiwipiepy).",
                        choices=["default", "whitespace", "morpheme"])
    sort_by_length: bool = _f(True, "Generate evaluation summaries longest dialogue first (same summaries in dataset "
                              "order, less padding).")


@dataclass
class TrackingConfig:
    uri: str = _f("", "SQLAlchemy URL of the tracking store; empty means sqlite:///<output_root>/dialsum.db.")
    wandb_mode: str = _f("offline", "W&B mode.", choices=["offline", "online", "disabled"])
    wandb_project: str = _f("dialsum", "W&B project.")
    wandb_entity: str = _f("", "W&B entity (team); empty means the default.")
    heartbeat_seconds: float = _f(30.0, "How often rank 0 marks the run alive.", min=1.0)
    register_model: bool = _f(True, "Register a model version for each completed run.")


@dataclass
class MonitoringConfig:
    """Anomaly detector and profiler callbacks (engine/callbacks). Each anomaly kind has a policy: warn, stop or off."""
    on_nan_loss: str = _f("stop", "NaN/Inf train loss or grad norm.", choices=["warn", "stop", "off"])
    on_loss_spike: str = _f("warn", "Train loss far above its recent median (robust z-score).", choices=["warn", "stop", "off"])
    on_grad_norm_explosion: str = _f("warn", "Grad norm above grad_norm_threshold or grad_norm_factor x its median.",
                                     choices=["warn", "stop", "off"])
    on_throughput_drop: str = _f("warn", "Samples/s below throughput_drop x its recent median.", choices=["warn", "stop", "off"])
    on_memory_growth: str = _f("warn", "Memory grew at every one of memory_growth_logs consecutive logs.",
                               choices=["warn", "stop", "off"])
    anomaly_window: int = _f(50, "Recent train logs the medians are taken over.", min=5)
    loss_spike_z: float = _f(6.0, "Robust z-score (median/MAD) above which a loss is a spike.", min=0.0)
    grad_norm_threshold: float | None = _f(None, "Absolute grad-norm limit (None: only the relative rule).", min=0.0)
    grad_norm_factor: float = _f(10.0, "Grad norm above this multiple of its recent median is an explosion.", min=1.0)
    throughput_drop: float = _f(0.5, "Fraction of the median samples/s below which throughput has dropped.", min=0.0, max=1.0)
    memory_growth_logs: int = _f(20, "Consecutive logs of growing memory that count as a leak.", min=2)
    profile_start_step: int | None = _f(None, "Record a torch.profiler trace starting at this step (None: off).", min=0)
    profile_steps: int = _f(3, "Steps in the torch.profiler trace window.", min=1)


@dataclass
class CallbackSpec:
    path: str = _f("", "Import path 'package.module:ClassName' of a transformers TrainerCallback.")
    kwargs: dict = _f({}, "Keyword arguments for the callback's constructor.")


@dataclass
class DialsumConfig:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    callbacks: list[CallbackSpec] = field(default_factory=list)

    def registry_name(self) -> str:
        """The registry model this run's versions go to: model.registry_name, else experiment.name (sweep trials set
        the former, since each trial has its own experiment name)."""
        return self.model.registry_name or self.experiment.name
