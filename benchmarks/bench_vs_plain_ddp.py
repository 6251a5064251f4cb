"""Wall time to the same ROUGE: `dialsum launch` with its plan vs the plain Seq2SeqTrainer script users write (issue 17).

2 CPU ranks. Plain: torchrun + Seq2SeqTrainer at its defaults (DDP, no DeepSpeed, random batches, evaluation by
generation at batch 8 in dataset order). dialsum: whatever its planner chooses (printed). Same BART (the demo's mini by
default, tags baked in, common.build_bench_model), same rows at 512/128 tokens, steps, seed, batch, learning rate and
generation settings; ROUGE decoded and scored by the same functions. Runs are interleaved (plain, dialsum, plain, ...);
medians are reported. Ablation rows turn one planner choice off each (pinned in the config): a choice's share of the
gain is its row's time minus the plan's. Target: whole run >= 1.3x faster than plain, final dev ROUGE equal or better.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from common import BENCH_DIR, REPO_ROOT, add_run_arguments, bench_env, build_bench_model, median, print_report

TARGET_SPEEDUP = 1.3
METRIC = "eval_rouge_combined_f1"
# dialsum before issue 17: DeepSpeed ZeRO-0, random batches, generation in dataset order at the micro-batch, adamw_torch
BEFORE_17 = ("all of the above: dialsum before issue 17",
             {"parallel": {"deepspeed": True, "zero_stage": 0, "eval_batch_size": "micro"},
              "data": {"pad_to_multiple_of": 1},
              "training": {"group_by_length": False, "optim": "adamw_torch"},
              "evaluation": {"sort_by_length": False}})
# (row label, config overrides that turn the choice off); the first row is dialsum's own plan
ABLATIONS = [
    ("DeepSpeed ZeRO-0 instead of plain DDP", {"parallel": {"deepspeed": True, "zero_stage": 0}}),
    ("random training batches (no length grouping)", {"training": {"group_by_length": False}}),
    ("evaluation in dataset order (unsorted)", {"evaluation": {"sort_by_length": False}}),
    ("generation at the training micro-batch (not 8 rows)", {"parallel": {"eval_batch_size": "micro"}}),
    ("adamw_torch (not fused)", {"training": {"optim": "adamw_torch"}}),
    ("batch lengths as they come (not padded to multiples of 8)", {"data": {"pad_to_multiple_of": 1}}),
    BEFORE_17,
]


def merged(base: dict, extra: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in extra.items():
        out.setdefault(section, {}).update(values)
    return out


def engine_config(work: Path, name: str, model: Path, a: argparse.Namespace, timer_out: Path,
                  overrides: dict) -> Path:
    micro = a.batch // a.nproc
    cfg = {
        "experiment": {"name": "bench-vs-ddp", "output_root": str(work / f"engine-out-{name}"), "seed": a.seed},
        "model": {"name_or_path": str(model)},
        "data": {"train_file": str(a.train), "eval_file": str(a.eval), "max_train_samples": a.rows,
                 "max_eval_samples": a.eval_rows, "max_source_length": a.max_source,
                 "max_target_length": a.max_target, "cache_dir": str(work / f"cache-{name}")},
        "training": {"max_steps": a.steps, "learning_rate": a.lr, "global_batch_size": a.batch,
                     "logging_steps": a.logging_steps, "eval_strategy": "steps", "eval_steps": a.eval_steps},
        "generation": {"num_beams": a.beams, "max_new_tokens": a.max_new_tokens,
                       "min_new_tokens": a.min_new_tokens},
        "parallel": {"nproc_per_node": a.nproc},
        "tracking": {"wandb_mode": "offline"},
        "callbacks": [{"path": "step_timer:StepTimer", "kwargs": {"out": str(timer_out)}}],
    }
    cfg = merged(cfg, overrides)
    if cfg["parallel"].get("eval_batch_size") == "micro":
        cfg["parallel"]["eval_batch_size"] = micro
    path = work / f"engine-{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def timed(cmd: list[str], what: str, log: Path) -> float:
    """Seconds from start to exit of `cmd` (fails the benchmark with the log's tail if it fails)."""
    started = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=bench_env(), stdout=fh, stderr=subprocess.STDOUT, timeout=1200)
    took = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}); log {log}:\n{log.read_text()[-4000:]}")
    return took


