"""What is trained, planned: adapter and frozen-base sizes against PEFT and bitsandbytes, model states by method,
training.method auto, the error that names what would fit, and corrections from past runs kept per method."""
from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import LoadedConfig
from engine.errors import UserError
from engine.schema import DialsumConfig
from launcher.memory_estimate import (
    NF4_BYTES_PER_PARAM, AdapterSpec, adapter_params, frozen_base_bytes, model_spec, model_state_bytes,
)
from launcher.planner import loads_partitioned, make_plan
from launcher.topology import load_topology

FIXTURES = Path(__file__).parent / "fixtures"
LLAMA_3_8B = str(FIXTURES / "model_configs" / "llama-3-8b")
LORA = AdapterSpec(method="lora", r=16, targets=("all-linear",), dropout=0.05)


def _peft_trainable(model_dir: Path, **lora) -> tuple[int, object]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(task_type="CAUSAL_LM", **lora))
    return sum(p.numel() for p in model.parameters() if p.requires_grad), model


@pytest.mark.parametrize("method,targets,saved", [("lora", ("all-linear",), ()), ("dora", ("q_proj", "v_proj"), ()),
                                                  ("lora", ("q_proj", "k_proj", "v_proj", "o_proj"), ("lm_head",))])
def test_adapter_parameters_are_what_peft_trains(tiny_llama_dir, method, targets, saved):
    spec = model_spec(tiny_llama_dir)
    peft_targets = "all-linear" if "all-linear" in targets else list(targets)
    trained, _ = _peft_trainable(tiny_llama_dir, r=8, target_modules=peft_targets, use_dora=method == "dora",
                                 modules_to_save=list(saved) or None)
    assert adapter_params(spec, AdapterSpec(method=method, r=8, targets=targets, modules_to_save=saved)) == trained


def test_qlora_bytes_per_parameter_are_what_bitsandbytes_stores():
    """NF4 codes, 8-bit block absmax and the second-level constants of double quantization, measured on a layer."""
    import torch

    bnb = pytest.importorskip("bitsandbytes")  # a dev dependency: installed wherever the tests run
    weight = torch.randn(1024, 4096)
    packed, state = bnb.functional.quantize_4bit(weight, blocksize=64, compress_statistics=True, quant_type="nf4")
    stored = packed.nbytes + state.absmax.nbytes + state.state2.absmax.nbytes + state.state2.code.nbytes
    assert stored / weight.numel() == pytest.approx(NF4_BYTES_PER_PARAM, rel=0.01)


def test_frozen_base_model_states_by_method_and_stage():
    """Llama-3-8B: LoRA's 42M adapters on a bf16 base; QLoRA's base a third of that; ZeRO-2 keeps the frozen base
    whole on every rank, ZeRO-3 partitions it."""
    spec = model_spec(LLAMA_3_8B)
    assert adapter_params(spec, LORA) == 41_943_040   # r=16 on every linear layer of the 32 blocks
    lora_base, qlora_base = (frozen_base_bytes(spec, LORA, "bf16"),
                             frozen_base_bytes(spec, AdapterSpec(method="qlora", r=16, targets=("all-linear",)), "bf16"))
    assert lora_base == 2 * spec.params
    embeddings = 2 * 128256 * 4096 + 65 * 4096   # input embedding and LM head, 65 RMSNorm weights: 16-bit
    assert qlora_base == int(NF4_BYTES_PER_PARAM * (spec.params - embeddings)) + 2 * embeddings
    states = {(m, stage): model_state_bytes(spec, stage=stage, world_size=8, precision="bf16",
                                            adapters=None if m == "full" else AdapterSpec(method=m, r=16,
                                                                                          targets=("all-linear",)))
              for m in ("full", "lora", "qlora") for stage in (2, 3)}
    assert states["qlora", 2] < states["lora", 2] < states["full", 2]
    assert states["lora", 2] == lora_base + 2 * 41_943_040 + 18 * 41_943_040 // 8
    # ZeRO-3: the frozen base partitioned over 8 ranks, its largest layer (the 525M-parameter embedding) gathered
    assert states["lora", 3] == 2 * 2 * 128256 * 4096 + lora_base // 8 + 18 * 41_943_040 // 8


def _plan(model: str, topology: str, *, method: str, nproc: int | None = None, global_batch: int = 8,
          source: int = 1024, target: int = 256, tracking_uri: str | None = None):
    cfg = DialsumConfig()
    cfg.model.name_or_path, cfg.training.method, cfg.training.global_batch_size = model, method, global_batch
    cfg.data.max_source_length, cfg.data.max_target_length = source, target
    if tracking_uri:
        cfg.tracking.uri = tracking_uri
    return make_plan(LoadedConfig(config=cfg, sources={}), load_topology(FIXTURES / "topologies" / f"{topology}.yaml"),
                     run_id="r1", nproc_per_node=nproc)


