"""ZeRO-3 evaluation by generation against plain DDP's (issue 25 item 5), 2 CPU ranks, a decoder-only model.

Under ZeRO-3 each rank holds a shard of every layer, so each generated token all-gathers every layer again: a
summary of 64 tokens costs 64 gathers of the whole model (LLaMA-Factory refuses generation evaluation under ZeRO-3;
trlx users report it as the slowest part). dialsum's planner gathers the whole model once per evaluation where it
fits one rank (`parallel.gather_for_generation`). Three settings, interleaved, same model, rows and generation:
plain DDP, ZeRO-3 with the gather, ZeRO-3 layer by layer (both pinned, so the rows compare the two ways whatever the
plan would choose for this model). The time is the
Trainer's own `eval_runtime` of the one evaluation at the end of a 2-step run, from the tracker. Target: ZeRO-3
evaluation within 1.5x of DDP's.

    python benchmarks/bench_zero3_eval.py               # 32 dev rows, 48 new tokens, 3 repeats (~10 min)
    python benchmarks/bench_zero3_eval.py --quick
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

from common import MINI_DIR, REPO_ROOT, bench_env, median, print_report

TARGET = 1.5
SETTINGS = [
    ("plain DDP", {"deepspeed": False, "zero_stage": None}),
    ("ZeRO-3, the model gathered once per evaluation", {"zero_stage": 3, "gather_for_generation": True}),
    ("ZeRO-3, every layer gathered for every token", {"zero_stage": 3, "gather_for_generation": False}),
]


def config(work: Path, name: str, model: Path, a: argparse.Namespace, parallel: dict) -> Path:
    cfg = {"experiment": {"name": "bench-zero3-eval", "output_root": str(work / name), "seed": 7},
           "model": {"name_or_path": str(model)},
           "data": {"train_file": str(MINI_DIR / "train.csv"), "eval_file": str(MINI_DIR / "dev.csv"),
                    "max_train_samples": 16, "max_eval_samples": a.rows, "max_source_length": 256,
                    "max_target_length": 64},
           "training": {"max_steps": 2, "global_batch_size": 4, "eval_strategy": "steps", "eval_steps": 2,
                        "logging_steps": 1},
           "generation": {"num_beams": 1, "max_new_tokens": a.new_tokens, "min_new_tokens": a.new_tokens},
           "parallel": parallel, "tracking": {"wandb_mode": "disabled", "register_model": False}}
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def eval_seconds(work: Path, name: str) -> float:
    from engine.store import Tracker, open_store

    tracker = Tracker(open_store(f"sqlite:///{work / name / 'dialsum.db'}"))
    run = tracker.get_run(tracker.list_runs()[0]["run_id"])
    assert run["status"] == "completed", run["error"]
    return [h["eval/runtime"] for h in run["history"] if "eval/runtime" in h][-1]


def main() -> None:
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32, help="dev rows generated")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens generated per summary")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="", help="a decoder-only model folder (default: a mini Llama, random)")
    parser.add_argument("--quick", action="store_true", help="4 rows, 8 tokens, 1 repeat (a smoke run)")
    a = parser.parse_args()
    if a.quick:
        a.rows, a.new_tokens, a.repeats = 4, 8, 1
    times: dict[str, list[float]] = {label: [] for label, _ in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="bench-zero3-eval-") as tmp:
        work = Path(tmp)
        model = Path(a.model) if a.model else work / "model"
        if not a.model:
            from launcher.model_init import init_model

            init_model(MINI_DIR / "train.csv", model, size="mini", seed=0, arch="llama")
        for repeat in range(a.repeats):
            for k, (label, parallel) in enumerate(SETTINGS):  # interleaved: a busy machine slows every setting alike
                name = f"s{k}-r{repeat}"
                cmd = [sys.executable, "-m", "launcher.cli", "launch", str(config(work, name, model, a, parallel)),
                       "--nproc", "2"]
                proc = subprocess.run(cmd, cwd=REPO_ROOT, env=bench_env(), capture_output=True, text=True, timeout=1800)
                if proc.returncode != 0:
                    sys.exit(f"{label}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
                times[label].append(eval_seconds(work, name))
    ddp = median(times[SETTINGS[0][0]])
    rows = [[label, f"{median(t):.2f}", f"{median(t) / ddp:.2f}", " ".join(f"{x:.2f}" for x in t)]
            for label, t in times.items()]
    gathered = median(times[SETTINGS[1][0]]) / ddp
    print_report(f"ZeRO-3 evaluation vs DDP, 2 CPU ranks: {a.rows} rows x {a.new_tokens} new tokens, greedy",
                 ["setting", "eval s (median)", "x DDP", "runs"], rows,
                 [f"target: ZeRO-3 within {TARGET}x of DDP: {'met' if gathered <= TARGET else 'missed'} "
                  f"({gathered:.2f}x)"])


if __name__ == "__main__":
    main()
