"""Planner: choices and reasons for each fixture topology, pins, errors, the rendered DeepSpeed config, the CLI."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoConfig

from engine.config import LoadedConfig, load_config
from engine.errors import UserError
from engine.schema import DialsumConfig
from launcher.cli import main
from launcher.ds_config import check_deepspeed_config, load_template, render_deepspeed_config
from launcher.memory_estimate import model_state_bytes, bare_spec
from engine.plan import Plan
from launcher.planner import CPU_EVAL_BATCH, make_plan
from launcher.topology import GPUInfo, Topology, load_topology

FIXTURES = Path(__file__).parent / "fixtures" / "topologies"
MODELS = {  # published sizes of the real checkpoints
    "bart-base": dict(model_type="bart", d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, vocab_size=50265),
    "bart-large": dict(model_type="bart", d_model=1024, encoder_layers=12, decoder_layers=12,
                       encoder_attention_heads=16, decoder_attention_heads=16, encoder_ffn_dim=4096,
                       decoder_ffn_dim=4096, vocab_size=50265),
    "t5-3b": dict(model_type="t5", d_model=1024, d_ff=16384, num_layers=24, num_heads=32, d_kv=128, vocab_size=32128),
    "bart-7b": dict(model_type="bart", d_model=4096, encoder_layers=16, decoder_layers=16, encoder_attention_heads=32,
                    decoder_attention_heads=32, encoder_ffn_dim=16384, decoder_ffn_dim=16384, vocab_size=50265),
    "t5-70b": dict(model_type="t5", d_model=8192, d_ff=28672, num_layers=40, num_heads=64, d_kv=128,
                   vocab_size=32128, feed_forward_proj="gated-gelu"),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    for name, sizes in MODELS.items():
        kwargs = dict(sizes)
        AutoConfig.for_model(kwargs.pop("model_type"), **kwargs).save_pretrained(root / name)
    return {name: str(root / name) for name in MODELS}


def topo(name: str) -> Topology:
    return load_topology(FIXTURES / f"{name}.yaml")


@pytest.fixture(autouse=True)
def _no_thread_pin(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # a user's own setting is kept by the planner


def plan_for(model: str, topology: Topology | str, *, global_batch: int = 8, source_length: int = 512,
             nproc: int | None = None, nnodes: int | None = None, **pins) -> Plan:
    cfg = DialsumConfig()
    cfg.model.name_or_path = model
    cfg.training.global_batch_size = global_batch
    cfg.data.max_source_length = source_length
    for key, value in pins.items():
        setattr(cfg.parallel, key, value)
    topology = topo(topology) if isinstance(topology, str) else topology
    return make_plan(LoadedConfig(config=cfg, sources={}), topology, run_id="r1", nnodes=nnodes, nproc_per_node=nproc)


def autos(node) -> list:
    if isinstance(node, dict):
        return [a for v in node.values() for a in autos(v)]
    if isinstance(node, list):
        return [a for v in node for a in autos(v)]
    return [node] if node == "auto" else []


def assert_consistent(plan: Plan) -> None:
    """Invariants every plan keeps, whatever it chose."""
    assert plan.micro_batch_size * plan.gradient_accumulation_steps * plan.world_size == plan.global_batch_size
    assert plan.world_size == plan.nnodes * plan.nproc_per_node
    assert set(plan.reasons) >= {"model", "world_size", "precision", "zero_stage", "offload", "gradient_checkpointing",
                                 "micro_batch_size"}
    ds = plan.deepspeed_config
    if plan.use_deepspeed:
        assert autos(ds) == [] and "optimizer" not in ds and "scheduler" not in ds
        assert ds["train_batch_size"] == plan.global_batch_size
        assert ds["train_micro_batch_size_per_gpu"] == plan.micro_batch_size
        assert ds["gradient_accumulation_steps"] == plan.gradient_accumulation_steps
        assert ds["zero_optimization"]["stage"] == plan.zero_stage
        assert ds["bf16"]["enabled"] == (plan.precision == "bf16")
        assert ds["fp16"]["enabled"] == (plan.precision == "fp16")
    if plan.memory:
        for stage in "0123":
            row = plan.memory[stage]
            assert row["total"] == (row["model_state_bytes_per_gpu"] + row["activation_bytes_per_gpu"]
                                    + row["overhead_bytes_per_gpu"])
        assert plan.memory["predicted_peak_bytes_per_gpu"] == plan.memory[str(plan.zero_stage)]["total"]
        assert plan.memory["predicted_peak_bytes_per_gpu"] <= plan.memory["budget_bytes_per_gpu"]
    assert Plan.from_dict(json.loads(plan.to_json())) == plan


# ---------------------------------------------------------------------------------------------------- fixtures

def test_one_h100_bart_large_needs_no_partitioning(models):
    plan = plan_for(models["bart-large"], "h100x1")
    assert_consistent(plan)
    assert (plan.device, plan.backend, plan.precision, plan.world_size) == ("cuda", "nccl", "bf16", 1)
    assert plan.zero_stage in (0, 1) and not plan.offload_optimizer and not plan.offload_params
    assert not plan.gradient_checkpointing and plan.micro_batch_size == 8 and plan.gradient_accumulation_steps == 1
    assert plan.env == {"OMP_NUM_THREADS": "32"}  # one rank: all 32 cores of the fixture
    assert plan.topology["gpus"][0]["name"].startswith("NVIDIA H100")
    assert "406.3M parameters" in plan.reasons["model"]
    assert "compute capability >= 8.0" in plan.reasons["precision"]
    assert plan.reasons["zero_stage"].startswith("0: model states fit")
    assert plan.reasons["gradient_checkpointing"].startswith("off: activations fit")
    assert "largest divisor of 8 that fits" in plan.reasons["micro_batch_size"]


def test_eight_a100_t5_3b_takes_the_lowest_stage_that_fits(models):
    plan = plan_for(models["t5-3b"], "a100x8-nvlink")
    assert_consistent(plan)
    assert (plan.zero_stage, plan.precision, plan.world_size, plan.offload_optimizer) == (1, "bf16", 8, False)
    assert not plan.memory["0"]["fits"] and plan.memory["1"]["fits"]
    assert "cheaper settings need >= 56.5 GiB" in plan.reasons["zero_stage"]


def test_four_4090s_on_pcie_prefer_zero2_with_checkpointing_over_zero3(models):
    plan = plan_for(models["t5-3b"], "rtx4090x4-pcie", source_length=2048)
    assert_consistent(plan)
    assert plan.precision == "bf16"  # T5 on Ada: bf16, never fp16
    assert plan.zero_stage == 2 and (plan.gradient_checkpointing or plan.offload_optimizer)
    assert plan.memory["3"]["model_state_bytes_per_gpu"] < plan.memory["2"]["model_state_bytes_per_gpu"]
    assert "plain ZeRO-3 would fit" in plan.reasons["zero_stage"] and "no NVLink" in plan.reasons["zero_stage"]
    assert plan.reasons["gradient_checkpointing"].startswith("on: without it activations are")
    # the same cards joined by NVLink take ZeRO-3 rather than recompute activations
    nvlinked = dataclasses.replace(topo("rtx4090x4-pcie"),
                                   links=[["self" if i == j else "nvlink" for j in range(4)] for i in range(4)])
    fast = plan_for(models["t5-3b"], nvlinked, source_length=2048)
    assert (fast.zero_stage, fast.gradient_checkpointing, fast.offload_optimizer) == (3, False, False)
    # at 512 source tokens plain ZeRO-2 fits
    short = plan_for(models["t5-3b"], "rtx4090x4-pcie")
    assert (short.zero_stage, short.gradient_checkpointing, short.offload_optimizer) == (2, False, False)


def test_two_nodes_of_h100_count_all_ranks(models):
    plan = plan_for(models["t5-3b"], "h100x8-2nodes", global_batch=64)
    assert_consistent(plan)
    assert (plan.nnodes, plan.nproc_per_node, plan.world_size) == (2, 8, 16)
    assert plan.micro_batch_size * plan.gradient_accumulation_steps == 4
    assert "2 node(s) x 8 GPU rank(s)" in plan.reasons["world_size"]
    one_node = plan_for(models["t5-3b"], "h100x8-2nodes", global_batch=64, nnodes=1)
    assert one_node.world_size == 8


FREED_ACTIVATIONS = """
import torch
def rss(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
big = torch.ones(4 * 2**20); del big     # a freed 16 MiB block: glibc's default threshold rises to 16 MiB
before = rss()
step = [torch.ones(2**19) for _ in range(100)]  # one step's activations: 100 x 2 MiB
kept = torch.ones(2**19)                   # alive above them on the heap, as the next step's tensors are
del step
print(rss() - before)
"""


def test_cpu_ranks_give_freed_activations_back_to_the_os(models):
    """The CPU plan's rank environment: 200 MiB of freed activations stay in a default process (the peak the plan
    does not predict) and go back to the OS in a rank's."""
    plan = plan_for(models["bart-base"], "cpu-only")

    def kept_mib(env: dict) -> float:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", FREED_ACTIVATIONS], env={**clean, **env}, capture_output=True,
                             text=True, timeout=120, check=True)
        return float(out.stdout.split()[-1])

    assert kept_mib({}) > 150
    assert kept_mib(plan.env) < 20


