"""Each benchmark script runs end to end with tiny sizes (`--quick`) and prints its markdown table.

No timing is asserted: benchmarks are scripts, never timed tests. The ones that launch ranks are marked slow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launch_helpers import LAUNCH_TIMEOUT_S, run_processes

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def run_bench(script: str, *args: str, timeout: int = 300) -> str:
    [proc] = run_processes([[sys.executable, str(BENCH_DIR / script), "--quick", *args]], timeout, cwd=BENCH_DIR)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def table_rows(out: str) -> list[list[str]]:
    """The data rows of the printed markdown table (header and separator dropped)."""
    lines = [line for line in out.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, out
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_planner_bench_plans_a_model_from_a_dict():
    rows = table_rows(run_bench("bench_planner.py"))
    assert len(rows) == 1 and rows[0][0].startswith("BART 7B widths")
    assert "ZeRO-" in rows[0][-1]


def test_tokenize_bench_reports_cold_and_cached(tmp_path):
    out = run_bench("bench_tokenize.py")
    steps = [r[0] for r in table_rows(out)]
    assert any("cold" in s for s in steps) and any("cached" in s for s in steps)
    assert "300 dialogues" in out


def test_tokenize_bench_takes_a_train_file(tmp_path, mini_data):
    out = run_bench("bench_tokenize.py", "--train", str(mini_data["dev_csv"]))
    assert "100 dialogues" in out and str(mini_data["dev_csv"]) in out


def test_tracking_bench_times_the_recorder():
    rows = table_rows(run_bench("bench_tracking.py"))
    assert [r[0].split(":")[0] for r in rows][0] == "anchor"
    assert rows[-1][0].startswith("dialsum") and rows[-1][-1] in ("met", "MISSED")


def test_gpu_bench_exits_cleanly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the CUDA-less path is not what runs here")
    out = run_bench("bench_gpu.py")
    assert "no CUDA device" in out


@pytest.mark.slow
def test_engine_vs_trainer_bench_gets_the_same_loss(tmp_path):
    rows = table_rows(run_bench("bench_engine_vs_trainer.py", "--workdir", str(tmp_path), timeout=LAUNCH_TIMEOUT_S))
    assert len(rows) == 1 and rows[0][0] == "1"
    assert rows[0][8] == "yes", rows  # same final loss on both sides


@pytest.mark.slow
def test_launcher_startup_bench_runs_both_sides(tmp_path):
    rows = table_rows(run_bench("bench_launcher_startup.py", "--workdir", str(tmp_path), timeout=LAUNCH_TIMEOUT_S))
    assert len(rows) == 2 and "torchrun" in rows[0][0] and "dialsum launch" in rows[1][0]


def test_activation_memory_bench_measures_a_tiny_case():
    rows = table_rows(run_bench("bench_activation_memory.py"))
    assert len(rows) == 1 and rows[0][0] == "tiny"
    predicted, measured = float(rows[0][5]), float(rows[0][6])
    assert predicted > 0 and measured > 0 and rows[0][7].endswith("%")


@pytest.mark.slow
def test_vs_plain_ddp_bench_runs_both_sides_and_an_ablation(tmp_path):
    out = run_bench("bench_vs_plain_ddp.py", "--workdir", str(tmp_path), timeout=540)
    rows = table_rows(out)
    assert [r[0].split(" (")[0] for r in rows[:2]] == ["plain Seq2SeqTrainer", "dialsum launch"]
    assert len(rows) == 3 and rows[2][0].startswith("dialsum minus: all of the above")
    for row in rows:
        assert 0.0 <= float(row[7]) <= 3.0, row  # final dev ROUGE (sum of three F1) was measured on every run
    assert "target met" in out or "TARGET MISSED" in out
    assert "group_by_length" in out and "eval_batch_size" in out  # dialsum's plan is printed with the table


@pytest.mark.slow
def test_vs_trl_bench_runs_both_sides(tmp_path):
    """TRL's SFTTrainer (completion-only loss, rank-0 generation after training) and dialsum on the same causal LM."""
    out = run_bench("bench_vs_trl.py", "--workdir", str(tmp_path), timeout=540)
    rows = table_rows(out)
    assert [r[0].split(" (")[0] for r in rows] == ["TRL SFTTrainer", "dialsum launch"]
    for row in rows:
        assert float(row[4]) > 0 and 0.0 <= float(row[7]) <= 3.0, row  # every side generated and was scored
    assert "target met" in out or "TARGET MISSED" in out
    plan = json.loads(next((tmp_path / "engine-out-plan-0" / "runs").glob("*/plan.json")).read_text())
    assert plan["task"] == "causal", plan.get("task")


