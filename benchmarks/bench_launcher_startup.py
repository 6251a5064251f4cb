"""`dialsum launch` start-to-first-step vs bare `torchrun` running the same engine entry (`python -m engine --plan`).

Both start from a fresh process and stop the clock when rank 0 begins its first optimizer step (the step timer's
wall-clock stamp). The torchrun side gets a plan made beforehand, outside the clock, so the difference is what
`dialsum launch` adds: CLI imports, config layering, the data check, hardware detection, planning and its own
elastic agent. Runs are interleaved; medians reported. Target: <= 2 s extra.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench_engine_vs_trainer import engine_config
from common import REPO_ROOT, bench_env, build_bench_model, fmt_s, median, print_report

TARGET_EXTRA_S = 2.0


def start_to_first_step(cmd: list[str], timer_out: Path) -> float:
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=bench_env(), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:6])} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(timer_out.read_text())["first_step_begin_wall"] - t0


def saved_plan(config: Path, nproc: int, path: Path) -> Path:
    from engine.config import load_config
    from launcher.planner import make_plan
    from launcher.topology import detect_topology

    plan = make_plan(load_config([str(config)]), detect_topology(), run_id=uuid.uuid4().hex[:12], nproc_per_node=nproc)
    plan.save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workdir", default="", help="keep models and outputs here (default: a temp dir)")
    p.add_argument("--quick", action="store_true", help="smoke-test sizes: 1 rank, 1 run per side")
    a = p.parse_args(argv)
    if a.quick:
        a.nproc, a.repeats = 1, 1
    sizes = argparse.Namespace(seed=42, rows=64, max_source=64, max_target=32, steps=3, lr=1e-3, batch=2 * a.nproc,
                               logging_steps=1, deepspeed=True)

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(a.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        model = build_bench_model(work / "model")
        times: dict[str, list[float]] = {"torchrun": [], "dialsum": []}
        for r in range(a.repeats):
            out = work / f"timer-torchrun-{r}.json"
            plan = saved_plan(engine_config(work, model, sizes, a.nproc, out), a.nproc, work / f"plan-{r}.json")
            times["torchrun"].append(start_to_first_step(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.nproc),
                 "-m", "engine", "--plan", str(plan)], out))
            out = work / f"timer-dialsum-{r}.json"
            config = engine_config(work, model, sizes, a.nproc, out)
            times["dialsum"].append(start_to_first_step(
                [sys.executable, "-m", "launcher.cli", "launch", str(config), "--nproc", str(a.nproc)], out))

    anchor, ours = median(times["torchrun"]), median(times["dialsum"])
    rows = [["anchor: `torchrun --standalone -m engine --plan PLAN` (plan made beforehand)", fmt_s(anchor), "-",
             " / ".join(f"{t:.2f}" for t in times["torchrun"])],
            ["`dialsum launch CONFIG` (plans, then spawns)", fmt_s(ours), f"{ours - anchor:+.2f} s ({ours / anchor:.2f}x)",
             " / ".join(f"{t:.2f}" for t in times["dialsum"])]]
    print_report(
        f"Launcher start to first step ({a.nproc} CPU rank(s), DeepSpeed ZeRO-2)",
        ["command", "start to first step (median)", "extra vs anchor", "runs (s)"], rows,
        [f"median of {a.repeats} interleaved runs; tiny BART, {sizes.rows} rows; target <= {TARGET_EXTRA_S:g} s extra: "
         f"{'met' if ours - anchor <= TARGET_EXTRA_S else 'MISSED'}"])


if __name__ == "__main__":
    main()
