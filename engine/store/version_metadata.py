"""Registry metadata read straight from a checkpoint directory: no torch, no model load, no pickle.

Parameter counts come from the safetensors headers (an adapter's: its own parameters) (8-byte little-endian length + JSON of dtype/shape per tensor), so
they count every stored tensor: parameters (tied ones once, as saved) plus persistent buffers such as BART's
final_logits_bias. The rest comes from `config.json` and `tokenizer_config.json`.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from engine.errors import UserError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.txt", "added_tokens.json")
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: cannot read JSON ({exc})") from None


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensor table of a .safetensors file (name -> {dtype, shape, data_offsets})."""
    with path.open("rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise UserError(f"{path}: not a safetensors file (shorter than its header length)")
        (size,) = struct.unpack("<Q", raw)
        if size > 100 * 2**20:
            raise UserError(f"{path}: not a safetensors file (header length {size} bytes)")
        try:
            header = json.loads(fh.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UserError(f"{path}: not a safetensors file (header is not JSON)") from None
    header.pop("__metadata__", None)
    return header


def extract_checkpoint_metadata(checkpoint_dir: str | Path) -> dict[str, Any]:
    """architecture, model_type, parameter_count, dtypes, vocab_size, max_positions, tokenizer_class, files, size.
    An adapter (PEFT's adapter_config.json instead of config.json): its type and base model, and the adapter's own
    parameters."""
    root = Path(checkpoint_dir)
    adapter = root / "adapter_config.json"
    if not (root / "config.json").is_file() and not adapter.is_file():
        raise UserError(f"{root}: not a model checkpoint (no config.json)")
    if adapter.is_file():
        peft = _read_json(adapter)
        config = {"architectures": [f"{peft.get('peft_type', 'PEFT')} adapter"],
                  "model_type": peft.get("peft_type", "").lower(), "base_model": peft.get("base_model_name_or_path")}
    else:
        config = _read_json(root / "config.json")
    weights = sorted(root.glob("*.safetensors"))
    parameters, dtypes = 0, set()
    for path in weights:
        for tensor in safetensors_header(path).values():
            parameters += math.prod(tensor["shape"])
            dtypes.add(tensor["dtype"])
    tokenizer_config = _read_json(root / "tokenizer_config.json") if (root / "tokenizer_config.json").is_file() else {}
    architectures = config.get("architectures") or []
    return {
        "architecture": architectures[0] if architectures else config.get("model_type", ""),
        "model_type": config.get("model_type", ""),
        "parameter_count": parameters if weights else None,
        "dtypes": sorted(dtypes),
        "vocab_size": config.get("vocab_size"),
        "max_positions": next((config[k] for k in _POSITION_KEYS if config.get(k)), None),
        "tokenizer_class": tokenizer_config.get("tokenizer_class", ""),
        "tokenizer_files": [name for name in TOKENIZER_FILES if (root / name).is_file()],
        "weight_files": [p.name for p in weights],
        "size_bytes": sum(p.stat().st_size for p in root.rglob("*") if p.is_file()),
        **({"adapter_base_model": config["base_model"]} if adapter.is_file() else {}),
    }
