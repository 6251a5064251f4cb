"""Whole-run wall time and ROUGE for a decoder-only model: `dialsum launch` with its plan vs TRL's SFTTrainer (issue 25).

2 CPU ranks. TRL: torchrun + SFTTrainer at its defaults with completion-only loss, then rank 0 generates the dev
summaries (trl_sft.py: SFTTrainer has no evaluation by generation). dialsum: its planner's choices (printed), one
evaluation by generation at the end. Same causal LM (the shipped pre-trained mini Llama when present, else `dialsum
init-model --arch llama`; speaker tags baked in), rows, prompt instruction, sequence lengths, steps, global batch,
learning rate, seed and generation settings; summaries decoded and scored by the same functions. Interleaved runs
(TRL, dialsum, TRL, ...), medians reported; ablation rows turn one of dialsum's choices back to TRL's (a choice's
share of the gain is its row's time minus the plan's). Target: whole run >= 1.3x less wall time, ROUGE equal or better.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

from bench_vs_plain_ddp import eval_seconds, interleaved_runs, merged, phases, timed
from common import BENCH_DIR, REPO_ROOT, add_run_arguments, build_bench_model, median, print_report

TARGET_SPEEDUP = 1.3
PRETRAINED = REPO_ROOT / "data" / "mini-llama-pretrained"
# (row label, config overrides that set the choice as TRL has it); the first row is dialsum's own plan
ABLATIONS = [
    ("gradient checkpointing on (SFTConfig's default)", {"parallel": {"gradient_checkpointing": True}}),
    ("random training batches (no length grouping)", {"training": {"group_by_length": False}}),
    ("evaluation in dataset order (unsorted)", {"evaluation": {"sort_by_length": False}}),
    ("adamw_torch (not fused)", {"training": {"optim": "adamw_torch"}}),
]


def engine_config(work: Path, name: str, model: Path, a: argparse.Namespace, timer_out: Path,
                  overrides: dict) -> Path:
    cfg = {
        "experiment": {"name": "bench-vs-trl", "output_root": str(work / f"engine-out-{name}"), "seed": a.seed},
        "model": {"name_or_path": str(model), "task": "causal"},
        "data": {"train_file": str(a.train), "eval_file": str(a.eval), "max_train_samples": a.rows,
                 "max_eval_samples": a.eval_rows, "max_source_length": a.max_source,
                 "max_target_length": a.max_target, "cache_dir": str(work / f"cache-{name}")},
        "training": {"max_steps": a.steps, "learning_rate": a.lr, "lr_scheduler_type": "constant",
                     "warmup_ratio": 0.0, "global_batch_size": a.batch, "logging_steps": 10,
                     "eval_strategy": "steps", "eval_steps": a.steps},
        "generation": {"num_beams": a.beams, "max_new_tokens": a.max_new_tokens, "min_new_tokens": a.min_new_tokens},
        "parallel": {"nproc_per_node": a.nproc},
        "tracking": {"wandb_mode": "offline"},
        "callbacks": [{"path": "step_timer:StepTimer", "kwargs": {"out": str(timer_out)}}],
    }
    path = work / f"engine-{name}.yaml"
    path.write_text(yaml.safe_dump(merged(cfg, overrides)))
    return path


def run_trl(work: Path, model: Path, a: argparse.Namespace, r: int) -> tuple[float, dict]:
    from engine.tasks.causal import INSTRUCTIONS

    timer, result = work / f"timer-trl-{r}.json", work / f"result-trl-{r}.json"
    took = timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.nproc),
                  str(BENCH_DIR / "trl_sft.py"), "--model", str(model), "--train", str(a.train), "--eval", str(a.eval),
                  "--out", str(work / "trl-out"), "--timer-out", str(timer), "--result-out", str(result),
                  "--instruction", INSTRUCTIONS["en"], "--rows", str(a.rows), "--eval-rows", str(a.eval_rows),
                  "--steps", str(a.steps), "--global-batch", str(a.batch), "--seed", str(a.seed),
                  "--max-source", str(a.max_source), "--max-target", str(a.max_target), "--beams", str(a.beams),
                  "--max-new-tokens", str(a.max_new_tokens), "--min-new-tokens", str(a.min_new_tokens),
                  "--lr", str(a.lr)], "TRL SFTTrainer", work / f"trl-{r}.log")
    timing, outcome = json.loads(timer.read_text()), json.loads(result.read_text())
    return took, {**timing, "rouge": outcome["scores"]["rouge_combined_f1"], "eval_s": outcome["eval_seconds"],
                  "predictions": outcome["predictions"]}


def run_dialsum(work: Path, model: Path, a: argparse.Namespace, name: str, overrides: dict) -> tuple[float, dict]:
    timer = work / f"timer-{name}.json"
    config = engine_config(work, name, model, a, timer, overrides)
    took = timed([sys.executable, "-m", "launcher.cli", "launch", str(config)], f"dialsum ({name})",
                 work / f"{name}.log")
    timing = json.loads(timer.read_text())
    return took, {**timing, "rouge": timing["evals"][-1]["eval_rouge_combined_f1"], "eval_s": eval_seconds(timing)}


def bench_model(work: Path, size: str) -> Path:
    """The shipped pre-trained mini Llama with the speaker tags baked in, or a fresh init-model Llama of `size`."""
    if size == "pretrained":
        return build_bench_model(work / "model-pretrained", base=PRETRAINED)
    return build_bench_model(work / f"model-llama-{size}", size=size, arch="llama")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_run_arguments(p, repeats=3, batch=16, max_source=256, max_target=64, beams=1, max_new_tokens=48)
    p.add_argument("--size", default="pretrained", choices=["pretrained", "tiny", "mini", "small"],
                   help="the shipped pre-trained mini Llama, or an init-model Llama of this size")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: tiny model, 6 steps, 8 dev rows, 1 run "
                                                         "per side, no ablation")
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.steps, a.rows, a.eval_rows, a.repeats, a.ablation_repeats, a.batch = "tiny", 6, 64, 8, 1, 0, 8
        a.max_source, a.max_target, a.max_new_tokens, a.min_new_tokens = 128, 32, 8, 4
    a.train, a.eval = a.train.resolve(), a.eval.resolve()
    if a.size == "pretrained" and not PRETRAINED.is_dir():   # the report names the model that really ran
        print(f"{PRETRAINED.relative_to(REPO_ROOT)} is not shipped: a random-weight init-model mini Llama instead")
        a.size = "mini"

    with tempfile.TemporaryDirectory(prefix="bench-vs-trl-") as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = bench_model(work, a.size)
        runs, plan_text = interleaved_runs(work, a, "trl", lambda r: run_trl(work, model, a, r),
                                           lambda name, overrides: run_dialsum(work, model, a, name, overrides),
                                           list(enumerate(ABLATIONS)))
        report(a, runs, plan_text)


def report(a: argparse.Namespace, runs: dict, plan_text: str) -> None:
    def stats(side: str) -> dict:
        rows = runs[side]
        split = [phases(took, timing, launched) for took, timing, launched in rows]
        return {"whole": median([t for t, _, _ in rows]), "startup": median([s["startup"] for s in split]),
                "train": median([s["train+eval"] - (0 if side == "trl" else timing["eval_s"])
                                 for s, (_, timing, _) in zip(split, rows)]),
                "eval": median([timing["eval_s"] for _, timing, _ in rows]),
                "rouge": median([timing["rouge"] for _, timing, _ in rows]),
                "n": len(rows), "runs": " / ".join(f"{t:.1f}" for t, _, _ in rows)}

    trl, ours = stats("trl"), stats("dialsum")
    speedup = trl["whole"] / ours["whole"]
    ok = speedup >= TARGET_SPEEDUP and ours["rouge"] >= trl["rouge"] - 1e-9

    def row(label: str, s: dict, share: str) -> list:
        return [label, s["n"], f"{s['whole']:.1f}", f"{s['train']:.1f}", f"{s['eval']:.1f}", f"{s['startup']:.1f}",
                f"{trl['whole'] / s['whole']:.2f}x", f"{s['rouge']:.4f}", share, s["runs"]]

    rows = [row("TRL SFTTrainer (torchrun DDP, defaults, completion-only loss)", trl, "-"),
            row("dialsum launch (its plan)", ours, "-")]
    for label, _ in ABLATIONS:
        if label in runs:
            s = stats(label)
            rows.append(row(f"dialsum with TRL's: {label}", s, f"{s['whole'] - ours['whole']:+.1f} s"))
    example = runs["trl"][0][1]["predictions"][:1]
    print_report(
        "dialsum vs TRL SFTTrainer: whole-run wall time and ROUGE for a decoder-only model (2 CPU ranks)",
        ["run", "n", "whole run (s)", "training (s)", "generation evaluation (s)", "start-up (s)",
         "speed-up vs TRL (whole)", "final dev ROUGE (r1+r2+rL F1)", "share of the gain (ablation - plan)",
         "runs (s)"], rows,
        [f"{a.size} Llama ({a.steps} steps), global batch {a.batch}, {a.rows} train rows from {a.train.name}, "
         f"{a.eval_rows} dev rows from {a.eval.name}, prompt/summary {a.max_source}/{a.max_target} tokens, one "
         f"evaluation by generation after training ({a.beams} beam(s), {a.min_new_tokens}-{a.max_new_tokens} new "
         f"tokens), constant lr {a.lr}, seed {a.seed}; median of {a.repeats} interleaved runs per side, ablations "
         f"{a.ablation_repeats} run(s) each",
         "whole run: process start to exit; training: the Trainer's train begin to end without the evaluation; "
         "generation evaluation: TRL's rank-0 loop after training, dialsum's sharded evaluation (eval_runtime); "
         "start-up: start to Trainer built",
         f"speed-up {speedup:.2f}x (target >= {TARGET_SPEEDUP}x), ROUGE {ours['rouge']:.4f} vs {trl['rouge']:.4f}: "
         f"{'target met' if ok else 'TARGET MISSED'}",
         f"a TRL-side prediction: {example}", "dialsum's plan (`dialsum plan`) follows"])
    print("\n```\n" + plan_text.strip() + "\n```")


if __name__ == "__main__":
    main()
