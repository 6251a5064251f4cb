"""DeepSpeed config rendering: `ds_configs/base.json` + the stage's overlay (`zero0.json`..`zero3.json`), with every
"auto" resolved to a concrete value by the launcher.

Nothing is left for transformers' DeepSpeed integration to fill in after the model has loaded, so mismatches fail
at planning time. There is no "optimizer"/"scheduler" section: the HF Trainer builds torch AdamW and its scheduler,
which avoids DeepSpeed's fused_adam JIT build (~60 s on CPU).
"""
from __future__ import annotations

import copy
import json
import logging
from importlib.resources import files

# DeepSpeed's own defaults, used when the hidden size is unknown (a bare parameter count).
DEFAULT_REDUCE_BUCKET = 500_000_000
DEFAULT_PREFETCH_BUCKET = 50_000_000
DEFAULT_PERSISTENCE_THRESHOLD = 100_000


def load_template(name: str) -> dict:
    """A template from the `launcher.ds_configs` package: "base", "zero0".."zero3" (".json" optional)."""
    name = name.removesuffix(".json")
    return json.loads(files("launcher.ds_configs").joinpath(f"{name}.json").read_text(encoding="utf-8"))


def _merge(base: dict, overlay: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve(node: dict, values: dict, prefix: str = "") -> None:
    """Replace every "auto" in place by values[dotted path]; a template "auto" with no value is a bug here."""
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            _resolve(value, values, path + ".")
        elif value == "auto":
            if path not in values:
                raise ValueError(f"ds_configs template: no value for \"auto\" at {path}")
            node[key] = values[path]


def render_deepspeed_config(*, zero_stage: int, precision: str, micro_batch_size: int, gradient_accumulation_steps: int,
                            world_size: int, gradient_clipping: float, hidden_size: int, device: str,
                            offload_optimizer: bool = False, offload_params: bool = False) -> dict:
    """The DeepSpeed config for a plan. Buckets follow accelerate's "auto" rules from the hidden size h:
    reduce_bucket_size=h², stage3_prefetch_bucket_size=0.9h², stage3_param_persistence_threshold=10h."""
    h = hidden_size
    cuda = device == "cuda"
    values = {
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": float(gradient_clipping),
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
        "zero_optimization.offload_optimizer.device": "cpu" if offload_optimizer else "none",
        "zero_optimization.offload_optimizer.pin_memory": cuda and offload_optimizer,
        "zero_optimization.offload_param.device": "cpu" if offload_params else "none",
        "zero_optimization.offload_param.pin_memory": cuda and offload_params,
        "zero_optimization.overlap_comm": cuda,  # overlapping needs CUDA streams
        "zero_optimization.reduce_bucket_size": h * h if h else DEFAULT_REDUCE_BUCKET,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * h * h) if h else DEFAULT_PREFETCH_BUCKET,
        "zero_optimization.stage3_param_persistence_threshold": 10 * h if h else DEFAULT_PERSISTENCE_THRESHOLD,
    }
    config = _merge(load_template("base"), load_template(f"zero{zero_stage}"))
    _resolve(config, values)
    check_deepspeed_config(config, world_size)
    return config


def check_deepspeed_config(config: dict, world_size: int) -> None:
    """No "auto" anywhere, the batch triple multiplies out, and DeepSpeed's own config class accepts it.

    `DeepSpeedConfig` takes the world size from deepspeed.comm (1 when not initialised; the planner may run on rank 0
    of a started job), so it gets the config without train_batch_size and derives it; the product is checked here."""
    autos = _auto_paths(config)
    if autos:
        raise ValueError(f"DeepSpeed config still has \"auto\" at {', '.join(autos)}")
    micro, accum = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    if config["train_batch_size"] != micro * accum * world_size:
        raise ValueError(f"DeepSpeed config: train_batch_size {config['train_batch_size']} != "
                         f"{micro} x {accum} x {world_size}")
    from deepspeed.runtime.config import DeepSpeedConfig
    from deepspeed.utils import logger

    level = logger.level
    logger.setLevel(logging.WARNING)  # it logs the world size at INFO on stdout, which would break `plan --json`
    try:
        DeepSpeedConfig({k: v for k, v in config.items() if k != "train_batch_size"})
    finally:
        logger.setLevel(level)


def _auto_paths(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _auto_paths(v, f"{prefix}{k}.")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _auto_paths(v, f"{prefix}{i}.")]
    return [prefix.rstrip(".")] if node == "auto" else []
