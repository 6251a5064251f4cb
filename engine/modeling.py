"""Model and tokenizer loading, speaker tags as special tokens, and decoding that keeps those tags.

DialogSum summaries mention speakers as `#Person1#`; if the tags were split into sub-words the model would learn to spell
them, and if decoding dropped every special token they would vanish from the summaries ROUGE scores. So the tags are
added as special tokens at load time and `decode_summaries` removes only the model's control tokens.
"""
from __future__ import annotations

from typing import Any

from pathlib import Path

from engine.data import PLACEHOLDER_RE
from engine.errors import UserError
from engine.schema import GenerationConfig, ModelConfig


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
        if key == "model.name_or_path" and not (path / "config.json").is_file():
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


def load_model_and_tokenizer(model_cfg: ModelConfig, extra_special_tokens: list[str]):
    """`AutoModelForSeq2SeqLM` + `AutoTokenizer` from a hub id or local directory, with the speaker tags added and the
    embeddings grown to fit them. Returns (model, tokenizer)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tok_name, tok_key = ((model_cfg.tokenizer, "model.tokenizer") if model_cfg.tokenizer
                         else (model_cfg.name_or_path, "model.name_or_path"))
    model_src = check_model_source(model_cfg.name_or_path, "model.name_or_path")
    tok_src = check_model_source(tok_name, tok_key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
    except (OSError, ValueError) as exc:
        raise UserError(f"{tok_key}: cannot load a tokenizer from {tok_name!r}: {_reason(tok_name, exc)}") from None
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_src)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot load a seq2seq model from {model_cfg.name_or_path!r}: "
                        f"{_reason(model_cfg.name_or_path, exc)}") from None

    if tokenizer.pad_token is None:  # the collator and generation need one; eos is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    add_speaker_tokens(tokenizer, extra_special_tokens)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))

    config = model.config
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.decoder_start_token_id is None:
        # labels are shifted right behind this id; generation starts from it
        start = model.generation_config.decoder_start_token_id
        config.decoder_start_token_id = start if start is not None else (
            tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.pad_token_id)
    if model.generation_config.decoder_start_token_id is None:
        model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = config.pad_token_id
    # Seq2seq LMs (BART, T5, ...) take **kwargs in forward but return a plain mean loss that ignores
    # `num_items_in_batch`; the Trainer would then skip its division by gradient accumulation and scale gradients by
    # the accumulation count. Telling it the truth keeps the loss and gradients right for any accumulation.
    model.accepts_loss_kwargs = False
    return model, tokenizer


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


def generation_kwargs(g: GenerationConfig) -> dict[str, Any]:
    """`model.generate` keyword arguments for the configured settings, as evaluation applies them: lengths as
    max_length/min_length, where the decoder start token counts (so N new tokens is N + 1), and any
    max_new_tokens/min_new_tokens saved with the checkpoint cleared, since they would override them. Sampling is off
    so a submission is reproducible; `early_stopping` is a beam-search flag that greedy search rejects."""
    return {
        "num_beams": g.num_beams,
        "max_length": g.max_new_tokens + 1,
        "min_length": g.min_new_tokens + 1 if g.min_new_tokens else 0,
        "max_new_tokens": None,
        "min_new_tokens": None,
        "length_penalty": g.length_penalty,
        "no_repeat_ngram_size": g.no_repeat_ngram_size,
        "early_stopping": g.early_stopping if g.num_beams > 1 else False,
        "do_sample": False,
    }
