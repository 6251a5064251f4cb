"""Adapters: LoRA, DoRA and QLoRA through PEFT, for every task (`training.method`, the `lora:` section).

`check_targets` resolves `lora.target_modules` against the model's module names from its config alone (meta device,
no weights), before any rank starts. `adapt` wraps a loaded model: the base frozen, adapters on the targets, and the
speaker tags the data added to the vocabulary trained as token rows (PEFT's `trainable_token_indices`: their
embedding rows are new, so they must learn; the rest of the embedding stays frozen). QLoRA loads the base in 4-bit
NF4 with double quantization and bf16 compute, its quantized weights stored as bf16 elements so ZeRO-3 partitions
them like any weight; the embeddings and LM head stay 16-bit.

An adapter's model folder holds PEFT's files (adapter_config.json, adapter_model.safetensors) and the tokenizer;
`MODEL_CARD` beside them says what inference needs: the task, the method and the base model.
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.data import PLACEHOLDER_RE
from engine.errors import UserError
from engine.schema import DialsumConfig

ADAPTER_METHODS = ("lora", "dora", "qlora")
MODEL_CARD = "dialsum-model.json"
PEFT_TASK = {"seq2seq": "SEQ_2_SEQ_LM", "causal": "CAUSAL_LM"}


def uses_adapters(cfg: DialsumConfig) -> bool:
    return cfg.training.method in ADAPTER_METHODS


def linear_layer_names(model) -> list[str]:
    """The short names of the model's linear layers (what target_modules name), the output head left out."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def check_adapters(cfg: DialsumConfig, model_type: str, linear_layers: list[str]) -> None:
    """Before any rank starts: every name in lora.target_modules names one of the model's linear layers (from its
    config: launcher.memory_estimate.ModelSpec.linear_layers), and QLoRA's 4-bit kernels are installed."""
    missing = [t for t in cfg.lora.target_modules if t != "all-linear" and t not in linear_layers]
    if missing:
        raise UserError(f"lora.target_modules: {', '.join(missing)} match no layer of {model_type}; its linear "
                        f"layers are {', '.join(linear_layers)} (or all-linear)")
    if cfg.training.method == "qlora" and not has_4bit_kernels():
        raise UserError("training.method: qlora needs bitsandbytes for its 4-bit base (pip install "
                        "'dialsum[qlora]'), or use lora with parallel.precision: bf16")


def has_4bit_kernels() -> bool:
    """bitsandbytes (QLoRA's NF4 base) is installed; found without importing it."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def quantization_config(cfg: DialsumConfig):
    """QLoRA's 4-bit base: NF4, double quantization, bf16 compute, bf16 quant storage (ZeRO-3 partitions it)."""
    if cfg.training.method != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def base_dtype(cfg: DialsumConfig, precision: str):
    """A frozen base (adapters) is held in the compute precision: it gets no gradient or optimizer state, so no fp32
    master copy is needed (half the memory of a full fine-tune's fp32 weights); the adapters stay fp32 (PEFT)."""
    import torch

    if not uses_adapters(cfg) or precision == "fp32":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def speaker_token_ids(tokenizer) -> list[int]:
    """The `#Tag#` tokens the data added to the vocabulary (engine/modeling.py)."""
    return sorted(tokenizer.convert_tokens_to_ids(t) for t in tokenizer.all_special_tokens if PLACEHOLDER_RE.fullmatch(t))


def adapt(model, cfg: DialsumConfig, task_name: str, tokenizer, gradient_checkpointing: bool):
    """The PEFT model: adapters on lora.target_modules, the speaker tags' embedding rows trainable."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lora = cfg.lora
    targets = "all-linear" if "all-linear" in lora.target_modules else list(lora.target_modules)
    if cfg.training.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif gradient_checkpointing:
        model.enable_input_require_grads()  # a frozen embedding's output needs a gradient for checkpointing's backward
    tokens = speaker_token_ids(tokenizer)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                        modules_to_save=list(lora.modules_to_save) or None, use_dora=cfg.training.method == "dora",
                        task_type=PEFT_TASK[task_name], trainable_token_indices=tokens or None)
    return get_peft_model(model, config)


def parameter_counts(model) -> dict[str, int]:
    """Trainable and total parameters, each counted once (tied weights, PEFT's wrappers)."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.ds_numel if hasattr(p, "ds_numel") else p.numel()  # ZeRO-3 partitions: the full size
        total += n
        trainable += n if p.requires_grad else 0
    return {"trainable_parameters": trainable, "total_parameters": total}


def write_model_card(model_dir: Path, cfg: DialsumConfig, task_name: str) -> None:
    """What loading the exported model for inference needs besides its files."""
    from engine.atomic import atomic_write_text

    card = {"task": task_name, "method": cfg.training.method, "base_model": cfg.model.name_or_path,
            "trust_remote_code": cfg.model.trust_remote_code}
    atomic_write_text(model_dir / MODEL_CARD, json.dumps(card, indent=2))


def read_model_card(model_dir: str | Path) -> dict:
    path = Path(model_dir) / MODEL_CARD
    return json.loads(path.read_text()) if path.is_file() else {}


def merge(model_dir: str | Path, out_dir: str | Path) -> Path:
    """A full model folder from an exported adapter: its base loaded as the adapter was trained on it (QLoRA's 4-bit
    base dequantized first: merging into the 4-bit weights themselves ruins the model, transformers#31293), the
    adapter merged in, saved with the tokenizer (speaker tags, chat template) atomically."""
    import shutil
    import tempfile

    import torch
    from peft import PeftModel

    from engine.modeling import load_model, load_tokenizer
    from engine.schema import ModelConfig, TrainingConfig
    from engine.tasks import get_task

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    card = read_model_card(model_dir)
    if not (model_dir / "adapter_config.json").is_file() or not card:
        raise UserError(f"--merge: {model_dir} holds no dialsum adapter (adapter_config.json and {MODEL_CARD}); a "
                        "full model's folder is the model already")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"--merge: {out_dir} already exists and is not empty")
    tokenizer = load_tokenizer(ModelConfig(name_or_path=str(model_dir)), [])
    base = ModelConfig(name_or_path=card["base_model"], trust_remote_code=card["trust_remote_code"])
    model = load_model(base, tokenizer, get_task(card["task"]),
                       quantization_config(DialsumConfig(training=TrainingConfig(method=card["method"]))))
    if card["method"] == "qlora":
        model = model.dequantize().to(torch.float32)
    merged = PeftModel.from_pretrained(model, model_dir).merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        from engine.atomic import atomic_write_text

        atomic_write_text(tmp / MODEL_CARD, json.dumps({**card, "method": "full", "merged_from": str(model_dir)},
                                                       indent=2))
        if out_dir.exists():
            out_dir.rmdir()
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
