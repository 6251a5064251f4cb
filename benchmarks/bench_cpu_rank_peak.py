"""A CPU rank's memory over many steps of varying length: batch lengths as they come, padded to multiples of 8, padded
with glibc returning freed blocks to the OS (the plan's default for CPU ranks), and without oneDNN's primitive cache.

The planner predicts a rank's peak from its first step (baseline + model states + activations). In fp32 CPU training
GELU runs through oneDNN, whose primitive cache keeps a JIT kernel per input shape (up to 1024 of them), so a run whose
batches vary in length keeps growing. Each setting runs in a fresh subprocess: the demo's mini BART (the shipped
pre-trained one), one thread, fused AdamW, batch 4 at random lengths (seeded, the same for every setting); printed:
peak RSS after the first step and after the last, the median step time and the total time of the steps (padding
computes more tokens; new shapes cost kernel compilation). Settings interleave across repeats.

    python benchmarks/bench_cpu_rank_peak.py                 # 150 steps, 2 repeats
    python benchmarks/bench_cpu_rank_peak.py --steps 300 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import REPO_ROOT, bench_env, median, print_report

MODEL = REPO_ROOT / "data" / "mini-bart-pretrained"
# name -> (environment, batch lengths rounded up to a multiple of)
SETTINGS = {"lengths as they come": ({}, 1),
            "padded to multiples of 8 (data.pad_to_multiple_of)": ({}, 8),
            "padded, freed blocks back to the OS (MALLOC_MMAP_THRESHOLD_=1048576, as the plan starts CPU ranks)":
                ({"MALLOC_MMAP_THRESHOLD_": "1048576"}, 8),
            "no oneDNN cache (ONEDNN_PRIMITIVE_CACHE_CAPACITY=0)": ({"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}, 1)}


def measure(steps: int, max_source: int, max_target: int, multiple: int) -> dict:
    """Runs in the child."""
    import random
    import resource
    import time

    import torch
    from transformers import AutoModelForSeq2SeqLM

    torch.set_num_threads(1)
    random.seed(0)
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_pretrained(MODEL)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    vocab = model.config.vocab_size
    peak_mib = []
    times = []
    for step in range(steps):
        source, target = random.randint(max_source // 8, max_source), random.randint(max_target // 8, max_target)
        source, target = -(-source // multiple) * multiple, -(-target // multiple) * multiple
        start = time.perf_counter()
        model(input_ids=torch.randint(5, vocab, (4, source)), labels=torch.randint(5, vocab, (4, target))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
        if step in (0, steps - 1):
            peak_mib.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB
    return {"first_mib": peak_mib[0], "last_mib": peak_mib[-1], "step_s": median(times[1:]), "total_s": sum(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-source", type=int, default=512)
    parser.add_argument("--max-target", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="8 steps, 1 repeat, 128/32 tokens (the smoke test)")
    parser.add_argument("--child", type=int, default=0, metavar="MULTIPLE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.max_source, args.max_target = 8, 1, 128, 32
    if args.child:
        print(json.dumps(measure(args.steps, args.max_source, args.max_target, args.child)))
        return
    results: dict[str, list[dict]] = {name: [] for name in SETTINGS}
    child = [sys.executable, __file__, "--steps", str(args.steps), "--max-source", str(args.max_source),
             "--max-target", str(args.max_target), "--child"]
    for _ in range(args.repeats):
        for name, (env, multiple) in SETTINGS.items():
            proc = subprocess.run([*child, str(multiple)], env=bench_env(env), capture_output=True, text=True,
                                  timeout=1800, check=True)
            results[name].append(json.loads(proc.stdout.splitlines()[-1]))
    anchor = median([r["total_s"] for r in results[next(iter(SETTINGS))]])
    rows = []
    for name, runs in results.items():
        first, last = median([r["first_mib"] for r in runs]), median([r["last_mib"] for r in runs])
        step, total = median([r["step_s"] for r in runs]), median([r["total_s"] for r in runs])
        rows.append([name, len(runs), f"{first:.0f}", f"{last:.0f}", f"{last - first:+.0f}", f"{step * 1e3:.1f}",
                     f"{total:.1f}", f"{total / anchor:.2f}x"])
    print_report(f"CPU rank peak RSS over {args.steps} steps at random lengths (up to {args.max_source}/"
                 f"{args.max_target} tokens, batch 4)",
                 ["setting", "runs", "peak after step 1 (MiB)", f"peak after step {args.steps} (MiB)", "growth (MiB)",
                  "median step (ms)", "all steps (s)", "time vs lengths as they come"], rows,
                 notes=["medians over the runs; the same seeded lengths for every setting"])


if __name__ == "__main__":
    main()
