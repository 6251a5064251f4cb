"""The recipes in configs/ for real models, planned against the topology fixtures with each model's published
config.json (tests/fixtures/recipe_models/, no weights): every plan keeps the global batch, never trains T5 in fp16,
and the mT5 recipe runs ZeRO-3 on 8 x A100-40GB."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import load_config
from engine.errors import UserError
from launcher.planner import make_plan
from launcher.topology import load_topology

ROOT = Path(__file__).resolve().parent.parent
RECIPES = {"bart-base-dialogsum": "bart-base", "bart-large-dialogsum": "bart-large", "kobart-korean": "kobart-base-v2",
           "flan-t5-large-dialogsum": "flan-t5-large", "mt5-xl-zero3": "mt5-xl"}
GPU_TOPOLOGIES = ["a100x8-nvlink", "h100x1", "rtx4090x4-pcie", "h100x8-2nodes"]


def plan(recipe: str, topology: str, *overrides: str):
    loaded = load_config([ROOT / "configs" / f"{recipe}.yaml"],
                         [f"model.name_or_path={ROOT / 'tests/fixtures/recipe_models' / RECIPES[recipe]}", *overrides])
    return loaded, make_plan(loaded, load_topology(ROOT / "tests/fixtures/topologies" / f"{topology}.yaml"),
                             run_id="recipe")


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
    assert cfg.evaluation.lang == ("ko" if recipe in ("kobart-korean", "mt5-xl-zero3") else "en")
    if "t5" in recipe:
        assert cfg.data.source_prefix == "summarize: "


def test_mt5_recipe_is_zero3_on_eight_a100_40gb():
    _, p = plan("mt5-xl-zero3", "a100x8-nvlink")
    assert (p.world_size, p.zero_stage, p.offload_optimizer, p.micro_batch_size) == (8, 3, False, 8)
    assert p.memory["params"] > 3e9 and p.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]


def test_mt5_recipe_on_a_cpu_box_is_refused_saying_by_how_much():
    with pytest.raises(UserError, match=r"zero_stage=3\): the pinned plan needs .* GiB over the"):
        plan("mt5-xl-zero3", "cpu-only")