def test_full_fine_tuning_that_fits_nowhere_names_the_methods_that_would():
    with pytest.raises(UserError) as err:
        _plan(LLAMA_3_8B, "rtx4090x4-pcie", method="full", nproc=1)
    message = str(err.value)
    assert "nothing fits on 1 GPU" in message and "training.method: lora fits at" in message
    assert "\n" not in message


def test_auto_takes_full_fine_tuning_where_it_fits_and_adapters_where_it_does_not():
    one_4090 = _plan(LLAMA_3_8B, "rtx4090x4-pcie", method="auto", nproc=1)
    assert one_4090.method in ("lora", "qlora") and one_4090.config["training"]["method"] == one_4090.method
    assert one_4090.reasons["method"].startswith(f"{one_4090.method}: auto; full needs >= ")
    assert one_4090.memory["trainable_params"] < one_4090.memory["params"] / 100
    eight_a100 = _plan(LLAMA_3_8B, "a100x8-nvlink", method="auto")
    assert eight_a100.method == "full" and eight_a100.config["training"]["method"] == "full"
    assert eight_a100.reasons["method"].startswith("full: auto; full fine-tuning fits")
    assert eight_a100.memory["trainable_params"] == eight_a100.memory["params"]
    grouping = eight_a100.reasons["group_by_length"]   # a decoder-only sample is its prompt and summary in one sequence
    assert "similar prompt + summary length" in grouping and "encoder tokens" not in grouping


def test_zero3_on_several_gpus_loads_partitioned_so_a_70b_lora_fits_one_node():
    """Llama-3.1-70B LoRA on 8 x A100-40GB (1 TiB host RAM): each rank loading the 141 GB bf16 base first would need
    1.1 TB of host RAM per node; inside zero.Init (engine.modeling.partitioned_loading) a rank builds one layer at a
    time, so ZeRO-3 fits, as PEFT's guide runs 70B LoRA on 8 GPUs; the plan tells the ranks to load so. One GPU
    (ZeRO-3 does not load partitioned there) still counts the whole base on the host."""
    seventy = str(FIXTURES / "model_configs" / "llama-3.1-70b")
    plan = _plan(seventy, "a100x8-nvlink", method="lora", global_batch=16)
    assert plan.zero_stage == 3 and not plan.offload_params and plan.partitioned_loading
    spec = model_spec(seventy)
    assert plan.memory["cpu_bytes_per_node"] < 2 * spec.params / 4   # not even a quarter of the bf16 base
    one = _plan(seventy, "h100x1", method="lora", global_batch=16)
    assert not one.partitioned_loading
    assert one.memory["cpu_bytes_per_node"] > 2 * spec.params        # the whole bf16 base, and then some


@pytest.mark.parametrize("stage,world,method,device,partitioned", [
    (3, 8, "lora", "cuda", True), (3, 2, "full", "cpu", True),
    (2, 8, "full", "cuda", False),   # only ZeRO-3 partitions parameters
    (3, 1, "full", "cuda", False),   # one rank: nothing to partition over
    (3, 8, "qlora", "cuda", False),  # transformers skips zero.Init for a quantized base
    (3, 2, "lora", "cpu", False),    # PEFT's ZeRO-3 set-up of trainable token rows is CUDA-only
])
def test_one_answer_says_where_the_ranks_load_the_model_partitioned(stage, world, method, device, partitioned):
    assert loads_partitioned(stage, world, method, device) is partitioned


def test_past_runs_correct_only_plans_of_their_own_method(tmp_path, monkeypatch):
    """A LoRA run that measured 3x its prediction corrects the next LoRA plan of the model, not a full one."""
    from engine.store import Tracker, open_store

    monkeypatch.delenv("DIALSUM_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'dialsum.db'}"
    with open_store(uri) as store:
        tracker = Tracker(store)
        tracker.create_run("past", name="past", config={"model": {"name_or_path": LLAMA_3_8B}},
                           plan={"world_size": 8, "zero_stage": 2, "micro_batch_size": 1, "method": "lora",
                                 "memory": {"correction": 1.0}}, environment={})
        tracker.start("past")
        tracker.log_event("past", 10, "memory_peaks", {"peak_bytes_per_rank": [3], "max_bytes": 3, "device": "cuda",
                                                       "predicted_bytes": 1, "prediction_error": -2 / 3})
        tracker.finish("past", "completed")
    full = _plan(LLAMA_3_8B, "a100x8-nvlink", method="full", tracking_uri=uri)
    lora = _plan(LLAMA_3_8B, "a100x8-nvlink", method="lora", tracking_uri=uri)
    assert full.memory["correction"] == 1.0 and "memory" not in full.reasons
    assert lora.memory["correction"] == pytest.approx(3.0) and "with lora" in lora.reasons["memory"]