def test_cpu_rank_peak_bench_runs_every_setting():
    rows = table_rows(run_bench("bench_cpu_rank_peak.py"))
    assert [r[0].split(" (")[0] for r in rows] == ["lengths as they come", "padded to multiples of 8", "padded, freed blocks back to the OS",
                                                "no oneDNN cache"]
    assert all(float(r[2]) > 100 and float(r[3]) >= float(r[2]) for r in rows), rows   # MiB: a process with torch


def gpu_check(out: Path, *args: str, timeout: int) -> tuple[subprocess.CompletedProcess, dict]:
    [proc] = run_processes([["bash", str(BENCH_DIR / "gpu_check.sh"), str(out), "--dry-run", *args]], timeout,
                           cwd=BENCH_DIR, env={**os.environ, "PYTHON": sys.executable})
    return proc, json.loads((out / "gpu_check.json").read_text()) if (out / "gpu_check.json").is_file() else {}


def test_gpu_check_refuses_bad_input_in_one_line(tmp_path):
    for args in ([], [str(tmp_path), "--fast"], [str(tmp_path), str(tmp_path)]):
        proc = subprocess.run(["bash", str(BENCH_DIR / "gpu_check.sh"), *args], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, (args, proc.stderr)


def test_gpu_check_dry_run_takes_a_zero3_step(tmp_path):
    """One part in its own process (DeepSpeed ZeRO-3 on a CPU rank), its result in the JSON report."""
    out = tmp_path / "out"
    [proc] = run_processes([[sys.executable, str(BENCH_DIR / "gpu_check.py"), str(out), "--dry-run", "--only",
                             "zero3"]], 300, cwd=BENCH_DIR)  # a cold DeepSpeed cache builds its CPU shm op first
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    part = json.loads((out / "gpu_check.json").read_text())["parts"]["zero3"]
    assert part["status"] == "ok" and part["result"]["zero_stage"] == 3 and part["result"]["loss"] > 0, part


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part_on_cpu(tmp_path):
    out = tmp_path / "out"
    proc, report = gpu_check(out, timeout=570)  # below pytest's 600 s; about 200 s on 2 idle cores
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "gpu_check.log").read_text().rstrip().endswith("gpu_check.log")
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 16 * 2**20
    parts = report["parts"]
    assert all(p["status"] == "ok" for p in parts.values()), {n: p.get("error") for n, p in parts.items()}
    assert len(parts) == 6 and report["dry_run"] is True
    for name in ("llama-3.2-1b-full", "llama-3-8b-lora", "llama-3-8b-qlora"):
        for case in parts[name]["result"].get("cases", []):
            assert case["predicted_peak_bytes"] > 0 and case["predicted_null_reason"] is None
            assert case["dialsum"]["fit_first_try"] and case["trl_defaults"]["tokens_per_s"] > 0
    bart = parts["bart"]["result"]["cases"][0]
    assert bart["predicted_peak_bytes"] > 0 and bart["dialsum"]["source_tokens_per_s"] > 0
    assert {c["model"] for c in parts["trace"]["result"]["cases"]} == {"bart-base", "bart-large"}
