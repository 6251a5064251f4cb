"""`dialsum init-model`: a small BART (encoder-decoder) or Llama (decoder-only, with a ChatML chat template) and a
byte-level BPE tokenizer trained on the training split.

There is no model hub on air-gapped machines and no pretrained checkpoint in the repo, yet the whole pipeline (launch,
DeepSpeed, evaluation, registry) must run end to end. This writes a fresh, deterministic model directory that loads
through the ordinary `from_pretrained` path, exactly like a downloaded one.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError


@dataclass(frozen=True)
class ModelSize:
    d_model: int
    layers: int  # encoder and decoder each
    heads: int
    ffn_dim: int
    vocab_size: int  # default BPE vocabulary


SIZES = {
    "tiny": ModelSize(d_model=64, layers=2, heads=4, ffn_dim=128, vocab_size=4000),
    "mini": ModelSize(d_model=128, layers=2, heads=4, ffn_dim=512, vocab_size=4000),  # the demo: learns in minutes on 2 cores
    "small": ModelSize(d_model=256, layers=3, heads=4, ffn_dim=1024, vocab_size=8000),
}
# BART's id layout: the tokenizer trainer assigns these ids in this order.
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ARCHS = ("bart", "llama")
# ChatML, as Qwen's instruct models write it: the causal test model has a chat template like the models users bring.
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHATML_TOKENS = ["<|im_start|>", "<|im_end|>"]


@dataclass
class InitResult:
    out_dir: Path
    vocab_size: int
    num_parameters: int


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (no unknown characters, Korean included) wrapped as a BART tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import BartTokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
                            show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    return BartTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], model_max_length=1024)


def build_model(tokenizer, size: ModelSize, seed: int, arch: str = "bart"):
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=size.d_model, intermediate_size=size.ffn_dim,
                             num_hidden_layers=size.layers, num_attention_heads=size.heads,
                             num_key_value_heads=max(1, size.heads // 2), max_position_embeddings=2048,
                             tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=size.d_model, max_position_embeddings=1024,
        encoder_layers=size.layers, decoder_layers=size.layers,
        encoder_attention_heads=size.heads, decoder_attention_heads=size.heads,
        encoder_ffn_dim=size.ffn_dim, decoder_ffn_dim=size.ffn_dim,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return BartForConditionalGeneration(config)


def build_from_data(train_file: str | Path, spec: ModelSize, vocab_size: int, seed: int, arch: str = "bart"):
    """(model, tokenizer): the tokenizer trained on the split's dialogues and summaries, the model sized by spec."""
    from engine.data import read_dialogues  # torch-heavy; keeps `dialsum --help` fast

    dialogues = read_dialogues(train_file, require_summary=True, key="--from-data")
    texts = [d.dialogue for d in dialogues] + [r for d in dialogues for r in d.references]
    tokenizer = train_tokenizer(texts, vocab_size)
    if arch == "llama":
        tokenizer.add_special_tokens({"additional_special_tokens": CHATML_TOKENS})
        tokenizer.chat_template = CHATML
    return build_model(tokenizer, spec, seed, arch), tokenizer


def check_out_dir(out_dir: Path) -> None:
    """Before any work: the model directory to create must not exist or be empty (save_model_dir replaces it)."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"--out: {out_dir} already exists and is not empty (remove it or choose another directory)")


def save_model_dir(model, tokenizer, out_dir: Path) -> None:
    """Save model and tokenizer through a temp dir renamed into place, so a half-written model directory never exists."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)  # left by a killed run of this same pid
    tmp.mkdir()  # not mkdtemp: that would make the model directory private (0700)
    try:
        model.save_pretrained(tmp)  # safetensors (the only format in transformers 5, the default before)
        tokenizer.save_pretrained(tmp)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace cannot replace a directory on every platform
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def init_model(train_file: str | Path, out_dir: str | Path, *, size: str = "tiny", vocab_size: int | None = None,
               seed: int = 42, arch: str = "bart") -> InitResult:
    """Train the tokenizer on dialogues + summaries, build the model, save both to out_dir atomically."""
    if size not in SIZES:
        raise UserError(f"--size: unknown size {size!r} (expected one of {', '.join(SIZES)})")
    if arch not in ARCHS:
        raise UserError(f"--arch: unknown architecture {arch!r} (expected one of {', '.join(ARCHS)})")
    spec = SIZES[size]
    vocab_size = vocab_size or spec.vocab_size
    if vocab_size < 300:  # 256 byte symbols + the special tokens + a few merges
        raise UserError(f"--vocab-size: {vocab_size} is too small (expected at least 300)")
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    model, tokenizer = build_from_data(train_file, spec, vocab_size, seed, arch)
    save_model_dir(model, tokenizer, out_dir)
    return InitResult(out_dir=out_dir, vocab_size=len(tokenizer), num_parameters=model.num_parameters())
