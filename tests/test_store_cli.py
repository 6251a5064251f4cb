"""`dialsum runs` and `dialsum models` against a store the test fills.

The console entry point is exercised in subprocesses (exit codes, stdout JSON); the many other cases call
`launcher.cli.main(argv)` in-process, the same path minus a ~2 s interpreter start each.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.store import Registry, Tracker, open_store
from launcher.cli import main


pytest_plugins = ["pg"]  # the PostgreSQL fixtures (tests/pg.py), one server per session


def dialsum_process(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DIALSUM_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, env=env,
                          timeout=60)


@pytest.fixture
def dialsum(capsys, monkeypatch):
    """In-process `dialsum ARGS...` -> CompletedProcess-like (returncode, stdout, stderr)."""
    monkeypatch.delenv("DIALSUM_TRACKING_URI", raising=False)

    def call(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, value)
            capsys.readouterr()
            code = main(list(args))
            out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return call


def _fill(uri: str, ckpt_root) -> None:
    store = open_store(uri)
    tracker, registry = Tracker(store), Registry(store)
    for run_id, lr, rouge, group in (("r1", 1e-4, 0.3, "sweep"), ("r2", 3e-4, 0.5, "sweep"), ("r3", 1e-4, None, "")):
        tracker.create_run(run_id, name="kobart", group=group, plan=None, environment={},
                           config={"training": {"learning_rate": lr}, "hf_token": "hf_secret"})
        tracker.start(run_id)
        if rouge is not None:
            tracker.log_metrics(run_id, 10, {"eval_rouge": rouge})
            tracker.finish(run_id, "completed", exit_code=0)
            d = ckpt_root / run_id
            d.mkdir()
            registry.register("kobart", run_id=run_id, checkpoint_dir=d, metrics={"eval_rouge": rouge},
                              metric="eval_rouge", greater_is_better=True, metadata={"architecture": "Bart"},
                              tags=["ko"])
    tracker.finish("r3", "failed", error="boom", failing_rank=1)
    store.close()


@pytest.fixture
def root(tmp_path):
    _fill(f"sqlite:///{tmp_path / 'dialsum.db'}", tmp_path)
    return tmp_path


def test_runs_list_show_compare(root, dialsum):
    out = dialsum("runs", "list", "--json", "--output-root", str(root))
    assert out.returncode == 0, out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)] == ["r3", "r2", "r1"]
    out = dialsum("runs", "list", "--json", "--sort", "eval_rouge", "--group", "sweep", "--output-root", str(root))
    assert [r["run_id"] for r in json.loads(out.stdout)] == ["r2", "r1"]
    out = dialsum("runs", "list", "--status", "failed", "--json", "--output-root", str(root))
    assert [(r["run_id"], r["failing_rank"], r["error"]) for r in json.loads(out.stdout)] == [("r3", 1, "boom")]

    out = dialsum("runs", "show", "r2", "--json", env={"DIALSUM_TRACKING_URI": f"sqlite:///{root / 'dialsum.db'}"})
    run = json.loads(out.stdout)
    assert run["history"] == [{"step": 10, "eval_rouge": 0.5}] and run["config"]["hf_token"] == "***"
    out = dialsum("runs", "compare", "r1", "r2", "--json", "--uri", f"sqlite:///{root / 'dialsum.db'}")
    assert json.loads(out.stdout)["params"] == {"training.learning_rate": [1e-4, 3e-4]}

    for args in (["runs", "list", "--sort", "eval_rouge"], ["runs", "show", "r3"], ["runs", "compare", "r1", "r2"]):
        out = dialsum(*args, "--output-root", str(root))
        assert out.returncode == 0, out.stderr
    assert "r2" in out.stdout and "learning_rate" in out.stdout and "hf_secret" not in out.stdout


def test_models_commands(root, dialsum):
    def ok(*args: str) -> str:
        out = dialsum("models", *args, "--output-root", str(root))
        assert out.returncode == 0, out.stderr
        return out.stdout

    listed = json.loads(ok("list", "--json"))
    assert [(m["name"], m["versions"], m["aliases"]) for m in listed] == [("kobart", 2, {"best": 2})]
    assert json.loads(ok("show", "kobart@best", "--json"))["run_id"] == "r2"
    assert json.loads(ok("show", "kobart:1", "--json"))["version"] == 1
    assert json.loads(ok("show", "kobart", "--json"))["version"] == 2
    assert json.loads(ok("compare", "kobart:1", "kobart:2", "--json"))["metrics"]["eval_rouge"]["a"] == 0.3
    assert [v["ref"] for v in json.loads(ok("search", "--metric", "eval_rouge", "--min", "0.4", "--json"))] == [
        "kobart:2"]
    assert "kobart:1" in ok("search", "--tag", "ko", "--architecture", "bart")
    assert "production" in ok("promote", "kobart:1", "production", "--reason", "manual")
    shown = json.loads(ok("show", "kobart@production", "--json"))
    assert shown["version"] == 1 and shown["alias_history"][-1]["reason"] == "manual"
    ok("delete", "kobart:1")
    assert not (root / "r1").exists() and (root / "r2").exists()
    for args in (["list"], ["show", "kobart@best"], ["compare", "kobart:2", "kobart@best"]):
        assert "kobart" in ok(*args)


def test_user_errors_exit_2(root, tmp_path, dialsum):
    cases = [
        ["runs", "show", "ghost", "--output-root", str(root)],
        ["runs", "list", "--output-root", str(tmp_path / "nowhere")],
        ["runs", "list", "--status", "bogus", "--output-root", str(root)],
        ["models", "show", "ghost", "--output-root", str(root)],
        ["models", "show", "kobart:9", "--output-root", str(root)],
        ["models", "show", "kobart:x", "--output-root", str(root)],
        ["models", "delete", "kobart@best", "--output-root", str(root)],
        ["models", "promote", "kobart:2", "best", "--output-root", str(root)],
        ["runs", "list", "--uri", "mysql://u:pw@h/db"],
    ]
    for args in cases:
        out = dialsum(*args)
        assert out.returncode == 2, (args, out.stderr)
        assert out.stderr.startswith("dialsum: error: ") and "pw@" not in out.stderr
    assert not (tmp_path / "nowhere").exists()  # reading never creates a store


def test_console_entry_point(root):
    """Two real `python -m launcher.cli` processes (each pays the CLI's full import time): JSON out, exit code 2."""
    out = dialsum_process("runs", "list", "--json", "--output-root", str(root))
    assert out.returncode == 0, out.stderr
    assert [r["run_id"] for r in json.loads(out.stdout)] == ["r3", "r2", "r1"]
    out = dialsum_process("models", "show", "ghost", "--output-root", str(root))
    assert out.returncode == 2
    assert out.stderr.strip() == f"dialsum: error: no model 'ghost' in sqlite:///{root}/dialsum.db"


@pytest.mark.postgres
def test_cli_on_postgres(postgres_url, tmp_path, dialsum):
    _fill(postgres_url, tmp_path)
    out = dialsum("models", "list", "--json", "--uri", postgres_url)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)[0]["aliases"] == {"best": 2}
    out = dialsum("runs", "list", "--json", "--sort", "eval_rouge", env={"DIALSUM_TRACKING_URI": postgres_url})
    assert [r["run_id"] for r in json.loads(out.stdout)] == ["r2", "r1", "r3"]


def test_runs_list_shows_best_rouge_first():
    from launcher.commands.runs import list_columns

    keys = {"best/epoch", "best/loss", "best/rouge1_f1", "best/rouge_combined_f1", "final/loss", "best/rougeL_f1"}
    assert list_columns(keys) == ["best/rouge_combined_f1", "best/rouge1_f1", "best/rougeL_f1", "best/loss"]
    assert list_columns({"b", "a"}) == ["a", "b"]
