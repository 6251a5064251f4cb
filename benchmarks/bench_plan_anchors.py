"""Plans for decoder-only LLMs beside what users have instead: published memory figures and static tables.

Part 1, the anchors: setups that publish a measured peak, planned by dialsum with the same model, method, adapters,
batch, tokens and checkpointing (pinned), and the prediction's error against the measurement. The peak compared is
what the caching allocator holds (model states + activations; torch.cuda.max_memory_allocated), without the CUDA
context that dialsum adds for the whole GPU.

Part 2, the grid: Llama-3-8B, SOLAR-10.7B and Llama-3.1-70B (published config.json files, no weights) on one RTX
4090, one H100, 8 x A100-40GB and 2 x 8 H100, full / LoRA / QLoRA at 1024 + 256 and 2048 + 256 tokens (prompt +
summary), global batch 16 over the world; what the planner picks and its predicted per-GPU peak, beside LLaMA-Factory's
table (full 16-bit 18 GB per billion parameters, LoRA 2 GB, QLoRA 0.5 GB: no sequence term, no batch) and axolotl's
8B figures. Plans take milliseconds once a config's spec is cached.

    python benchmarks/bench_plan_anchors.py            # both parts
"""
from __future__ import annotations

import argparse

from common import REPO_ROOT, print_report

from engine.config import LoadedConfig
from engine.errors import UserError
from engine.schema import DialsumConfig
from launcher.memory_estimate import GiB
from launcher.planner import make_plan
from launcher.topology import load_topology

CONFIGS = REPO_ROOT / "tests" / "fixtures" / "model_configs"
TOPOLOGIES = REPO_ROOT / "tests" / "fixtures" / "topologies"

# Published, fully specified: torchtune's README (Llama-3-8B, one RTX 4090, batch 2 packed to 2048 tokens,
# activation checkpointing; its recipes: LoRA rank 8 on q/v/output projections and the MLP, bf16).
TORCHTUNE_LORA = dict(r=8, targets=["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
ANCHORS = [
    ("torchtune: Llama-3-8B LoRA, 1x RTX 4090, batch 2 x 2048", "llama-3-8b", "rtx4090x4-pcie", 1, "lora", 2, 16.2),
    ("torchtune: Llama-3-8B QLoRA, 1x RTX 4090, batch 2 x 2048", "llama-3-8b", "rtx4090x4-pcie", 1, "qlora", 2, 7.4),
]
MODELS = {"Llama-3-8B": "llama-3-8b", "SOLAR-10.7B": "solar-10.7b", "Llama-3.1-70B": "llama-3.1-70b"}
SETUPS = {"1x RTX 4090": ("rtx4090x4-pcie", 1), "1x H100": ("h100x1", None), "8x A100-40GB": ("a100x8-nvlink", None),
          "2x8 H100": ("h100x8-2nodes", None)}
STATIC_GB_PER_B = {"full": 18.0, "lora": 2.0, "qlora": 0.5}   # LLaMA-Factory's README table
AXOLOTL_8B = {"full": "60-80 GB", "lora": "16-24 GB", "qlora": "10-14 GB"}
# PEFT's DeepSpeed guide, Llama-70B (sequence length, batch and packing not all stated: shown, not scored)
PEFT_70B = ["LoRA, ZeRO-3 (zero.Init), 8x H100: 64 GB per GPU", "QLoRA, ZeRO-3, 2x 40 GB: 36.6 GB per GPU"]


def config(model: str, method: str, *, source: int, target: int, global_batch: int, lora: dict | None = None,
           micro_batch: int | None = None, checkpointing: bool | None = None) -> LoadedConfig:
    cfg = DialsumConfig()
    cfg.model.name_or_path = str(CONFIGS / model)
    cfg.training.method, cfg.training.global_batch_size = method, global_batch
    cfg.data.max_source_length, cfg.data.max_target_length = source, target
    cfg.generation.num_beams = 1
    if lora:
        cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout = lora["r"], 2 * lora["r"], 0.0
        cfg.lora.target_modules = lora["targets"]
    cfg.parallel.micro_batch_size, cfg.parallel.gradient_checkpointing = micro_batch, checkpointing
    return LoadedConfig(config=cfg, sources={})


def anchors() -> list[list]:
    rows = []
    for name, model, topology, nproc, method, batch, measured in ANCHORS:
        # loss on the last 256 tokens of each 2048 (dialsum's logits are for label positions only)
        loaded = config(model, method, source=2048 - 256, target=256, global_batch=batch, lora=TORCHTUNE_LORA,
                        micro_batch=batch, checkpointing=True)
        plan = make_plan(loaded, load_topology(TOPOLOGIES / f"{topology}.yaml"), run_id="anchor", nproc_per_node=nproc)
        m = plan.memory
        allocated = (m["model_state_bytes_per_gpu"] + m["activation_bytes_per_gpu"]) / GiB
        rows.append([name, f"{measured:.1f}", f"{m['model_state_bytes_per_gpu'] / GiB:.2f}",
                     f"{m['activation_bytes_per_gpu'] / GiB:.2f}", f"{allocated:.2f}",
                     f"{100 * (allocated - measured) / measured:+.1f}%"])
    return rows


def grid() -> list[list]:
    rows = []
    for label, model in MODELS.items():
        for setup, (topology, nproc) in SETUPS.items():
            for method in ("full", "lora", "qlora"):
                for source in (1024, 2048):
                    rows.append([label, setup, method, f"{source}+256", *_planned(model, topology, nproc, method,
                                                                                 source)])
    return rows


def _planned(model: str, topology: str, nproc: int | None, method: str, source: int) -> list[str]:
    try:
        plan = make_plan(config(model, method, source=source, target=256, global_batch=16),
                         load_topology(TOPOLOGIES / f"{topology}.yaml"), run_id="grid", nproc_per_node=nproc)
    except UserError as exc:
        return ["does not fit", "-", str(exc).split(": needs ", 1)[-1].split(" per ")[0]]
    setting = (f"ZeRO-{plan.zero_stage}{' +offload' if plan.offload_optimizer else ''}"
               f"{' +params' if plan.offload_params else ''}{', ckpt' if plan.gradient_checkpointing else ''}, "
               f"micro {plan.micro_batch_size} x {plan.gradient_accumulation_steps}")
    return [setting, f"{plan.memory['predicted_peak_bytes_per_gpu'] / GiB:.1f} GiB", ""]


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    print_report("Published measurements vs dialsum's prediction (GiB per GPU, allocator peak)",
                 ["setup", "measured", "model states", "activations", "predicted", "error"], anchors(),
                 notes=["torchtune computes the loss on every packed token in chunks; dialsum on the summary's 256"])
    params = {"Llama-3-8B": 8.03, "SOLAR-10.7B": 10.73, "Llama-3.1-70B": 70.55}
    print_report("Plans (global batch 16; predicted peak per GPU incl. 1 GiB CUDA context)",
                 ["model", "GPUs", "method", "tokens", "dialsum plan", "predicted", "smallest need (no fit)"], grid(),
                 notes=[f"LLaMA-Factory's table, any length and batch: {m} {', '.join(f'{k} {v * STATIC_GB_PER_B[m]:.0f} GB' for k, v in params.items())}"
                        for m in STATIC_GB_PER_B] + [f"axolotl, 8B: {m} {v}" for m, v in AXOLOTL_8B.items()]
                       + [f"PEFT's docs, Llama-70B: {figure}" for figure in PEFT_70B])


if __name__ == "__main__":
    main()
