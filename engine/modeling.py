"""Model and tokenizer loading, speaker tags as special tokens, and decoding that keeps those tags.

DialogSum summaries mention speakers as `#Person1#`; if the tags were split into sub-words the model would learn to spell
them, and if decoding dropped every special token they would vanish from the summaries ROUGE scores. So the tags are
added as special tokens at load time and `decode_summaries` removes only the model's control tokens.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from engine.data import PLACEHOLDER_RE
from engine.errors import UserError
from engine.adapters import quantization_config, read_model_card
from engine.schema import DialsumConfig, ModelConfig, TrainingConfig
from engine.tasks import get_task, task_of_model


def looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else that is not on disk is a missing local directory."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith("/") or "\\" in name


def check_model_source(name: str, key: str) -> str:
    """What to pass to from_pretrained: the expanded local directory, or the hub id; missing directories are errors."""
    if not name:
        raise UserError(f"{key}: empty (expected a Hugging Face hub id or a local model directory)")
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{key}: {name} is a file (expected a model directory written by save_pretrained)")
        if key == "model.name_or_path" and not any((path / f).is_file() for f in ("config.json", "adapter_config.json")):
            raise UserError(f"{key}: {name} has no config.json (expected a model directory written by save_pretrained)")
        return str(path)
    if looks_like_path(name):
        raise UserError(f"{key}: no such directory: {name}")
    return name


def _reason(name: str, exc: Exception) -> str:
    """The library's message on one line (shortened), saying whether the hub was the only place looked."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text if len(text) <= 300 else text[:297] + "..."
    return text if Path(name).expanduser().exists() else f"not a local directory, and the hub said: {text}"


def add_speaker_tokens(tokenizer, tokens: list[str]) -> int:
    """Add tags as additional special tokens, keeping the tokenizer's existing ones; returns how many are new."""
    existing = [str(t) for t in (getattr(tokenizer, "additional_special_tokens", None)
                                 or getattr(tokenizer, "extra_special_tokens", None) or [])]
    new = [t for t in tokens if t not in existing]
    if not new:
        return 0
    return tokenizer.add_special_tokens({"additional_special_tokens": existing + new})


def load_tokenizer(model_cfg: ModelConfig, extra_special_tokens: list[str]):
    """`AutoTokenizer` from `model.tokenizer` or `model.name_or_path`, with a pad token (eos stands in where there is
    none) and the speaker tags added as special tokens."""
    from transformers import AutoTokenizer

    tok_name, tok_key = ((model_cfg.tokenizer, "model.tokenizer") if model_cfg.tokenizer
                         else (model_cfg.name_or_path, "model.name_or_path"))
    tok_src = check_model_source(tok_name, tok_key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"{tok_key}: cannot load a tokenizer from {tok_name!r}: {_reason(tok_name, exc)}") from None
    if tokenizer.pad_token is None:  # the collator and generation need one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    add_speaker_tokens(tokenizer, extra_special_tokens)
    return tokenizer


@contextmanager
def partitioned_loading(deepspeed_config: dict | None):
    """Given the plan's ZeRO-3 DeepSpeed config (where `plan.partitioned_loading`; None: a plain load),
    `from_pretrained` inside DeepSpeed's zero.Init: every parameter is made as its 1/world partition, and transformers
    reads the checkpoint on rank 0 alone, so no rank holds the whole model (without it each of a node's ranks loads
    all of it first: a 70B model's bf16 weights on each of 8 GPUs' host processes). transformers obeys a live
    HfDeepSpeedConfig, held here only while the model loads; the Trainer's own takes over when its arguments are
    built."""
    if deepspeed_config is None:
        yield
        return
    import deepspeed
    import torch
    from transformers.integrations import HfDeepSpeedConfig

    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())  # adopts the torch group: its world
    ds_config = HfDeepSpeedConfig(deepspeed_config)  # transformers keeps a weak reference: alive for the block
    try:
        yield
    finally:
        del ds_config


def load_model(model_cfg: ModelConfig, tokenizer, task, quantization=None, dtype=None):
    """The task's Auto model class from a hub id or local directory, its embeddings grown to the tokenizer (speaker
    tags), and the token ids the task needs set (`task.prepare`). `quantization`: a BitsAndBytesConfig (QLoRA), the
    base then loaded 4-bit on this rank's device; `dtype`: the weights' (default fp32)."""
    model_src = check_model_source(model_cfg.name_or_path, "model.name_or_path")
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if quantization is not None:
        import torch

        kwargs = {"quantization_config": quantization, "dtype": torch.bfloat16,
                  "device_map": {"": torch.cuda.current_device() if torch.cuda.is_available() else "cpu"}}
    try:
        model = task.model_class().from_pretrained(model_src, trust_remote_code=model_cfg.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot load a {task.name} model from {model_cfg.name_or_path!r}: "
                        f"{_reason(model_cfg.name_or_path, exc)}") from None
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    task.prepare(model, tokenizer)
    return model


def load_model_and_tokenizer(model_cfg: ModelConfig, extra_special_tokens: list[str], task=None):
    """Tokenizer and model together (prediction, tests): `task` defaults to the one the model's config says. An
    exported adapter (PEFT's files and engine.adapters.MODEL_CARD) loads its base model, quantized as it was trained,
    with the adapter on it. Returns (model, tokenizer)."""
    model_src = check_model_source(model_cfg.name_or_path, "model.name_or_path")
    tokenizer = load_tokenizer(model_cfg, extra_special_tokens)
    task = task or saved_model_task(model_cfg)
    if (Path(model_src) / "adapter_config.json").is_file():
        from peft import PeftModel

        card = read_model_card(model_src)
        base = ModelConfig(name_or_path=card["base_model"], trust_remote_code=card["trust_remote_code"])
        model = load_model(base, tokenizer, task,
                           quantization_config(DialsumConfig(training=TrainingConfig(method=card["method"]))))
        return PeftModel.from_pretrained(model, model_src), tokenizer
    return load_model(model_cfg, tokenizer, task), tokenizer


def saved_model_task(model_cfg: ModelConfig):
    """The task of a model folder or hub id: what its MODEL_CARD says (an exported dialsum model, adapters too),
    else its config.json."""
    model_src = check_model_source(model_cfg.name_or_path, "model.name_or_path")
    card = read_model_card(model_src) if Path(model_src).is_dir() else {}
    if card:
        return get_task(card["task"])
    try:
        return get_task(task_of_model(model_src, model_cfg.task, model_cfg.trust_remote_code))
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot read the model config of {model_cfg.name_or_path!r}: "
                        f"{_reason(model_cfg.name_or_path, exc)}") from None


def control_token_ids(tokenizer) -> set[int]:
    """Special-token ids that are not `#Tag#` speaker/placeholder tags: pad, bos, eos, unk, mask, sentinel tokens."""
    return {i for t, i in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids) if not PLACEHOLDER_RE.fullmatch(t)}


def decode_summaries(tokenizer, sequences) -> list[str]:
    """Generated (or label) ids to text: control tokens removed, speaker tags kept, whitespace collapsed.
    -100 (masked label padding) is dropped like pad."""
    drop = control_token_ids(tokenizer) | {-100}
    rows = sequences.tolist() if hasattr(sequences, "tolist") else sequences
    kept = [[int(t) for t in row if int(t) not in drop] for row in rows]
    texts = tokenizer.batch_decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    return [" ".join(text.split()) for text in texts]
