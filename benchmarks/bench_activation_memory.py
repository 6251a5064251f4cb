"""Activation memory: the planner's prediction next to what one training step really allocates on this CPU.

Per case (model x micro-batch x checkpointing x precision), a fresh subprocess builds the model from a fixture config
(random weights, untied where the checkpoint is), runs one warm-up forward+backward so gradients exist, then polls its
own RSS every 2 ms during a second forward+backward: activations = peak minus the RSS just before. glibc's mmap threshold
is pinned (MALLOC_MMAP_THRESHOLD_) so freed activations go back to the OS and the second step allocates them afresh
rather than reusing heap the warm-up left behind (as the plan starts CPU ranks). Beside it: the process's high-water
mark over the three steps above the loaded model (gradients + activations + what the allocator keeps). Memory is not
timing: the numbers hold on a busy machine.

    python benchmarks/bench_activation_memory.py                      # mb 4, fp32+bf16, checkpointing off/on, 6 models
    python benchmarks/bench_activation_memory.py --models bart-base --micro 1 4 --save
    python benchmarks/bench_activation_memory.py --report             # the table from the saved results, no measuring
"""
from __future__ import annotations

import argparse
import itertools
import json
import resource
from pathlib import Path

from common import (REPO_ROOT, add_measurement_arguments, markdown_table, measure_cases, measure_in_child, rss_bytes,
                    rss_rise)

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "model_configs"
RESULTS = Path(__file__).resolve().parent / "results" / "activation_memory_cpu.json"
MODELS = ("bart-base", "bart-large", "t5-base", "mt5-small", "pegasus-large", "kobart-base-v2")
TINY = {"model_type": "bart", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
        "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "vocab_size": 1000,
        "max_position_embeddings": 256}


def _config(model: str):
    """(transformers config, raw config dict) of a fixture directory, or of the tiny --quick model."""
    from transformers import AutoConfig

    from launcher.memory_estimate import raw_config

    if model == "tiny":
        kwargs = dict(TINY)
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs), TINY
    return AutoConfig.from_pretrained(FIXTURES / model), raw_config(FIXTURES / model)


def measure(model: str, micro: int, ckpt: bool, precision: str, source: int, target: int) -> dict:
    """Runs in the child: the RSS rise of one forward+backward after a warm-up step."""
    import torch

    from launcher.memory_estimate import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    hf_config, raw = _config(model)
    net = build_model(hf_config, raw)
    if precision == "bf16":
        net.to(torch.bfloat16)  # as DeepSpeed's bf16 engine holds the module (fp32 master copy in the optimizer)
    net.config.use_cache = False
    if ckpt:
        net.gradient_checkpointing_enable()
    net.train()
    vocab = hf_config.vocab_size
    batch = {"input_ids": torch.randint(4, vocab, (micro, source)), "attention_mask": torch.ones(micro, source, dtype=torch.long),
             "labels": torch.randint(4, vocab, (micro, target))}

    def step():
        net(**batch).loss.backward()

    loaded = rss_bytes()
    step()  # warm-up: gradients exist from here on, as in training
    rise = rss_rise(step)
    step()
    # what a process keeps over several steps (ru_maxrss: the high-water mark), beside the one step's rise
    return {**rise, "process_peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - loaded}


def predict(model: str, micro: int, ckpt: bool, precision: str, source: int, target: int) -> int:
    from launcher.memory_estimate import activation_bytes, model_spec

    spec = model_spec(TINY if model == "tiny" else FIXTURES / model)
    return activation_bytes(spec, micro_batch=micro, source_length=source, target_length=target, precision=precision,
                            checkpointing=ckpt, device="cpu")


def key(model: str, micro: int, ckpt: bool, precision: str, source: int, target: int) -> str:
    return f"{model}|{source}/{target}|mb{micro}|ckpt {'on' if ckpt else 'off'}|{precision}"


def table(results: dict) -> str:
    rows = []
    for name, r in results.items():
        model, lengths, micro, ckpt, precision = name.split("|")
        case = (model, int(micro[2:]), ckpt.endswith("on"), precision, *map(int, lengths.split("/")))
        predicted = predict(*case)
        rows.append([model, lengths, micro[2:], ckpt.split()[1], precision, f"{predicted / 2**30:.3f}",
                     f"{r['measured_bytes'] / 2**30:.3f}", f"{(predicted - r['measured_bytes']) / r['measured_bytes']:+.1%}",
                     f"{r['process_peak_bytes'] / 2**30:.3f}" if "process_peak_bytes" in r else "-"])
    return markdown_table(["model", "src/tgt", "micro", "ckpt", "precision", "predicted GiB", "measured GiB", "error",
                           "process peak over 3 steps, above the loaded model (GiB)"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--micro", nargs="+", type=int, default=[4])
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--ckpt", nargs="+", default=["off", "on"])
    parser.add_argument("--lengths", default="512/128")
    add_measurement_arguments(parser, RESULTS, quick="one tiny BART case (smoke test)", timeout=1800)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.report:
        print(table(saved))
        return
    source, target = map(int, args.lengths.split("/"))
    if args.quick:
        cases = [("tiny", 2, False, "fp32", 64, 16)]
    else:
        cases = [(m, mb, c == "on", p, source, target)
                 for m, mb, p, c in itertools.product(args.models, args.micro, args.precision, args.ckpt)]

    def run(case: tuple) -> dict:
        return measure_in_child(__file__, case, key(*case), timeout=args.timeout, threads=1)

    results = measure_cases(cases, key, run, RESULTS if args.save and not args.quick else None)
    print(table(results))


if __name__ == "__main__":
    main()
