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
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from engine.errors import UserError

# DeepSpeed's own defaults, used when the hidden size is unknown (a bare parameter count).
DEFAULT_REDUCE_BUCKET = 500_000_000
DEFAULT_PREFETCH_BUCKET = 50_000_000
DEFAULT_PERSISTENCE_THRESHOLD = 100_000


def _templates():
    """The templates' folder: ds_configs/ beside launcher/ in a checkout (imported from the repository, installed or
    not), else the `launcher.ds_configs` package a wheel installs it as."""
    checkout = Path(__file__).resolve().parent.parent / "ds_configs"
    return checkout if (checkout / "base.json").is_file() else files("launcher.ds_configs")


def load_template(name: str) -> dict:
    """A template: "base", "zero0".."zero3" (".json" optional)."""
    name = name.removesuffix(".json")
    return json.loads(_templates().joinpath(f"{name}.json").read_text(encoding="utf-8"))


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


def auto_values(*, zero_stage: int, precision: str, micro_batch_size: int, gradient_accumulation_steps: int,
                world_size: int, gradient_clipping: float, hidden_size: int, device: str,
                offload_optimizer: bool = False, offload_params: bool = False) -> dict:
    """What every "auto" (dotted path) resolves to for a plan. Buckets follow accelerate's and transformers' rules
    from the hidden size h: reduce_bucket_size=h², stage3_prefetch_bucket_size=0.9h², stage3_param_persistence_threshold=10h."""
    h = hidden_size
    cuda = device == "cuda"
    return {
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": float(gradient_clipping),
        "bf16.enabled": precision == "bf16",
        "fp16.enabled": precision == "fp16",
        "zero_optimization.stage": zero_stage,
        "zero_optimization.offload_optimizer.device": "cpu" if offload_optimizer else "none",
        "zero_optimization.offload_optimizer.pin_memory": cuda and offload_optimizer,
        "zero_optimization.offload_param.device": "cpu" if offload_params else "none",
        "zero_optimization.offload_param.pin_memory": cuda and offload_params,
        "zero_optimization.overlap_comm": cuda,  # overlapping needs CUDA streams
        "zero_optimization.reduce_bucket_size": h * h if h else DEFAULT_REDUCE_BUCKET,
        "zero_optimization.stage3_prefetch_bucket_size": int(0.9 * h * h) if h else DEFAULT_PREFETCH_BUCKET,
        "zero_optimization.stage3_param_persistence_threshold": 10 * h if h else DEFAULT_PERSISTENCE_THRESHOLD,
    }


def render_deepspeed_config(**plan_values) -> dict:
    """The DeepSpeed config for a plan (keyword arguments of `auto_values`)."""
    config = _merge(load_template("base"), load_template(f"zero{plan_values['zero_stage']}"))
    _resolve(config, auto_values(**plan_values))
    check_deepspeed_config(config, plan_values["world_size"])
    return config


def check_deepspeed_config(config: dict, world_size: int, trainer_fills: tuple[str, ...] = ()) -> None:
    """No "auto" anywhere, the batch triple multiplies out, and DeepSpeed's own config class accepts it.

    `DeepSpeedConfig` takes the world size from deepspeed.comm (1 when not initialised; the planner may run on rank 0
    of a started job), so it gets the config without train_batch_size and derives it; the product is checked here."""
    autos = [p for p in _auto_paths(config) if p not in trainer_fills]
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


# ---------------------------------------------------------------------------------------------------- user configs

# Left "auto" for transformers' DeepSpeed integration: it fills them once it knows the step count.
TRAINER_FILLS = ("scheduler.params.total_num_steps", "scheduler.params.warmup_num_steps")
_TRUE = ("1", "true", "yes")


@dataclass
class UserDeepSpeed:
    """A DeepSpeed config the user brought (`parallel.deepspeed_config`, or accelerate's DeepSpeed settings), before
    its "auto" values are filled."""
    source: str      # how errors and the plan table name it
    config: dict
    notes: list[str] = field(default_factory=list)   # what was taken from accelerate's settings


def refuse_fsdp(env: Mapping[str, str]) -> None:
    """accelerate's FSDP configs: dialsum trains under DeepSpeed; FSDP would be ignored, so refuse it on every rank."""
    if env.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE:
        raise UserError("accelerate config: distributed_type FSDP is not supported (dialsum shards with DeepSpeed ZeRO); "
                        "use distributed_type DEEPSPEED (a ZeRO stage or deepspeed_config_file) or MULTI_GPU "
                        "(scripts/accelerate/one_node.yaml: dialsum plans ZeRO)")


