"""What every benchmark script shares: the environment ranks inherit, the tiny model, markdown tables, machine line.

Benchmarks are scripts (run as `python benchmarks/bench_*.py`), never timed tests; each prints one markdown table whose
ratios are taken against an anchor measured in the same run, so a busy machine skews both sides alike.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
from collections.abc import Sequence
from datetime import date
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
MINI_DIR = REPO_ROOT / "data" / "dialogsum-mini"

# What ranks started by a benchmark must see: W&B offline and quiet, DeepSpeed on CPU, no hub, and the benchmarks
# folder importable (the step timer is loaded by the engine as a custom callback).
BENCH_ENV = {
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ + BENCH_ENV, with the benchmarks folder and the repo root on PYTHONPATH."""
    path = os.pathsep.join([str(BENCH_DIR), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, **BENCH_ENV, "PYTHONPATH": path, **(extra or {})}


def build_bench_model(out_dir: Path, train_csv: Path = MINI_DIR / "train.csv", eval_csv: Path = MINI_DIR / "dev.csv",
                      size: str = "tiny", arch: str = "bart", base: Path | None = None) -> Path:
    """`dialsum init-model` (or the model directory `base`) plus the speaker tags baked into the tokenizer (and
    embeddings), saved to out_dir.

    The engine adds the tags found in the data at load time; a plain script would not. Baking them in means both sides
    load byte-identical weights and token ids, so their losses can be compared exactly."""
    from engine.data import find_placeholder_tokens, read_dialogues
    from launcher.model_init import init_model
    from engine.modeling import load_model_and_tokenizer
    from engine.schema import ModelConfig

    if (out_dir / "config.json").is_file():
        return out_dir
    raw = base or out_dir.parent / f"{out_dir.name}-raw"
    if not (raw / "config.json").is_file():
        init_model(train_csv, raw, size=size, seed=0, arch=arch)
    rows = read_dialogues(train_csv, require_summary=True) + read_dialogues(eval_csv, require_summary=True)
    model, tokenizer = load_model_and_tokenizer(ModelConfig(name_or_path=str(raw)), find_placeholder_tokens(rows))
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def rss_bytes() -> int:
    """This process's resident set size."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_rise(fn) -> dict:
    """Run `fn()` while polling this process's RSS every 2 ms: the peak rise over the RSS just before, and that RSS."""
    import threading
    import time

    before, peak, done = rss_bytes(), [0], threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        fn()
    finally:
        done.set()
        poller.join()
    return {"measured_bytes": max(peak[0], rss_bytes()) - before, "rss_before_bytes": before}


def add_measurement_arguments(parser, results: Path, *, quick: str, timeout: int) -> None:
    """The flags of a benchmark that measures each case in a child process: --save (merge into `results`), --report
    (the saved table only), --quick (`quick` says which cases), --timeout per case, and the child's case."""
    import argparse

    parser.add_argument("--save", action="store_true", help=f"merge the measurements into {results.relative_to(REPO_ROOT)}")
    parser.add_argument("--report", action="store_true", help="print the table of the saved results only")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--timeout", type=int, default=timeout, help="per case, seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)


def add_run_arguments(parser, *, repeats: int, batch: int, max_source: int, max_target: int, beams: int,
                      max_new_tokens: int) -> None:
    """The flags the whole-run benchmarks (dialsum vs plain DDP, vs TRL) share: data, steps, batch, lengths,
    generation, repeats, seed, workdir; the defaults that differ between them are the arguments."""
    parser.add_argument("--train", type=Path, default=MINI_DIR / "train.csv",
                        help="training CSV (default: the shipped mini)")
    parser.add_argument("--eval", type=Path, default=MINI_DIR / "dev.csv", help="dev CSV (default: the shipped mini)")
    parser.add_argument("--rows", type=int, default=1000, help="training rows")
    parser.add_argument("--eval-rows", type=int, default=100, help="dev rows evaluated")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved runs per side")
    parser.add_argument("--ablation-repeats", type=int, default=1, help="runs per ablation row (0: no ablations)")
    parser.add_argument("--batch", type=int, default=batch, help="global batch")
    parser.add_argument("--max-source", type=int, default=max_source)
    parser.add_argument("--max-target", type=int, default=max_target)
    parser.add_argument("--beams", type=int, default=beams)
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--min-new-tokens", type=int, default=8,
                        help="a tiny model's best beam is otherwise often empty (ROUGE 0 on both sides)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", default="", help="keep models and outputs here (default: a temp dir)")


def measure_in_child(script: str, case: tuple, name: str, *, timeout: int, threads: int) -> dict:
    """`script --child CASE` in a fresh process (MALLOC_MMAP_THRESHOLD_ pinned so freed tensors go back to the OS, as
    rss_rise needs): the JSON it prints last. `name` labels a failure."""
    import json
    import subprocess

    env = bench_env({"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": str(threads)})
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(case)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{name}: child failed\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_cases(cases, name, run, results_path: Path | None = None) -> dict:
    """{name(*case): run(case)} in order, each printed to stderr as it lands (its measured_bytes in GiB) and, with
    `results_path`, merged into that JSON file at once (a later failure keeps what was measured)."""
    import json

    from engine.atomic import atomic_write_text

    results = {}
    for case in cases:
        results[name(*case)] = run(case)
        print(f"{name(*case)}: {results[name(*case)]['measured_bytes'] / 2**30:.3f} GiB", file=sys.stderr, flush=True)
        if results_path is not None:
            saved = json.loads(results_path.read_text()) if results_path.is_file() else {}
            saved[name(*case)] = results[name(*case)]
            atomic_write_text(results_path, json.dumps(dict(sorted(saved.items())), indent=1) + "\n")
    return results


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_s(seconds: float) -> str:
    """Seconds with a unit that keeps three significant digits readable."""
    if seconds != seconds:
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def machine_line() -> str:
    """Date, cores, RAM and the versions that decide the numbers: printed under every table."""
    import psutil

    ram = psutil.virtual_memory().total / 2**30
    versions = ", ".join(f"{p} {_version(p)}" for p in ("torch", "deepspeed", "transformers", "tokenizers", "wandb",
                                                         "sqlalchemy"))
    return (f"{date.today().isoformat()}, {platform.machine()} {os.cpu_count()} cores / {ram:.0f} GiB, "
            f"Python {sys.version.split()[0]}, {versions}")


def print_report(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]], notes: Sequence[str] = ()) -> None:
    print(f"\n### {title}\n")
    print(markdown_table(headers, rows))
    print()
    for note in notes:
        print(f"- {note}")
    print(f"- machine: {machine_line()}")