EXTERNAL_RANK = """
import os, sys
from engine.distributed import plan_for_this_process
from engine.world import World
plan = plan_for_this_process(World("single", 0, 0, 1, 1), dict(os.environ), [sys.argv[1]])
assert plan.device == "cpu" and plan.env["MALLOC_MMAP_THRESHOLD_"] == str(2**20), plan.env
""" + FREED_ACTIVATIONS


def test_ranks_someone_else_started_give_freed_activations_back_too(tmp_path, tiny_model_dir, mini_data):
    """srun / torchrun ranks start before the plan exists (glibc reads MALLOC_MMAP_THRESHOLD_ at start-up only):
    the plan's threshold reaches their allocator all the same."""
    config = tmp_path / "run.yaml"
    config.write_text(f"model: {{name_or_path: {tiny_model_dir}}}\ndata: {{train_file: {mini_data['train_csv']}}}\n"
                      f"experiment: {{output_root: {tmp_path / 'out'}}}\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "CUDA_"))}
    out = subprocess.run([sys.executable, "-c", EXTERNAL_RANK, str(config)], env={**clean, "CUDA_VISIBLE_DEVICES": ""},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split()[-1]) < 20


def test_cpu_only_plans_fp32_on_gloo(models):
    plan = plan_for(models["bart-base"], "cpu-only")
    assert_consistent(plan)
    assert (plan.device, plan.backend, plan.precision, plan.nproc_per_node) == ("cpu", "gloo", "fp32", 1)
    assert plan.env == {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "16", "MALLOC_MMAP_THRESHOLD_": str(2**20)}
    assert plan.zero_stage == 0
    assert not plan.offload_optimizer
    two_ranks = plan_for(models["bart-base"], "cpu-only", nproc=2)
    assert two_ranks.env["OMP_NUM_THREADS"] == "8", "each rank gets its share of the cores"
    assert (plan.use_deepspeed, plan.deepspeed_config) == (False, None), "ZeRO-0 fits: plain DDP, no DeepSpeed"
    assert "CPU default" in plan.reasons["precision"] and "CPU default" in plan.reasons["world_size"]
    two = plan_for(models["bart-base"], "cpu-only", nproc=2, precision="bf16", deepspeed=True)
    assert two.deepspeed_config["bf16"]["enabled"] is True
    assert (two.world_size, two.precision, two.micro_batch_size * two.gradient_accumulation_steps) == (2, "bf16", 4)
    assert two.deepspeed_config["zero_optimization"].get("overlap_comm", False) is False
    with pytest.raises(UserError, match="parallel.precision: fp16 is not supported on CPU"):
        plan_for(models["bart-base"], "cpu-only", precision="fp16")
    no_bf16 = dataclasses.replace(topo("cpu-only"), cpu_bf16=False)
    with pytest.raises(UserError, match="no native bf16"):
        plan_for(models["bart-base"], no_bf16, precision="bf16")


def _v100s() -> Topology:
    gpus = [GPUInfo(index=i, name="Tesla V100-SXM2-32GB", memory_total_bytes=34089730048, compute_capability="7.0",
                    bf16=False) for i in range(2)]
    return dataclasses.replace(topo("a100x8-nvlink"), gpus=gpus, links=[["self", "nvlink"], ["nvlink", "self"]])


def test_no_bf16_gpus_give_fp16_for_bart_and_fp32_for_t5(models):
    assert plan_for(models["bart-base"], _v100s()).precision == "fp16"
    t5 = plan_for(models["t5-3b"], _v100s())
    assert t5.precision == "fp32" and "fp16 overflows in t5" in t5.reasons["precision"]
    assert_consistent(t5)
    with pytest.raises(UserError, match="parallel.precision: fp16 pinned for a t5 model"):
        plan_for(models["t5-3b"], "h100x1", precision="fp16")
    with pytest.raises(UserError, match="parallel.precision: bf16 pinned but the GPUs"):
        plan_for(models["bart-base"], _v100s(), precision="bf16")


# ---------------------------------------------------------------------------------------------------- pins and errors

def test_pins_are_honoured_with_reasons(models):
    plan = plan_for(models["bart-large"], "a100x8-nvlink", zero_stage=3, offload_optimizer=True, offload_params=True,
                    gradient_checkpointing=True, micro_batch_size=1)
    assert_consistent(plan)
    assert (plan.zero_stage, plan.offload_optimizer, plan.offload_params) == (3, True, True)
    assert plan.gradient_checkpointing
    assert plan.micro_batch_size == 1 and plan.gradient_accumulation_steps == 1
    assert plan.reasons["zero_stage"] == "3: pinned (parallel.zero_stage)"
    assert "pinned" in plan.reasons["offload"] and "pinned" in plan.reasons["gradient_checkpointing"]
    zero = plan.deepspeed_config["zero_optimization"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": True}
    assert zero["offload_param"] == {"device": "cpu", "pin_memory": True}


def test_pinned_plan_that_cannot_fit_says_by_how_much_and_what_fits(models):
    with pytest.raises(UserError) as err:
        plan_for(models["t5-3b"], "rtx4090x4-pcie", zero_stage=0)
    msg = str(err.value)
    assert msg.startswith("parallel (zero_stage=0): the pinned plan needs ")
    assert "GiB over the 21.6 GiB budget" in msg and "memory_headroom 0.1" in msg
    assert "would fit: zero_stage=2" in msg and "micro_batch_size=1" in msg
    pins = r"parallel \(zero_stage=2, offload_optimizer=False, gradient_checkpointing=False, micro_batch_size=2\)"
    with pytest.raises(UserError, match=pins + r".*would fit: .*gradient_checkpointing=True, micro_batch_size=2"):
        plan_for(models["t5-3b"], "rtx4090x4-pcie", micro_batch_size=2, gradient_checkpointing=False,
                 source_length=2048, zero_stage=2, offload_optimizer=False)
    with pytest.raises(UserError, match=r"nothing fits on 1 GPU\(s\) \(parallel.deepspeed=false rules out ZeRO\)"):
        plan_for(models["t5-3b"], "rtx4090x4-pcie", nproc=1, deepspeed=False)


def test_global_batch_must_divide_by_world_size(models):
    with pytest.raises(UserError, match=r"global_batch_size: 6 is not divisible by the world size 4 .*use 4 or 8"):
        plan_for(models["bart-base"], "rtx4090x4-pcie", global_batch=6)
    with pytest.raises(UserError, match=r"parallel.micro_batch_size: 3 does not divide .* = 4; use one of 1, 2, 4"):
        plan_for(models["bart-base"], "rtx4090x4-pcie", global_batch=16, micro_batch_size=3)
    with pytest.raises(UserError, match="5 ranks per node but the node has 4 GPUs"):
        plan_for(models["bart-base"], "rtx4090x4-pcie", nproc=5, global_batch=10)


def test_inconsistent_pins_are_user_errors(models):
    with pytest.raises(UserError, match="parallel.deepspeed: false"):
        plan_for(models["bart-base"], "h100x1", deepspeed=False, zero_stage=2)
    with pytest.raises(UserError, match="parallel.offload_optimizer: needs parallel.zero_stage >= 1"):
        plan_for(models["bart-base"], "h100x1", zero_stage=0, offload_optimizer=True)
    with pytest.raises(UserError, match="parallel.offload_params: needs parallel.zero_stage=3"):
        plan_for(models["bart-base"], "h100x1", zero_stage=2, offload_params=True)


def test_plain_ddp_plan_has_no_deepspeed_config(models):
    plan = plan_for(models["bart-base"], "a100x8-nvlink", deepspeed=False)
    assert_consistent(plan)
    assert (plan.use_deepspeed, plan.zero_stage, plan.deepspeed_config) == (False, 0, None)
    assert "plain DDP" in plan.reasons["zero_stage"]


def test_unreachable_hub_id_plans_conservatively_on_cpu_and_fails_on_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plan = plan_for("facebook/bart-base", "cpu-only")
    assert "cannot read the model config of 'facebook/bart-base'" in plan.reasons["model"]
    assert (plan.micro_batch_size, plan.zero_stage, plan.precision, plan.memory) == (1, 0, "fp32", {})
    assert_consistent(plan)
    staged = plan_for("facebook/bart-base", "cpu-only", zero_stage=2)
    assert staged.deepspeed_config["zero_optimization"]["reduce_bucket_size"] == 500_000_000  # DeepSpeed's default
    with pytest.raises(UserError, match="a GPU plan needs the model's sizes"):
        plan_for("facebook/bart-base", "h100x1")


def test_big_configs_plan_quickly(models):
    huge = dataclasses.replace(topo("h100x8-2nodes"), ram_bytes=8 * 2**40)
    for name, topology in (("bart-7b", topo("a100x8-nvlink")), ("t5-70b", huge)):
        nnodes = 8 if name == "t5-70b" else None
        plan_for(models[name], topology, nnodes=nnodes, global_batch=64)  # warm the model class import
        start = time.perf_counter()
        plan = plan_for(models[name], topology, nnodes=nnodes, global_batch=64)
        assert time.perf_counter() - start < 5   # loose; about 0.1-0.4 s here, the benchmark measures it
        assert_consistent(plan)
        assert plan.zero_stage >= 2 and not plan.memory["1"]["fits"]


def test_plan_from_layered_config_files(models, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"model:\n  name_or_path: {models['bart-base']}\ntraining:\n  global_batch_size: 16\n"
                    "  max_grad_norm: 0.5\nparallel:\n  zero_stage: 2\n")
    loaded = load_config([path], overrides=["parallel.micro_batch_size=2"], env={})
    plan = make_plan(loaded, topo("rtx4090x4-pcie"), run_id="abc", nproc_per_node=2)
    assert_consistent(plan)
    assert plan.config == loaded.to_dict() and plan.config_sources == loaded.sources
    assert plan.config_sources["parallel.zero_stage"] == f"file:{path}"
    assert (plan.run_id, plan.world_size, plan.zero_stage, plan.micro_batch_size, plan.gradient_accumulation_steps) == \
        ("abc", 2, 2, 2, 4)
    ds = plan.deepspeed_config
    assert ds["gradient_clipping"] == 0.5 and ds["zero_optimization"]["reduce_bucket_size"] == 768**2


# ---------------------------------------------------------------------------------------------------- DS config

@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_rendered_deepspeed_config_is_concrete_and_valid(stage):
    cfg = render_deepspeed_config(zero_stage=stage, precision="bf16", micro_batch_size=4, gradient_accumulation_steps=2,
                                  world_size=8, gradient_clipping=1.0, hidden_size=1024, device="cuda",
                                  offload_optimizer=stage > 0, offload_params=stage == 3)
    assert autos(cfg) == [] and "optimizer" not in cfg and "scheduler" not in cfg
    assert cfg["train_batch_size"] == 4 * 2 * 8 == cfg["train_micro_batch_size_per_gpu"] * \
        cfg["gradient_accumulation_steps"] * 8
    zero = cfg["zero_optimization"]
    assert zero["stage"] == stage
    if stage:
        assert zero["reduce_bucket_size"] == 1024**2 and zero["offload_optimizer"]["device"] == "cpu"
    if stage == 3:
        assert zero["stage3_prefetch_bucket_size"] == int(0.9 * 1024**2)
        assert zero["stage3_param_persistence_threshold"] == 10 * 1024
    assert "auto" in json.dumps(load_template(f"zero{stage}.json")) or stage == 0   # templates do hold "auto"


def test_deepspeed_check_rejects_bad_configs():
    good = render_deepspeed_config(zero_stage=2, precision="fp32", micro_batch_size=2, gradient_accumulation_steps=1,
                                   world_size=2, gradient_clipping=1.0, hidden_size=64, device="cpu")
    with pytest.raises(ValueError, match="train_batch_size 4 != 2 x 1 x 3"):
        check_deepspeed_config(good, world_size=3)
    with pytest.raises(ValueError, match=r"\"auto\" at zero_optimization.reduce_bucket_size"):
        check_deepspeed_config({**good, "zero_optimization": {"stage": 2, "reduce_bucket_size": "auto"}}, 2)
    with pytest.raises(Exception, match="bogus"):   # DeepSpeed's own pydantic config rejects unknown keys
        check_deepspeed_config({**good, "zero_optimization": {"stage": 2, "bogus": 1}}, 2)


# ---------------------------------------------------------------------------------------------------- CLI

def test_plan_cli_json_and_table(models, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  name_or_path: {models['t5-3b']}\ntraining:\n  global_batch_size: 16\n")
    args = ["plan", str(path), "--topology-file", str(FIXTURES / "rtx4090x4-pcie.yaml")]
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["zero_stage"] == 2 and data["precision"] == "bf16" and data["global_batch_size"] == 16
    for stage in "0123":
        assert data["memory"][stage]["model_state_bytes_per_gpu"] > 0
        assert data["memory"][stage]["activation_bytes_per_gpu"] > 0
    assert main([*args, "--set", "parallel.zero_stage=1"]) == 0
    out = capsys.readouterr().out
    assert "decision" in out and "zero_stage" in out and "pinned" in out and "Predicted peak" in out
    assert main([*args, "--set", "parallel.zero_stage=0"]) == 2
    assert "GiB over the" in capsys.readouterr().err


def test_plan_cli_bare_parameter_count(capsys):
    """A bare count is sized as a Llama-3-shaped decoder, so its plan counts activations (issue: 8B on 8 x 40 GB
    claimed ZeRO-2 fitted at 32.66 of 33.5 GiB with activations left out); model states as DeepSpeed's estimators."""
    assert main(["plan", "--model-params", "7.5B", "--gpus", "8", "--gpu-memory", "80GB", "--nnodes", "8",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["world_size"] == 64 and data["micro_batch_size"] == 1
    psi = 7_500_000_000
    assert data["memory"]["2"]["model_state_bytes_per_gpu"] == 2 * psi + 18 * psi // 64   # DeepSpeed's ZeRO-2
    assert data["memory"]["1"]["activation_bytes_per_gpu"] > 2**30   # 640 tokens through 30 layers of width 4096
    assert "Llama-3-shaped decoder (hidden 4096" in data["reasons"]["model"]
    assert data["zero_stage"] == 1   # ZeRO-0 needs 20 bytes x 7.5B = 150 GB
    assert data["memory"]["0"]["model_state_bytes_per_gpu"] == model_state_bytes(
        bare_spec(psi), stage=0, world_size=64, precision="bf16")
    assert main(["plan", "--model-params", "8B", "--gpus", "8", "--gpu-memory", "40GB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    zero2 = data["memory"]["2"]
    assert not zero2["fits"] and zero2["model_state_bytes_per_gpu"] < zero2["total"] - 2**30
    assert data["memory"]["predicted_peak_bytes_per_gpu"] <= data["memory"]["budget_bytes_per_gpu"]
    assert main(["plan", "--model-params", "7.5B", "--gpus", "8"]) == 2
    assert "--gpu-memory" in capsys.readouterr().err


def _past_run(tracker, run_id: str, model: str, device: str, predicted: int, measured: int, correction: float = 1.0):
    tracker.create_run(run_id, name="past", config={"model": {"name_or_path": model}},
                       plan={"world_size": 1, "zero_stage": 0, "micro_batch_size": 4,
                             "memory": {"correction": correction}}, environment={})
    tracker.start(run_id)
    tracker.log_event(run_id, 10, "memory_peaks", {
        "peak_bytes_per_rank": [measured], "max_bytes": measured, "device": device, "predicted_bytes": predicted,
        "prediction_error": (predicted - measured) / measured})
    tracker.finish(run_id, "completed")


def test_past_runs_of_the_model_on_this_device_correct_the_prediction(models, tmp_path, monkeypatch):
    """A real SQLite store written through the Tracker: the median measured/predicted of past CPU runs of this model
    scales the prediction (each against its own plan's uncorrected formula), and the plan says so."""
    from engine.store import Tracker, open_store

    monkeypatch.delenv("DIALSUM_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'dialsum.db'}"
    cfg = DialsumConfig()
    cfg.model.name_or_path, cfg.tracking.uri, cfg.training.global_batch_size = models["bart-base"], uri, 8
    loaded = LoadedConfig(config=cfg, sources={})
    with open_store(uri) as store:   # empty store: the formula alone
        Tracker(store)
    before = make_plan(loaded, topo("cpu-only"), run_id="r0")
    assert "memory" not in before.reasons and before.memory["correction"] == 1.0
    formula = before.memory["predicted_peak_bytes_per_gpu"]
    with open_store(uri) as store:
        tracker = Tracker(store)
        _past_run(tracker, "a", models["bart-base"], "cpu", formula, int(0.7 * formula))
        _past_run(tracker, "b", models["bart-base"], "cpu", formula, int(0.8 * formula))
        # planned with a 0.8 correction already: its uncorrected formula was predicted / 0.8
        _past_run(tracker, "c", models["bart-base"], "cpu", int(0.8 * formula), int(0.9 * formula), correction=0.8)
        _past_run(tracker, "gpu", models["bart-base"], "cuda", formula, 3 * formula)       # another kind of device
        _past_run(tracker, "other", models["bart-large"], "cpu", formula, 3 * formula)     # another model
    after = make_plan(loaded, topo("cpu-only"), run_id="r1")
    assert after.memory["correction"] == pytest.approx(0.8, rel=1e-3)
    assert "x0.80" in after.reasons["memory"] and "3 past run(s)" in after.reasons["memory"]
    assert "on cpu" in after.reasons["memory"]
    stage = after.memory[str(after.zero_stage)]
    assert stage["total"] == int(0.8 * (stage["model_state_bytes_per_gpu"] + stage["activation_bytes_per_gpu"]
                                        + stage["overhead_bytes_per_gpu"]))


def test_cpu_rank_baseline_is_measured_not_a_constant(tmp_path, monkeypatch):
    """The CPU overhead is the RSS of a fresh interpreter after a rank's imports, measured once and cached."""
    from launcher.memory_estimate import cpu_baseline_bytes, overhead_bytes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rss = cpu_baseline_bytes()
    assert 150 * 2**20 < rss < 2 * 2**30 and rss != 2**30
    cached = list((tmp_path / "dialsum").glob("cpu-rank-baseline-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["rss_bytes"] == rss
    assert overhead_bytes(bare_spec(1), device="cpu", stage=0, precision="fp32") == rss


def test_trace_of_a_gpu_plan_without_cuda_torch_is_one_line(models, tmp_path, capsys):
    """Planning a GPU box from a laptop with --trace: the CUDA kernels cannot be traced on a CPU build of torch; one
    line naming the flag, exit 2, no traceback (the formula plan still works)."""
    import torch

    if torch.backends.cuda.is_built():
        pytest.skip("this torch can trace CUDA kernels")
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  name_or_path: {models['bart-base']}\ntraining:\n  global_batch_size: 8\n")
    args = ["plan", str(path), "--topology-file", str(FIXTURES / "a100x8-nvlink.yaml")]
    assert main([*args, "--trace"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dialsum: error: --trace:") and err.count("\n") == 1 and "Traceback" not in err
    assert main(args) == 0


def test_plan_cli_trace_plans_with_the_traced_activations(models, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(f"model:\n  name_or_path: {models['bart-base']}\ntraining:\n  global_batch_size: 2\n"
                    "data:\n  max_source_length: 64\n  max_target_length: 16\nparallel:\n  gradient_checkpointing: false\n")
    args = ["plan", str(path), "--topology-file", str(FIXTURES / "cpu-only.yaml")]
    assert main([*args, "--json"]) == 0
    formula = json.loads(capsys.readouterr().out)["memory"]
    assert "trace" not in formula
    assert main([*args, "--json", "--trace"]) == 0
    traced = json.loads(capsys.readouterr().out)["memory"]
    row = traced["trace"]["checkpointing"]["off"]
    assert set(traced["trace"]["checkpointing"]) == {"off"} and traced["trace"]["micro_batch_size"] == 2
    assert row["formula_bytes"] == formula["activation_bytes_per_gpu"]
    assert abs(traced["activation_bytes_per_gpu"] - row["traced_bytes"]) <= 1   # float scale, rounded
    assert row["traced_bytes"] != row["formula_bytes"]
    assert main([*args, "--set", "parallel.trace_memory=true"]) == 0   # the config switch, and the table line
    out = capsys.readouterr().out
    assert "planned with the trace" in out and "formula" in out and "trace" in out


def _plan_with(model: str, topology: str, *, nproc: int | None = None, training: dict | None = None,
               **pins) -> Plan:
    cfg = DialsumConfig()
    cfg.model.name_or_path = model
    for key, value in (training or {}).items():
        setattr(cfg.training, key, value)
    for key, value in pins.items():
        setattr(cfg.parallel, key, value)
    return make_plan(LoadedConfig(config=cfg, sources={}), topo(topology), run_id="r1", nproc_per_node=nproc)


def test_speed_choices_on_cpu_ranks(models):
    """Issue 17: plain DDP when ZeRO-0 fits, length-grouped training, generation 8 rows at a time (the fastest CPU
    batch measured), fused AdamW, no loader workers when every core computes; each with its reason, carried to the
    ranks by the Plan."""
    plan = _plan_with(models["bart-base"], "cpu-only", nproc=2)
    assert_consistent(plan)
    assert (plan.zero_stage, plan.use_deepspeed, plan.deepspeed_config) == (0, False, None)
    assert "ZeRO-0 needs no partitioning" in plan.reasons["deepspeed"]
    assert plan.group_by_length and "LengthGroupedSampler" in plan.reasons["group_by_length"]
    assert plan.eval_batch_size == CPU_EVAL_BATCH == 8 and "fastest CPU generation batch" in plan.reasons["eval_batch_size"]
    assert plan.optim == "adamw_torch_fused" and plan.dataloader_num_workers == 0
    assert "every core computes" in plan.reasons["dataloader_num_workers"]
    assert plan.pad_to_multiple_of == 8 and "oneDNN keeps a kernel per shape" in plan.reasons["pad_to_multiple_of"]
    back = Plan.from_json(plan.to_json())
    assert (back.group_by_length, back.eval_batch_size, back.optim) == (True, plan.eval_batch_size, "adamw_torch_fused")

    pinned = _plan_with(models["bart-base"], "cpu-only", nproc=2, deepspeed=True, eval_batch_size=3,
                        training={"group_by_length": False, "optim": "adamw_torch", "dataloader_num_workers": 1})
    assert (pinned.use_deepspeed, pinned.zero_stage, pinned.deepspeed_config["zero_optimization"]["stage"]) == (True, 0, 0)
    assert (pinned.group_by_length, pinned.eval_batch_size, pinned.optim, pinned.dataloader_num_workers) == (
        False, 3, "adamw_torch", 1)
    assert all("pinned" in pinned.reasons[k] for k in ("deepspeed", "group_by_length", "eval_batch_size", "optim",
                                                       "dataloader_num_workers"))


@pytest.mark.parametrize("source, target, pinned, multiple", [(512, 128, None, 8), (500, 128, None, 4),
                                                             (129, 33, None, 1), (512, 128, 64, 64), (512, 128, 1, 1)])
def test_batch_padding_never_passes_the_planned_lengths(models, source, target, pinned, multiple):
    """Batches pad to a multiple of 8 where 8 divides both max lengths, else to the largest divisor of 8 that does
    (memory is planned at the max lengths); a pin is honoured."""
    cfg = DialsumConfig()
    cfg.model.name_or_path = models["bart-base"]
    cfg.data.max_source_length, cfg.data.max_target_length, cfg.data.pad_to_multiple_of = source, target, pinned
    plan = make_plan(LoadedConfig(config=cfg, sources={}), topo("cpu-only"), run_id="r1")
    assert plan.pad_to_multiple_of == multiple
    assert ("pinned" in plan.reasons["pad_to_multiple_of"]) == (pinned is not None)


def test_a_pinned_padding_multiple_that_passes_the_lengths_is_a_user_error(models):
    cfg = DialsumConfig()
    cfg.model.name_or_path = models["bart-base"]
    cfg.data.max_target_length, cfg.data.pad_to_multiple_of = 100, 8
    with pytest.raises(UserError, match=r"^data.pad_to_multiple_of: 8 does not divide .*max_target_length 100"):
        make_plan(LoadedConfig(config=cfg, sources={}), topo("cpu-only"), run_id="r1")


def test_cpu_generation_batch_shrinks_to_what_fits(models, monkeypatch):
    """When 8 rows of beams do not fit a CPU rank's budget, the largest power of two below that does."""
    from launcher import planner

    real = planner.generation_bytes

    def over_budget_beyond_two_rows(spec, *, rows, **kw):  # 4 beams: 2 rows = 8 sequences
        return real(spec, rows=rows, **kw) + (2**50 if rows > 8 else 0)

    monkeypatch.setattr(planner, "generation_bytes", over_budget_beyond_two_rows)
    plan = _plan_with(models["bart-base"], "cpu-only", nproc=2)
    assert plan.eval_batch_size == 2 and "the largest that fits, up to 8" in plan.reasons["eval_batch_size"]


def test_deepspeed_only_when_memory_needs_zero_and_eval_batch_fits_the_gpu(models):
    big = _plan_with(models["bart-7b"], "a100x8-nvlink")
    assert big.zero_stage > 0 and big.use_deepspeed and f"ZeRO-{big.zero_stage}" in big.reasons["deepspeed"]
    small = _plan_with(models["bart-base"], "h100x1")
    assert (small.zero_stage, small.use_deepspeed) == (0, False)
    assert small.dataloader_num_workers >= 1, "GPU ranks leave cores for loader workers"
    from launcher.memory_estimate import generation_bytes, model_spec
    from launcher.planner import EVAL_BATCH_CAP

    spec = model_spec(models["bart-7b"])
    need = generation_bytes(spec, rows=big.eval_batch_size * 4, source_length=512, target_length=65,
                            precision=big.precision, device="cuda")
    assert big.micro_batch_size <= big.eval_batch_size <= EVAL_BATCH_CAP
    assert small.eval_batch_size > small.micro_batch_size and "no gradients" in small.reasons["eval_batch_size"]
    assert big.memory["model_state_bytes_per_gpu"] + need <= big.memory["budget_bytes_per_gpu"]


def test_plan_table_in_a_log_file_is_not_folded_at_80_columns(tmp_path):
    """`dialsum plan ... > plan.log` (a SLURM log, a CI log): the table is LOG_WIDTH wide, not rich's 80 for a pipe,
    so each reason stays on one or two lines; COLUMNS still wins when set."""
    import os
    import subprocess
    import sys

    from launcher.display import LOG_WIDTH

    args = [sys.executable, "-m", "launcher.cli", "plan", "--model-params", "7.5B", "--gpus", "8", "--gpu-memory",
            "80GB"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    widths = {}
    for columns in (None, "100"):
        out = subprocess.run(args, capture_output=True, text=True, timeout=120,
                             env=env if columns is None else {**env, "COLUMNS": columns}).stdout
        widths[columns] = max(len(line) for line in out.splitlines())
    assert 80 < widths[None] <= LOG_WIDTH and widths["100"] <= 100, widths


def test_ddp_looks_for_unused_parameters_only_where_the_model_has_them():
    """transformers turns DDP's find_unused_parameters on for every model without checkpointing: a graph walk after
    each forward and a warning each run. The plan traces one step on fake tensors instead: BART and T5 give every
    trainable parameter a gradient (off); a model that leaves one without (on); one that cannot be traced (on)."""
    from launcher.memory_estimate import model_spec, raw_config
    from launcher.planner import _find_unused, Setting
    from launcher.unused_parameters import unused_trainable_parameters

    for name in ("bart-base", "t5-base"):
        path = FIXTURES.parent / "model_configs" / name
        assert unused_trainable_parameters(AutoConfig.from_pretrained(path), raw_config(path)) == (), name
    led = AutoConfig.for_model("led", d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                               decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100,
                               attention_window=[4], max_encoder_position_embeddings=64,
                               max_decoder_position_embeddings=64)
    assert unused_trainable_parameters(led, {}) is None  # its attention reads tensor values: not traceable

    plan = plan_for(str(FIXTURES.parent / "model_configs" / "bart-base"), "cpu-only", nproc=2, deepspeed=False)
    assert plan.find_unused_parameters is False and plan.reasons["find_unused_parameters"].startswith("off: every")
    spec = model_spec(FIXTURES.parent / "model_configs" / "bart-base")
    setting = Setting(spec=dataclasses.replace(spec, unused_parameters=("model.pooler.weight",)), device="cpu",
                      precision="fp32", nnodes=1, nproc=2, source_length=512, target_length=128, device_bytes=1,
                      budget=1, cpu_budget=1, slow_interconnect=False)
    assert _find_unused(setting, use_deepspeed=False, world=2) == (
        True, "on: 1 trainable parameter(s) get no gradient in a training step (e.g. model.pooler.weight)")
    assert _find_unused(setting, use_deepspeed=True, world=2)[0] is False
    assert _find_unused(dataclasses.replace(setting, spec=dataclasses.replace(spec, unused_parameters=None)),
                        use_deepspeed=False, world=2)[0] is True
