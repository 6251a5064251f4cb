"""Planner latency for 7B- and 70B-parameter encoder-decoder configs (built from dicts, no weights) on 80 GB GPUs.

7B is planned for one node of 8 GPUs, 70B for 4 such nodes (it cannot train on one: even ZeRO-3 keeps 18 bytes per
parameter / 8 GPUs = 157 GB each). Nodes have 8 TiB of RAM (each rank loads the fp32 model before partitioning).

Per model: sizing the config (`model_spec`: the model instantiated on the meta device and counted) and planning
(`plan_for_spec`: candidate search, DeepSpeed config rendered and validated), first call and median of the rest, in
this process after imports. The anchor row is the cost of the meta-device instantiation alone, the floor any
config-driven estimator (accelerate's `estimate-memory` does the same) pays. The last row is the whole
`dialsum plan --model-params 70B` command, imports included. Target: <= 0.5 s per plan.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from common import REPO_ROOT, bench_env, fmt_s, median, print_report

TARGET_S = 0.5

# LLaMA-like widths; "t5" is gated (T5 v1.1 / umT5 style), "bart" is BART's plain FFN. Sizes give ~7B and ~70B.
MODELS = {
    "T5-gated 7B": {"model_type": "t5", "d_model": 4096, "d_ff": 11008, "d_kv": 128, "num_heads": 32, "num_layers": 16,
                    "num_decoder_layers": 16, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
                    "tie_word_embeddings": False},
    "BART 7B": {"model_type": "bart", "d_model": 4096, "encoder_ffn_dim": 16384, "decoder_ffn_dim": 16384,
                "encoder_layers": 16, "decoder_layers": 16, "encoder_attention_heads": 32,
                "decoder_attention_heads": 32, "vocab_size": 50265},
    "T5-gated 70B": {"model_type": "t5", "d_model": 8192, "d_ff": 28672, "d_kv": 128, "num_heads": 64, "num_layers": 32,
                     "num_decoder_layers": 32, "vocab_size": 32128, "feed_forward_proj": "gated-gelu",
                     "tie_word_embeddings": False},
    "BART 70B": {"model_type": "bart", "d_model": 8192, "encoder_ffn_dim": 32768, "decoder_ffn_dim": 32768,
                 "encoder_layers": 40, "decoder_layers": 40, "encoder_attention_heads": 64,
                 "decoder_attention_heads": 64, "vocab_size": 50265},
}
QUICK_MODELS = {"BART 7B widths, 2+2 layers": {**MODELS["BART 7B"], "encoder_layers": 2, "decoder_layers": 2}}


def described_topology(gpus: int, gpu_bytes: int, nnodes: int):
    from launcher.topology import ClusterInfo, GPUInfo, Topology

    return Topology(hostname="described", cpu_cores=64, ram_bytes=8 * 2**40, cpu_bf16=False,
                    gpus=[GPUInfo(index=i, name="H100", memory_total_bytes=gpu_bytes, compute_capability="9.0",
                                  bf16=True) for i in range(gpus)],
                    links=[["self" if i == j else "nvlink" for j in range(gpus)] for i in range(gpus)],
                    cluster=ClusterInfo(nnodes=nnodes), source="args")


def time_calls(fn, repeats: int) -> tuple[float, float, object]:
    """(first call, median of the other calls, last result)."""
    times, result = [], None
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times[0], median(times[1:]), result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: one shallow model, one repeat, no CLI row")
    a = p.parse_args(argv)
    models = QUICK_MODELS if a.quick else MODELS
    repeats = 1 if a.quick else a.repeats

    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from engine.schema import DialsumConfig
    from launcher.memory_estimate import model_spec
    from launcher.planner import plan_for_spec

    cfg = DialsumConfig()
    cfg.data.max_source_length, cfg.data.max_target_length = 512, 128
    rows, ok = [], True
    for name, sizes in models.items():
        nnodes = 4 if "70B" in name else 1
        topology = described_topology(a.gpus, 80 * 10**9, nnodes)
        cfg.training.global_batch_size = 8 * a.gpus * nnodes
        def meta_only(sizes=sizes):
            kwargs = dict(sizes)
            with torch.device("meta"):
                return AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))

        anchor_first, anchor, _ = time_calls(meta_only, repeats)
        spec_first, spec_t, spec = time_calls(lambda sizes=sizes: model_spec(sizes), repeats)
        plan_first, plan_t, plan = time_calls(
            lambda spec=spec: plan_for_spec(cfg, spec, topology, run_id="bench", nnodes=nnodes), repeats)
        total = spec_t + plan_t
        ok &= spec_first + plan_first <= TARGET_S
        rows.append([name, f"{spec.params / 1e9:.2f}B", f"{nnodes} x {a.gpus}", fmt_s(anchor), fmt_s(spec_t), fmt_s(plan_t), fmt_s(total),
                     fmt_s(spec_first + plan_first), f"{total / anchor:.2f}",
                     f"ZeRO-{plan.zero_stage}, micro {plan.micro_batch_size}, "
                     f"ckpt {'on' if plan.gradient_checkpointing else 'off'}, "
                     f"offload {'on' if plan.offload_optimizer else 'off'}"])
    if not a.quick:
        cmd = [sys.executable, "-m", "launcher.cli", "plan", "--model-params", "70B", "--gpus", str(a.gpus),
               "--gpu-memory", "80GB", "--nnodes", "4", "--host-memory", "8TiB", "--json"]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=REPO_ROOT, env=bench_env(), capture_output=True, check=True, timeout=300)
        cli = time.perf_counter() - t0
        rows.append(["`dialsum plan --model-params 70B` (whole command)", "70B", f"4 x {a.gpus}", "-", "-", "-", fmt_s(cli),
                     fmt_s(cli), "-", "bare parameter count"])
    print_report(
        "Planner latency (no weights, described 80 GB GPUs)",
        ["model", "params", "nodes x GPUs", "anchor: meta-device build", "size config", "plan", "total (median)",
         "total (first call)", "total / anchor", "plan chosen"], rows,
        [f"median of {repeats} calls after a first call, in-process after imports; global batch 8 per GPU, "
         f"source/target {cfg.data.max_source_length}/{cfg.data.max_target_length}; target <= {TARGET_S} s per plan",
         f"verdict: {'target met' if ok else 'TARGET MISSED'} (first calls)"])


if __name__ == "__main__":
    main()