def run_plain(work: Path, model: Path, a: argparse.Namespace, r: int) -> tuple[float, dict]:
    out = work / f"timer-plain-{r}.json"
    took = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.nproc),
                  str(BENCH_DIR / "plain_trainer.py"), "--model", str(model), "--train", str(a.train),
                  "--rows", str(a.rows), "--out", str(work / "plain-out"), "--timer-out", str(out),
                  "--steps", str(a.steps), "--global-batch", str(a.batch), "--lr", str(a.lr), "--seed", str(a.seed),
                  "--logging-steps", str(a.logging_steps), "--max-source", str(a.max_source),
                  "--max-target", str(a.max_target), "--eval", str(a.eval), "--eval-rows", str(a.eval_rows),
                  "--eval-steps", str(a.eval_steps), "--beams", str(a.beams), "--max-new-tokens",
                  str(a.max_new_tokens), "--min-new-tokens", str(a.min_new_tokens)], "plain Seq2SeqTrainer", work / f"plain-{r}.log")
    return took, json.loads(out.read_text())


def run_dialsum(work: Path, model: Path, a: argparse.Namespace, name: str, overrides: dict) -> tuple[float, dict]:
    out = work / f"timer-{name}.json"
    config = engine_config(work, name, model, a, out, overrides)
    took = timed([sys.executable, "-m", "launcher.cli", "launch", str(config)], f"dialsum ({name})",
                 work / f"{name}.log")
    return took, json.loads(out.read_text())


def phases(whole: float, timing: dict, launched: float) -> dict[str, float]:
    """Start to trainer built / to training begin (DDP or DeepSpeed set up) / training with its evaluations / the rest
    (export, registry, W&B finish, teardown, exit), from the StepTimer's wall clock."""
    w = timing["walls"]
    return {"startup": w["trainer_built"] - launched, "wrap": w["train_begin"] - w["trainer_built"],
            "train+eval": w["train_end"] - w["train_begin"], "eval": eval_seconds(timing),
            "exit": launched + whole - w["train_end"]}


def eval_seconds(timing: dict) -> float:
    """Seconds in evaluations, as the Trainer times them (`eval_runtime`: generation, metrics)."""
    return sum(e["eval_runtime"] for e in timing["evals"])


def interleaved_runs(work: Path, a: argparse.Namespace, anchor: str, run_anchor, run_ours,
                     ablations: list[tuple[int, tuple[str, dict]]]) -> tuple[dict, str]:
    """`a.repeats` runs a side, interleaved (anchor, dialsum, anchor, ...) so a busy machine slows both alike, then
    `a.ablation_repeats` runs of each ablation row, numbered (label, overrides) pairs as `enumerate` gives them; each
    run is (seconds, its timing, launch wall time). Returns them by side or label, and the plan dialsum printed for its
    first run."""
    runs: dict[str, list[tuple[float, dict, float]]] = {anchor: [], "dialsum": []}
    for r in range(a.repeats):
        for side in (anchor, "dialsum"):
            launched = time.time()
            took, timing = run_anchor(r) if side == anchor else run_ours(f"plan-{r}", {})
            runs[side].append((took, timing, launched))
    for i, (label, overrides) in ablations:
        for r in range(a.ablation_repeats):
            launched = time.time()
            took, timing = run_ours(f"ablation-{i}-{r}", overrides)
            runs.setdefault(label, []).append((took, timing, launched))
    plan_text = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", str(work / "engine-plan-0.yaml")],
                               cwd=REPO_ROOT, env={**bench_env(), "COLUMNS": "200"}, capture_output=True,
                               text=True).stdout
    return runs, plan_text


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p, repeats=5, batch=8, max_source=512, max_target=128, beams=4, max_new_tokens=64)
    p.add_argument("--eval-steps", type=int, default=100, help="evaluate every N steps (default: two evaluations)")
    p.add_argument("--logging-steps", type=int, default=50)
    p.add_argument("--size", default="mini", choices=["tiny", "mini", "small"],
                   help="`dialsum init-model` size: tiny is overhead-bound, mini (the demo's) spends its steps computing")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: 12 steps, 8 dev rows, 1 run, 1 ablation")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.eval_steps, a.rows, a.eval_rows, a.repeats, a.logging_steps = 12, 6, 64, 8, 1, 4
        a.max_source, a.max_target, a.max_new_tokens, a.min_new_tokens = 128, 32, 8, 4
    a.train, a.eval = a.train.resolve(), a.eval.resolve()

    with tempfile.TemporaryDirectory(prefix="bench-vs-ddp-") as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_bench_model(work / f"model-{a.size}", size=a.size)
        numbered = list(enumerate(ABLATIONS))
        runs, plan_text = interleaved_runs(work, a, "plain", lambda r: run_plain(work, model, a, r),
                                           lambda name, overrides: run_dialsum(work, model, a, name, overrides),
                                           numbered[-1:] if a.quick else numbered)
        report(a, runs, plan_text)


