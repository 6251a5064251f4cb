"""The recipes in configs/ for real models, planned against the topology fixtures with each model's published
config.json (tests/fixtures/recipe_models/ and model_configs/, no weights): every plan keeps the global batch, never
trains T5 in fp16, the mT5 recipe runs ZeRO-3 on 8 x A100-40GB, the LLM recipes train what they say where they say."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import UserError
from launcher.planner import make_plan
from launcher.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"bart-base-dialogsum": "recipe_models/bart-base", "bart-large-dialogsum": "recipe_models/bart-large",
           "kobart-korean": "recipe_models/kobart-base-v2", "flan-t5-large-dialogsum": "recipe_models/flan-t5-large",
           "mt5-xl-zero3": "recipe_models/mt5-xl",
           # Bllossom-8B is Llama-3-8B's architecture (its config.json differs in token ids only)
           "bllossom-8b-korean-lora": "model_configs/llama-3-8b", "qwen2.5-7b-qlora": "model_configs/qwen2.5-7b",
           "solar-10.7b-korean": "model_configs/solar-10.7b"}
KOREAN = ("kobart-korean", "mt5-xl-zero3", "bllossom-8b-korean-lora", "solar-10.7b-korean")
GPU_TOPOLOGIES = ["a100x8-nvlink", "h100x1", "rtx4090x4-pcie", "h100x8-2nodes"]


def plan(recipe: str, topology: str, *overrides: str, nproc: int | None = None):
    loaded = load_config([ROOT / "configs" / f"{recipe}.yaml"],
                         [f"model.name_or_path={ROOT / 'tests/fixtures' / RECIPES[recipe]}", *overrides])
    return loaded, make_plan(loaded, load_topology(ROOT / "tests/fixtures/topologies" / f"{topology}.yaml"),
                             run_id="recipe", nproc_per_node=nproc)


@pytest.mark.parametrize("topology", GPU_TOPOLOGIES)
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_recipe_plans_on_gpu_topologies(recipe, topology):
    loaded, p = plan(recipe, topology)
    cfg = loaded.config
    assert p.micro_batch_size * p.gradient_accumulation_steps * p.world_size == cfg.training.global_batch_size
    assert p.precision == "bf16"  # every fixture GPU has bf16; T5 is never planned in fp16
    if p.use_deepspeed:  # a ZeRO stage is needed, and the rendered config says which
        assert p.deepspeed_config["zero_optimization"]["stage"] == p.zero_stage > 0
    else:  # the model states fit every GPU: plain DDP, no DeepSpeed config
        assert p.zero_stage == 0 and p.deepspeed_config is None
    assert p.memory["predicted_peak_bytes_per_gpu"] <= p.memory["budget_bytes_per_gpu"]
    assert cfg.evaluation.lang == ("ko" if recipe in KOREAN else "en")
    assert p.method == (cfg.training.method if cfg.training.method != "auto" else p.config["training"]["method"])
    if "t5" in recipe:
        assert cfg.data.source_prefix == "summarize: "


def test_mt5_recipe_is_zero3_on_eight_a100_40gb():
    _, p = plan("mt5-xl-zero3", "a100x8-nvlink")
    assert (p.world_size, p.zero_stage, p.offload_optimizer, p.micro_batch_size) == (8, 3, False, 8)
    assert p.memory["params"] > 3e9 and p.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_mt5_recipe_on_a_cpu_box_is_refused_saying_by_how_much():
    with pytest.raises(UserError, match=r"zero_stage=3\): the pinned plan needs .* GiB over the"):
        plan("mt5-xl-zero3", "cpu-only")


def test_llama_3_8b_lora_recipe_on_one_rtx_4090():
    """LoRA's 41.9M adapters on a bf16 base that stays whole on the card; checkpointing makes room for the batch."""
    _, p = plan("bllossom-8b-korean-lora", "rtx4090x4-pcie", nproc=1)
    assert (p.method, p.world_size, p.zero_stage, p.gradient_checkpointing) == ("lora", 1, 0, True)
    assert p.memory["trainable_params"] == 41_943_040 and p.memory["params"] == 8_030_261_248
    assert 15 * 2**30 < p.memory["predicted_peak_bytes_per_gpu"] <= p.memory["budget_bytes_per_gpu"]


def test_qwen_qlora_recipe_fits_one_24gb_gpu_where_lora_would_not_leave_room():
    _, qlora = plan("qwen2.5-7b-qlora", "rtx4090x4-pcie", nproc=1)
    _, lora = plan("qwen2.5-7b-qlora", "rtx4090x4-pcie", "training.method=lora", nproc=1)
    assert qlora.method == "qlora" and qlora.zero_stage == 0 and not qlora.offload_optimizer
    assert qlora.memory["model_state_bytes_per_gpu"] < lora.memory["model_state_bytes_per_gpu"] / 2


def test_solar_auto_recipe_trains_fully_on_eight_a100_and_with_adapters_on_one_4090():
    _, eight = plan("solar-10.7b-korean", "a100x8-nvlink")
    _, one = plan("solar-10.7b-korean", "rtx4090x4-pcie", nproc=1)
    assert eight.method == "full" and eight.zero_stage == 3 and eight.reasons["method"].startswith("full: auto")
    assert one.method in ("lora", "qlora") and one.config["training"]["method"] == one.method
    assert "full needs >= " in one.reasons["method"]
