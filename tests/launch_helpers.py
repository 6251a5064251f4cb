"""Helpers for tests that run `dialsum launch` for real: a small config on the tiny model and a subprocess runner."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def small_config(tmp_path: Path, model_dir: Path, **sections) -> Path:
    """A config that trains the tiny model for a handful of steps on 2 CPU ranks; sections override keys."""
    mini = REPO_ROOT / "data" / "dialogsum-mini"
    cfg = {
        "experiment": {"name": "e2e", "output_root": str(tmp_path / "out"), "seed": 7},
        "model": {"name_or_path": str(model_dir)},
        "data": {"train_file": str(mini / "train.csv"), "eval_file": str(mini / "dev.csv"),
                 "max_train_samples": 96, "max_eval_samples": 12, "max_source_length": 128, "max_target_length": 32},
        "training": {"max_steps": 16, "learning_rate": 3e-3, "global_batch_size": 8, "logging_steps": 1,
                     "eval_strategy": "steps", "eval_steps": 8},
        "generation": {"num_beams": 1, "max_new_tokens": 12, "min_new_tokens": 6, "no_repeat_ngram_size": 1},
        "parallel": {"zero_stage": 2},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_dialsum(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=cwd or REPO_ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def wandb_history(run_dir: Path) -> list[dict]:
    """The history records of an offline W&B run, read back with no server (`wandb leet inspect --json`)."""
    wandb_bin = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_bin), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, check=True)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]