def report(a: argparse.Namespace, runs: dict, plan_text: str) -> None:
    def stats(side: str) -> dict[str, float]:
        rows = runs[side]
        split = [phases(took, timing, launched) for took, timing, launched in rows]
        return {"whole": median([t for t, _, _ in rows]),
                **{k: median([s[k] for s in split]) for k in split[0]},
                "rouge": median([timing["evals"][-1][METRIC] for _, timing, _ in rows]),
                "n": len(rows), "runs": " / ".join(f"{t:.1f}" for t, _, _ in rows)}

    plain, ours = stats("plain"), stats("dialsum")
    speedup = plain["whole"] / ours["whole"]
    ok = speedup >= TARGET_SPEEDUP and ours["rouge"] >= plain["rouge"] - 1e-9

    def row(label: str, s: dict, share: str) -> list:
        return [label, s["n"], f"{s['whole']:.1f}", f"{s['train+eval']:.1f}", f"{s['eval']:.1f}",
                f"{s['startup']:.1f} / {s['wrap']:.1f} / {s['exit']:.1f}", f"{plain['whole'] / s['whole']:.2f}x",
                f"{s['rouge']:.4f}", share, s["runs"]]

    rows = [row("plain Seq2SeqTrainer (torchrun DDP, defaults)", plain, "-"),
            row("dialsum launch (its plan)", ours, "-")]
    for label, _ in ABLATIONS:
        if label in runs:
            s = stats(label)
            rows.append(row(f"dialsum minus: {label}", s, f"{s['whole'] - ours['whole']:+.1f} s"))
    print_report(
        "dialsum vs plain DDP Seq2SeqTrainer: wall time to the same ROUGE (2 CPU ranks)",
        ["run", "n", "whole run (s)", "train + evals (s)", "in evals (s)", "start-up / wrap / exit (s)",
         "speed-up vs plain (whole)", "final dev ROUGE (r1+r2+rL F1)", "share of the gain (ablation - plan)",
         "runs (s)"], rows,
        [f"{a.size} BART ({a.steps} steps), global batch {a.batch}, {a.rows} train rows from {a.train.name}, "
         f"{a.eval_rows} dev rows from {a.eval.name}, source/target {a.max_source}/{a.max_target} tokens, evaluation every {a.eval_steps} "
         f"steps by generation ({a.beams} beams, {a.min_new_tokens}-{a.max_new_tokens} new tokens), lr {a.lr}, seed {a.seed}; median "
         f"of {a.repeats} interleaved runs per side, ablations {a.ablation_repeats} run(s) each",
         "whole run: process start to exit; train + evals: the Trainer's train begin to end (evaluations included); "
         "start-up: start to Trainer built (imports, plan, data, model, tracker and W&B init); wrap: DDP/DeepSpeed "
         "set-up; exit: after training (export, registry, W&B finish, teardown)",
         f"speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP}x), ROUGE {ours['rouge']:.4f} vs {plain['rouge']:.4f}: "
         f"{'target met' if ok else 'TARGET MISSED'}",
         "dialsum's plan (`dialsum plan`) follows"])
    print("\n```\n" + plan_text.strip() + "\n```")


if __name__ == "__main__":
    main()
