"""dialsum's engine vs a plain transformers Seq2SeqTrainer script: steady-state step time and final loss, CPU ranks.

Same tiny BART (tags baked in, see common.build_bench_model), same DialogSum rows, steps, seed, batch and the DeepSpeed
config the planner renders for the engine (ZeRO-2 by default; `--no-deepspeed` for neither). The engine runs through
`dialsum launch`, so its tracker, W&B offline run and monitoring callbacks are part of what is timed; the plain script
runs under torchrun. Runs are interleaved (plain, dialsum, plain, ...) and the median per side is reported.
Target: dialsum within 3% of plain, same loss.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from common import BENCH_DIR, MINI_DIR, REPO_ROOT, bench_env, build_bench_model, fmt_s, median, print_report
from step_timer import median_step_time, steady_step_time

TARGET_RATIO = 1.03


def engine_config(work: Path, model: Path, a: argparse.Namespace, nproc: int, timer_out: Path) -> Path:
    cfg = {
        "experiment": {"name": "bench", "output_root": str(work / f"engine-out-{nproc}"), "seed": a.seed},
        "model": {"name_or_path": str(model)},
        "data": {"train_file": str(MINI_DIR / "train.csv"), "eval_file": str(MINI_DIR / "dev.csv"),
                 "max_train_samples": a.rows, "max_eval_samples": 8, "max_source_length": a.max_source,
                 "max_target_length": a.max_target,
                 "pad_to_multiple_of": 1},  # the plain script pads to the longest row: same shapes, same dropout
        "training": {"max_steps": a.steps, "learning_rate": a.lr, "global_batch_size": a.batch,
                     "logging_steps": a.logging_steps, "eval_strategy": "no",
                     "group_by_length": False},  # the plain script samples at random: same batches, same loss
        "parallel": {"deepspeed": a.deepspeed, "zero_stage": 2 if a.deepspeed else 0},
        "tracking": {"wandb_mode": "offline"},
        "callbacks": [{"path": "step_timer:StepTimer", "kwargs": {"out": str(timer_out)}}],
    }
    path = work / f"engine-{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def planned_deepspeed_config(config: Path, nproc: int) -> dict | None:
    """The DeepSpeed config the planner renders for the engine: the plain script gets exactly the same one."""
    from engine.config import load_config
    from launcher.planner import make_plan
    from launcher.topology import detect_topology

    return make_plan(load_config([str(config)]), detect_topology(), run_id="bench", nproc_per_node=nproc).deepspeed_config


def run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=bench_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"{what} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def run_plain(work: Path, model: Path, a: argparse.Namespace, nproc: int, ds_file: Path | None, out: Path) -> None:
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
         str(BENCH_DIR / "plain_trainer.py"), "--model", str(model), "--train", str(MINI_DIR / "train.csv"),
         "--rows", str(a.rows), "--out", str(work / f"plain-out-{nproc}"), "--timer-out", str(out),
         "--steps", str(a.steps), "--global-batch", str(a.batch), "--lr", str(a.lr), "--seed", str(a.seed),
         "--logging-steps", str(a.logging_steps), "--max-source", str(a.max_source), "--max-target", str(a.max_target),
         "--deepspeed", str(ds_file or "")], f"plain Seq2SeqTrainer on {nproc} rank(s)")


def run_engine(config: Path, nproc: int) -> None:
    run([sys.executable, "-m", "launcher.cli", "launch", str(config), "--nproc", str(nproc)],
        f"dialsum launch on {nproc} rank(s)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--warmup", type=int, default=10, help="steps excluded from the step time")
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per side")
    p.add_argument("--batch", type=int, default=8, help="global batch")
    p.add_argument("--rows", type=int, default=1000, help="training rows (mini train has 1000)")
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--max-source", type=int, default=256)
    p.add_argument("--max-target", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-deepspeed", dest="deepspeed", action="store_false", help="plain DDP on both sides")
    p.add_argument("--workdir", default="", help="keep models and outputs here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: 1 rank, 6 steps, 1 run per side")
    a = p.parse_args(argv)
    if a.quick:
        a.nproc, a.steps, a.warmup, a.repeats, a.rows, a.max_source, a.logging_steps = [1], 6, 2, 1, 48, 64, 2

    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_bench_model(work / "model")
        rows, ok = [], True
        for nproc in a.nproc:
            times: dict[str, list[float]] = {"plain": [], "dialsum": []}
            medians: dict[str, list[float]] = {"plain": [], "dialsum": []}
            losses: dict[str, list[float]] = {"plain": [], "dialsum": []}
            config = engine_config(work, model, a, nproc, work / "timer.json")
            ds = planned_deepspeed_config(config, nproc)
            ds_file = None
            if ds is not None:
                ds_file = work / f"ds-{nproc}.json"
                ds_file.write_text(json.dumps(ds))
            for r in range(a.repeats):
                for side in ("plain", "dialsum"):
                    out = work / f"timer-{side}-{nproc}-{r}.json"
                    if side == "plain":
                        run_plain(work, model, a, nproc, ds_file, out)
                    else:
                        run_engine(engine_config(work, model, a, nproc, out), nproc)
                    timing = json.loads(out.read_text())
                    times[side].append(steady_step_time(timing, a.warmup))
                    medians[side].append(median_step_time(timing, a.warmup))
                    losses[side].append(timing["losses"][-1][1])
            plain, ours = median(times["plain"]), median(times["dialsum"])
            same = all(abs(x - losses["plain"][0]) <= 1e-4 * max(1.0, abs(x)) for x in losses["plain"] + losses["dialsum"])
            ok &= same and ours / plain <= TARGET_RATIO
            rows.append([nproc, "ZeRO-2" if a.deepspeed else "none", fmt_s(plain), fmt_s(ours), f"{ours / plain:.3f}",
                         f"{median(medians['dialsum']) / median(medians['plain']):.3f}",
                         f"{losses['plain'][-1]:.5f}", f"{losses['dialsum'][-1]:.5f}", "yes" if same else "NO",
                         " / ".join(f"{t * 1e3:.1f}" for t in times["plain"]),
                         " / ".join(f"{t * 1e3:.1f}" for t in times["dialsum"])])
        print_report(
            "Engine vs plain Seq2SeqTrainer (CPU)",
            ["ranks", "DeepSpeed", "plain step", "dialsum step", "ratio (target <= 1.03)", "ratio of median steps", "plain final loss",
             "dialsum final loss", "same loss", "plain runs (ms)", "dialsum runs (ms)"], rows,
            ["step = mean over the timed steps (logging steps included); the median-step ratio is robust to load bursts but "
             "leaves out the cost of the logging steps",
             f"{a.steps} steps, first {a.warmup} excluded, global batch {a.batch}, {a.rows} rows, source/target "
             f"{a.max_source}/{a.max_target} tokens, logging every {a.logging_steps} steps, seed {a.seed}; "
             f"median of {a.repeats} interleaved runs per side",
             "dialsum: `dialsum launch` with its tracker (SQLite), W&B offline and monitoring callbacks; "
             "plain: torchrun + Seq2SeqTrainer, report_to=none",
             f"verdict: {'target met' if ok else 'TARGET MISSED'}"])


if __name__ == "__main__":
    main()