def read_user_deepspeed(path: str, env: Mapping[str, str]) -> UserDeepSpeed | None:
    """The user's DeepSpeed config: `parallel.deepspeed_config`, else what `accelerate launch` exported to this rank
    (ACCELERATE_DEEPSPEED_CONFIG_FILE and the DeepSpeed plugin settings, applied the way accelerate's DeepSpeedPlugin
    applies them); None when there is none and dialsum renders its own."""
    refuse_fsdp(env)
    under_accelerate = env.get("ACCELERATE_USE_DEEPSPEED", "").lower() in _TRUE
    if path and under_accelerate:
        raise UserError(f"parallel.deepspeed_config: {path} given while accelerate also configures DeepSpeed "
                        "(distributed_type DEEPSPEED); keep one of the two")
    if path:
        return UserDeepSpeed(f"parallel.deepspeed_config {path}", _read_json(path, "parallel.deepspeed_config"))
    if not under_accelerate:
        return None
    file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none")
    plugin = {  # accelerate's DeepSpeedPlugin settings -> DeepSpeed config path
        "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": ("gradient_accumulation_steps", int),
        "ACCELERATE_GRADIENT_CLIPPING": ("gradient_clipping", float),
        "ACCELERATE_DEEPSPEED_ZERO_STAGE": ("zero_optimization.stage", int),
        "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE": ("zero_optimization.offload_optimizer.device", str),
        "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE": ("zero_optimization.offload_param.device", str),
        "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": ("zero_optimization.stage3_gather_16bit_weights_on_model_save",
                                                        lambda v: v.lower() in _TRUE),
    }
    settings = {}
    for var, (key, kind) in plugin.items():
        if var in env and env[var] != "auto":
            try:
                settings[key] = kind(env[var])
            except ValueError:
                raise UserError(f"accelerate config: {var}={env[var]!r} is not a valid {key}") from None
    mixed = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if file != "none":
        user = UserDeepSpeed(f"accelerate deepspeed_config_file {file}", _read_json(file, "deepspeed_config_file"))
        for key, value in settings.items():  # accelerate fills only the file's "auto" values from its settings
            if _get(user.config, key) == "auto":
                _set(user.config, key, value)
                user.notes.append(f"{key}={value} (accelerate config)")
        if mixed in ("fp16", "bf16"):
            other = "bf16" if mixed == "fp16" else "fp16"
            if str(_get(user.config, f"{other}.enabled")).lower() == "true":
                raise UserError(f"{user.source}: {other}.enabled is true but accelerate's mixed_precision is {mixed}")
            user.config.setdefault(mixed, {"enabled": True})  # as accelerate's set_mixed_precision does
            for dtype in ("fp16", "bf16"):
                if _get(user.config, f"{dtype}.enabled") == "auto":
                    _set(user.config, f"{dtype}.enabled", dtype == mixed)
            user.notes.append(f"{mixed}.enabled=true (accelerate mixed_precision)")
        return user
    # No file: the config accelerate's DeepSpeedPlugin builds from its settings (ZeRO-2 unless zero_stage says).
    config = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
              "gradient_accumulation_steps": settings.get("gradient_accumulation_steps", "auto"),
              "gradient_clipping": settings.get("gradient_clipping", "auto"),
              "zero_optimization": {"stage": settings.get("zero_optimization.stage", 2),
                                    "offload_optimizer": {"device": settings.get(
                                        "zero_optimization.offload_optimizer.device", "none")},
                                    "offload_param": {"device": settings.get(
                                        "zero_optimization.offload_param.device", "none")}},
              "fp16": {"enabled": mixed == "fp16"}, "bf16": {"enabled": mixed == "bf16"}}
    if "zero_optimization.stage3_gather_16bit_weights_on_model_save" in settings:
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = settings[
            "zero_optimization.stage3_gather_16bit_weights_on_model_save"]
    shown = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in settings.items()) or "defaults"
    return UserDeepSpeed("accelerate DeepSpeed plugin", config,
                         [f"built from accelerate's settings ({shown}, mixed_precision {mixed})"])


