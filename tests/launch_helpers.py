"""Helpers for tests that run `dialsum launch` for real: a small config on the tiny model and a subprocess runner."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
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


PROBE_API_KEY = "sk-RESTART-7c1d"
PROBE_WEBHOOK = "https://hook:HOOKPW-3e5f@hooks.example.org/notify"


def secret_probe() -> dict:
    """A `callbacks:` entry whose secret-named key and URL password must reach every rank unredacted
    (tests/fault_callbacks.py:SecretProbe fails the rank otherwise)."""
    import hashlib

    digest = hashlib.sha256((PROBE_API_KEY + PROBE_WEBHOOK).encode()).hexdigest()
    return {"path": "fault_callbacks:SecretProbe",
            "kwargs": {"api_key": PROBE_API_KEY, "webhook_url": PROBE_WEBHOOK, "digest": digest}}


# Below pytest's 600 s, so a hung launch fails with its own output and its processes are ended by the test itself.
LAUNCH_TIMEOUT_S = 480


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started, every descendant (torch elastic starts ranks in sessions of their own) and its
    session, then reap it. Nothing is signalled once it has been reaped (its pid may belong to someone else)."""
    if proc.returncode is None:
        try:
            root = psutil.Process(proc.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_processes(commands: list[list[str]], timeout: float = LAUNCH_TIMEOUT_S,
                  **popen_kwargs) -> list[subprocess.CompletedProcess]:
    """Run commands that start processes of their own (launchers, ranks) side by side, each in its own session; in a
    `finally`, every process tree is SIGKILLed, so nothing outlives the test, whether it passed, failed or timed out
    (`subprocess.TimeoutExpired` after `timeout` seconds for all of them together). Output goes to temporary files,
    so one process filling a pipe cannot stall the others."""
    procs, files = [], []
    try:
        for command in commands:
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
            files += [out, err]
            procs.append(subprocess.Popen(command, stdout=out, stderr=err, text=True, start_new_session=True,
                                          **popen_kwargs))
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for proc in procs:
            kill_tree(proc)
    done = []
    for proc, out, err in zip(procs, files[::2], files[1::2]):
        out.seek(0), err.seek(0)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read()))
        out.close(), err.close()
    return done


def run_dialsum(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = LAUNCH_TIMEOUT_S):
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return run_processes([[sys.executable, "-m", "launcher.cli", *args]], timeout, cwd=cwd or REPO_ROOT,
                         env=full_env)[0]


def wandb_history(run_dir: Path) -> list[dict]:
    """The history records of an offline W&B run, read back with no server (`wandb leet inspect --json`)."""
    wandb_bin = Path(sys.executable).parent / "wandb"
    out = subprocess.run([str(wandb_bin), "leet", "inspect", "--json", str(run_dir)], capture_output=True, text=True,
                         timeout=120, check=True)
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip().startswith("{")]
    return [r["history"]["item"] for r in records if r.get("type") == "history"]
