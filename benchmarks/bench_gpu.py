"""GPU: tokens/s and MFU for BART-base- and BART-large-sized models, dialsum's planned config vs HF Trainer defaults;
the planner's predicted peak memory vs the measured one.

dialsum side: `dialsum launch` (the planner picks precision, ZeRO stage, micro-batch and checkpointing for this GPU).
Anchor: the plain Seq2SeqTrainer script with the Trainer's defaults (fp32, batch 8 per device, no DeepSpeed). Both
train randomly initialised models of the published sizes (no hub) with the init-model tokenizer on DialogSum rows, and
both count non-padding source tokens the same way (the Trainer's `num_input_tokens_seen`). MFU uses the engine's
FLOPs-per-token estimate and the GPU's dense bf16 peak, for both sides. Exits 0 with a message when there is no CUDA.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path

import yaml

SIZES = {  # BART-base / BART-large published shapes
    "BART-base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                      decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072),
    "BART-large": dict(d_model=1024, encoder_layers=12, decoder_layers=12, encoder_attention_heads=16,
                       decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096),
}
VOCAB = 50265


def sized_model(tokenizer_dir: Path, sizes: dict, out: Path) -> Path:
    """A random BART of the given shape with the (small) init-model tokenizer: ids fit, the embedding is full size."""
    import torch
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = BartConfig(vocab_size=VOCAB, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id, **sizes)
    BartForConditionalGeneration(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--max-source", type=int, default=512)
    p.add_argument("--max-target", type=int, default=128)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: BART-base only, 8 steps")
    a = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA device on this machine; nothing measured. Run it on a GPU machine "
              "(python benchmarks/bench_gpu.py).")
        return 0
    from bench_engine_vs_trainer import engine_config, run
    from common import BENCH_DIR, MINI_DIR, build_bench_model, fmt_s, print_report
    from engine.callbacks import estimate_flops_per_token, peak_flops_for_device
    from engine.config import load_config
    from launcher.planner import make_plan
    from launcher.topology import detect_topology
    from step_timer import steady_step_time, steady_tokens_per_s

    sizes = {"BART-base": SIZES["BART-base"]} if a.quick else SIZES
    steps, warmup = (8, 3) if a.quick else (a.steps, a.warmup)
    peak = peak_flops_for_device()
    ratio = a.max_target / a.max_source
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        work = Path(tmp)
        tok_dir = build_bench_model(work / "tokenizer")
        for name, shape in sizes.items():
            model = sized_model(tok_dir, shape, work / name)
            settings = argparse.Namespace(seed=42, rows=1000, max_source=a.max_source, max_target=a.max_target,
                                          steps=steps, lr=1e-4, batch=a.global_batch, logging_steps=10,
                                          deepspeed=True)
            out = work / f"timer-dialsum-{name}.json"
            config = engine_config(work, model, settings, 1, out)
            cfg = yaml.safe_load(config.read_text())
            cfg["parallel"]["zero_stage"] = None  # the planner chooses
            config.write_text(yaml.safe_dump(cfg))
            plan = make_plan(load_config([str(config)]), detect_topology(), run_id=uuid.uuid4().hex[:12])
            run([sys.executable, "-m", "launcher.cli", "launch", str(config)], f"dialsum launch ({name})")
            ours = json.loads(out.read_text())
            base = work / f"timer-plain-{name}.json"
            run([sys.executable, str(BENCH_DIR / "plain_trainer.py"), "--model", str(model),
                 "--train", str(MINI_DIR / "train.csv"), "--rows", "1000", "--out", str(work / f"plain-{name}"),
                 "--timer-out", str(base), "--steps", str(steps), "--global-batch", "8", "--lr", "1e-4",
                 "--seed", "42", "--logging-steps", "10", "--max-source", str(a.max_source),
                 "--max-target", str(a.max_target), "--cuda", "--count-tokens"], f"plain Trainer defaults ({name})")
            plain = json.loads(base.read_text())
            params = plan.memory.get("params", 0)
            flops = estimate_flops_per_token(params, target_to_source=ratio)
            for side, timing, how in (("anchor: HF Trainer defaults", plain, "fp32, batch 8, no DeepSpeed"),
                                      ("dialsum planned", ours,
                                       f"{plan.precision}, ZeRO-{plan.zero_stage}, micro {plan.micro_batch_size}, "
                                       f"ckpt {'on' if plan.gradient_checkpointing else 'off'}")):
                tps = steady_tokens_per_s(timing, warmup)
                mfu = f"{flops * tps / peak:.1%}" if peak else "n/a"
                predicted = (plan.memory["predicted_peak_bytes_per_gpu"] - plan.memory["overhead_bytes_per_gpu"]
                             if side == "dialsum planned" else None)
                measured = timing["peak_memory_bytes"]
                rows.append([name, f"{params / 1e6:.0f}M", side, how, f"{tps:,.0f}", mfu,
                             fmt_s(steady_step_time(timing, warmup)),
                             f"{predicted / 2**30:.2f} GiB" if predicted else "-",
                             f"{measured / 2**30:.2f} GiB" if measured else "-"])
    print_report(
        f"GPU throughput and memory ({torch.cuda.get_device_name()})",
        ["model", "params", "side", "settings", "source tokens/s", "MFU", "step", "predicted peak (excl. CUDA context)",
         "measured peak allocated"], rows,
        [f"{steps} steps, first {warmup} excluded; source/target {a.max_source}/{a.max_target}; dialsum global batch "
         f"{a.global_batch}; MFU = FLOPs/token (3N(1+t/s)) x tokens/s / dense bf16 peak"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