def user_pins(user: UserDeepSpeed) -> dict:
    """The plan decisions the user's config makes (ParallelConfig field -> value); "auto" leaves them to the planner.
    Keys DeepSpeed defaults when absent (no zero_optimization: stage 0; no fp16/bf16: fp32) are decisions too."""
    c, pins = user.config, {}
    stage = _get(c, "zero_optimization.stage", 0)
    if stage != "auto":
        if stage not in (0, 1, 2, 3):
            raise UserError(f"{user.source}: zero_optimization.stage must be 0-3 or \"auto\", got {stage!r}")
        pins["zero_stage"] = stage
    for key, pin in (("offload_optimizer", "offload_optimizer"), ("offload_param", "offload_params")):
        device = _get(c, f"zero_optimization.{key}.device", "none")
        if device != "auto":
            pins[pin] = device not in ("none", None)
    fp16, bf16 = _get(c, "fp16.enabled", False), _get(c, "bf16.enabled", False)
    if fp16 is True or bf16 is True:
        pins["precision"] = "fp16" if fp16 is True else "bf16"
    elif "auto" not in (fp16, bf16):
        pins["precision"] = "fp32"
    micro, accum = _get(c, "train_micro_batch_size_per_gpu", "auto"), _get(c, "gradient_accumulation_steps", "auto")
    if micro != "auto":
        pins["micro_batch_size"] = micro
    if accum != "auto":
        pins["gradient_accumulation_steps"] = accum
    return pins


def resolve_user_deepspeed(user: UserDeepSpeed, values: dict, trainer_values: dict, world_size: int
                           ) -> tuple[dict, list[str]]:
    """The user's config with every "auto" filled from the plan (`auto_values`) and the training config
    (`trainer_values`: optimizer/scheduler entries transformers would fill), checked by DeepSpeed's own config class.
    An explicit value the training arguments contradict is an error here (transformers would raise after the model
    loaded). Returns (config, what was filled)."""
    config = copy.deepcopy(user.config)
    filled = []
    for path in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps"):
        config.setdefault(path, "auto")  # the batch triple is always written out, so it is checked here
    for path in _auto_paths(config):
        if path in TRAINER_FILLS:
            continue
        value = values.get(path, trainer_values.get(path))
        if value is None and path == "zero_optimization.stage3_gather_16bit_weights_on_model_save":
            value = True  # the exported model is gathered from ZeRO-3 shards
        if value is None:
            raise UserError(f"{user.source}: no value for \"auto\" at {path} (dialsum fills batch, precision, "
                            "clipping, bucket sizes, offload and optimizer/scheduler values); set it in the file")
        _set(config, path, value)
        filled.append(f"{path}={value}")
    for path, value in {**trainer_values, "train_batch_size": values["train_batch_size"]}.items():
        given = _get(config, path)
        if given is not None and given != value and not (isinstance(value, float) and _close(given, value)):
            raise UserError(f"{user.source}: {path} is {given!r} but the training config gives {value!r} "
                            f"({_DIALSUM_KEY.get(path, 'dialsum')}); make them agree or set it to \"auto\"")
    try:
        check_deepspeed_config(config, world_size, trainer_fills=TRAINER_FILLS)
    except Exception as exc:  # DeepSpeed's config class raises assorted exception types
        raise UserError(f"{user.source}: DeepSpeed rejects the config: {' '.join(str(exc).split())[:300]}") from None
    left = [p for p in _auto_paths(config) if p in TRAINER_FILLS]
    if left:
        filled.append(f"{', '.join(p.rsplit('.', 1)[-1] for p in left)} by the Trainer from the step count")
    return config, filled


_DIALSUM_KEY = {"train_batch_size": "training.global_batch_size", "gradient_clipping": "training.max_grad_norm",
                "optimizer.params.lr": "training.learning_rate", "scheduler.params.warmup_max_lr": "training.learning_rate",
                "optimizer.params.weight_decay": "training.weight_decay",
                "optimizer.params.betas": "transformers' adam_beta1/adam_beta2",
                "optimizer.params.eps": "transformers' adam_epsilon"}


def trainer_values(cfg) -> dict:
    """The optimizer/scheduler values transformers' DeepSpeed integration would fill from the training arguments
    the engine builds (betas and epsilon are TrainingArguments defaults the engine does not change)."""
    from transformers import TrainingArguments

    default = {name: f.default for name, f in TrainingArguments.__dataclass_fields__.items()}
    t = cfg.training
    return {"gradient_clipping": float(t.max_grad_norm), "optimizer.params.lr": t.learning_rate,
            "optimizer.params.weight_decay": t.weight_decay,
            "optimizer.params.betas": [default["adam_beta1"], default["adam_beta2"]],
            "optimizer.params.eps": default["adam_epsilon"], "scheduler.params.warmup_min_lr": 0,
            "scheduler.params.warmup_max_lr": t.learning_rate}


def _close(a, b) -> bool:
    return isinstance(a, (int, float)) and abs(a - b) <= 1e-12 * max(1.0, abs(b))


def _read_json(path: str, key: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"{key}: cannot read {path} ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UserError(f"{key}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{key}: {path} must hold a JSON object (a DeepSpeed config)")
    return data


def _get(config: dict, path: str, default=None):
    node = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _set(config: dict, path: str, value) -> None:
    *parents, last = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
