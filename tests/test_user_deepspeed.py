"""Bring-your-own DeepSpeed config: public config files (accelerate's templates, transformers' test config) and
accelerate's exported DeepSpeed settings, resolved into the plan: used as given, "auto" filled from the plan, checked
by DeepSpeed's config class and by the planner's memory model, and named in the plan table. No ranks start here;
tests/test_entrypoints.py runs one through `accelerate launch`."""
from __future__ import annotations

import os

import json
from pathlib import Path

import pytest

from engine.config import LoadedConfig
from engine.errors import UserError
from engine.schema import DialsumConfig
from launcher.planner import make_plan
from launcher.topology import load_topology

FIXTURES = Path(__file__).parent / "fixtures"
DS = FIXTURES / "deepspeed"
MODELS = FIXTURES / "recipe_models"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in ("ACCELERATE_USE_DEEPSPEED", "ACCELERATE_USE_FSDP", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
                "ACCELERATE_MIXED_PRECISION", "ACCELERATE_DEEPSPEED_ZERO_STAGE", "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
                "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
                "ACCELERATE_GRADIENT_CLIPPING", "OMP_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)


def plan(topology: str, model: str = "bart-base", *, nproc: int | None = None, deepspeed_config: Path | str = "",
         global_batch: int = 16, **parallel):
    cfg = DialsumConfig()
    cfg.model.name_or_path = str(MODELS / model)
    cfg.training.global_batch_size = global_batch
    cfg.training.learning_rate = 2e-4
    cfg.parallel.deepspeed_config = str(deepspeed_config)
    for key, value in parallel.items():
        setattr(cfg.parallel, key, value)
    return make_plan(LoadedConfig(config=cfg, sources={}), load_topology(FIXTURES / "topologies" / f"{topology}.yaml"),
                     run_id="r1", nproc_per_node=nproc, env=dict(os.environ))  # accelerate's settings, as exported


def autos(node, prefix="") -> list[str]:
    if isinstance(node, dict):
        return [a for k, v in node.items() for a in autos(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")] if node == "auto" else []


def edited(tmp_path: Path, name: str, **changes) -> Path:
    """A public file with the edits a user makes (dotted paths)."""
    config = json.loads((DS / name).read_text())
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value
    out = tmp_path / name
    out.write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("name", ["zero_stage1_config.json", "zero_stage2_config.json",
                                  "zero_stage3_offload_config.json"])
def test_fp16_templates_are_refused_on_cpu_in_one_line(name):
    with pytest.raises(UserError) as err:
        plan("cpu-only", nproc=2, deepspeed_config=DS / name)
    message = str(err.value)
    assert "\n" not in message and name in message and "fp16.enabled is true" in message and "CPU" in message


def test_transformers_zero2_offload_config_is_used_and_its_autos_filled_from_the_plan():
    p = plan("a100x8-nvlink", deepspeed_config=DS / "ds_config_zero2.json")
    ds = p.deepspeed_config
    assert (p.zero_stage, p.offload_optimizer, p.offload_params) == (2, True, False)  # the file's choices, not dialsum's
    assert ds["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert ds["zero_optimization"]["reduce_bucket_size"] == 2e8  # explicit values untouched
    assert ds["optimizer"]["params"] == {"lr": 2e-4, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0}
    assert ds["scheduler"]["params"]["warmup_max_lr"] == 2e-4 and ds["scheduler"]["params"]["warmup_min_lr"] == 0
    assert ds["bf16"]["enabled"] is True and ds["fp16"]["enabled"] is False and p.precision == "bf16"
    assert ds["train_batch_size"] == 16 == p.micro_batch_size * p.gradient_accumulation_steps * 8
    assert ds["train_micro_batch_size_per_gpu"] == p.micro_batch_size
    assert autos(ds) == ["scheduler.params.warmup_num_steps"]  # the Trainer fills it from the step count
    reason = p.reasons["deepspeed_config"]
    assert reason.startswith(f"parallel.deepspeed_config {DS / 'ds_config_zero2.json'}: yours")
    assert "optimizer.params.lr=0.0002" in reason and "warmup_num_steps by the Trainer" in reason


def test_zero3_offload_template_buckets_follow_the_hidden_size_on_gpus():
    p = plan("h100x1", "bart-large", deepspeed_config=DS / "zero_stage3_offload_config.json")
    z = p.deepspeed_config["zero_optimization"]
    h = 1024
    assert (p.zero_stage, p.offload_optimizer, p.offload_params, p.precision) == (3, True, True, "fp16")
    assert z["reduce_bucket_size"] == h * h and z["stage3_prefetch_bucket_size"] == int(0.9 * h * h)
    assert z["stage3_param_persistence_threshold"] == 10 * h
    assert z["stage3_gather_16bit_weights_on_model_save"] is True
    assert p.gradient_accumulation_steps == 1 and p.micro_batch_size == 16  # the file's accumulation 1 decides


def test_a_user_config_that_cannot_fit_says_by_how_much(tmp_path):
    """ZeRO-0 (no zero_optimization section) for mT5-XL (3.2B) on 24 GB cards."""
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"train_micro_batch_size_per_gpu": "auto", "bf16": {"enabled": True}}))
    with pytest.raises(UserError) as err:
        plan("rtx4090x4-pcie", "mt5-xl", deepspeed_config=config)
    message = str(err.value)
    assert message.startswith(f"parallel.deepspeed_config {config}:") and "over the" in message and "GiB" in message
    assert "zero_stage=0" in message and "would fit" in message


def test_explicit_values_that_contradict_the_training_config_fail_before_launch(tmp_path):
    clip = edited(tmp_path, "ds_config_zero2.json", gradient_clipping=0.5)
    with pytest.raises(UserError, match=r"gradient_clipping is 0.5 but the training config gives 1.0 "
                                        r"\(training.max_grad_norm\)"):
        plan("a100x8-nvlink", deepspeed_config=clip)
    with pytest.raises(UserError, match="sets zero_stage=2 but parallel.zero_stage=3"):
        plan("a100x8-nvlink", deepspeed_config=DS / "ds_config_zero2.json", zero_stage=3)
    bad = edited(tmp_path, "ds_config_zero2.json", zero_optimization__stage=5)
    with pytest.raises(UserError, match="zero_optimization.stage must be 0-3"):
        plan("a100x8-nvlink", deepspeed_config=bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"zero_optimization": {"stage": 2,')
    with pytest.raises(UserError, match="broken.json is not valid JSON"):
        plan("a100x8-nvlink", deepspeed_config=broken)


def test_deepspeed_own_config_class_validates_the_filled_config(tmp_path):
    bad = edited(tmp_path, "ds_config_zero2.json", zero_optimization__offload_optimizer__device="gpu")
    with pytest.raises(UserError, match="DeepSpeed rejects the config"):
        plan("a100x8-nvlink", deepspeed_config=bad)


def test_accelerate_deepspeed_config_file_and_mixed_precision(monkeypatch, tmp_path):
    """What `accelerate launch --config_file deepspeed.yaml` exports to each rank; its file's "auto" precision takes
    accelerate's mixed_precision, its other autos the plan."""
    auto_fp16 = edited(tmp_path, "zero_stage1_config.json", fp16__enabled="auto")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(auto_fp16))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    p = plan("a100x8-nvlink")
    assert p.zero_stage == 1 and p.precision == "bf16" and p.deepspeed_config["bf16"] == {"enabled": True}
    assert p.reasons["deepspeed_config"].startswith(f"accelerate deepspeed_config_file {auto_fp16}: yours")
    assert "bf16.enabled=true (accelerate mixed_precision)" in p.reasons["deepspeed_config"]
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(DS / "zero_stage1_config.json"))  # fp16: true
    with pytest.raises(UserError, match="fp16.enabled is true but accelerate's mixed_precision is bf16"):
        plan("a100x8-nvlink")


def test_accelerate_plugin_settings_without_a_file(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "cpu")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    p = plan("cpu-only", "bart-base", nproc=2)
    assert (p.zero_stage, p.offload_optimizer, p.precision) == (3, True, "fp32")
    assert (p.gradient_accumulation_steps, p.micro_batch_size) == (2, 4)
    assert p.deepspeed_config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert p.reasons["deepspeed_config"].startswith("accelerate DeepSpeed plugin: yours")
    assert autos(p.deepspeed_config) == []


def test_accelerate_fsdp_is_refused_in_one_line(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match="distributed_type FSDP is not supported"):
        plan("a100x8-nvlink")


def test_dialsum_plan_says_it_is_its_own_config():
    p = plan("a100x8-nvlink", deepspeed=True)
    assert p.reasons["deepspeed_config"].startswith("dialsum's plan: ")
    assert "optimizer" not in p.deepspeed_config
