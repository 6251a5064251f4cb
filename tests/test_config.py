"""engine/config.py layering + validation, and `dialsum config show`."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine.config import (LoadedConfig, add_config_arguments, config_from_dict, config_to_dict, explain_rows,
                           load_config, load_from_args)
from engine.errors import UserError
from engine.schema import CallbackSpec, DialsumConfig

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path / "configs" / "base.yaml", """\
model:
  name_or_path: t5-small
training:
  learning_rate: 3e-5
  warmup_ratio: 0.1
  num_train_epochs: 2
""")


def error(files, **kw) -> str:
    with pytest.raises(UserError) as info:
        load_config(files, **kw)
    return str(info.value)


# ------------------------------------------------------------------------------------------------ layering

def test_every_layer_in_order(tmp_path: Path, base: Path) -> None:
    child = write(tmp_path / "configs" / "child.yaml", """\
base: base.yaml
training: {weight_decay: 0.01, max_steps: 10, logging_steps: 5, eval_steps: 7}
""")
    env = {
        "DIALSUM_TRAINING__MAX_STEPS": "20",
        "DIALSUM_TRAINING_LOGGING_STEPS": "6",
        "DIALSUM_TRAINING__EVAL_STEPS": "8",
        "DIALSUM_PLAN": "/tmp/plan.json",  # not config: ignored
        "DIALSUM_RUN_ID": "abc",
        "HOME": "/root",
    }
    loaded = load_config([child], overrides=["training.eval_steps=9", "experiment.tags=[x, y]"], env=env,
                         sweep_params={"training.logging_steps": 4, "training": {"eval_steps": 11}})
    t = loaded.config.training
    assert t.learning_rate == 3e-5 and isinstance(t.learning_rate, float)  # base file, '3e-5' string in PyYAML
    assert t.num_train_epochs == 2.0 and isinstance(t.num_train_epochs, float)
    assert t.weight_decay == 0.01        # child file
    assert t.max_steps == 20             # env beats file
    assert t.logging_steps == 4          # sweep beats env
    assert t.eval_steps == 9             # --set beats sweep
    assert loaded.config.experiment.tags == ["x", "y"]
    s = loaded.sources
    assert s["model.name_or_path"] == f"file:{base}"
    assert s["training.weight_decay"] == f"file:{child}"
    assert s["training.max_steps"] == "env:DIALSUM_TRAINING__MAX_STEPS"
    assert s["training.logging_steps"] == "sweep"
    assert s["training.eval_steps"] == "set"
    assert s["training.optim"] == "default"
    rows = {key: (value, layer) for key, value, layer in explain_rows(loaded)}
    assert rows["training.eval_steps"] == (9, "set")
    assert rows["training.optim"] == ("auto", "default")
    assert len(rows) == len(s)


def test_later_files_win_and_base_lists(tmp_path: Path, base: Path) -> None:
    write(tmp_path / "configs" / "sub" / "a.yaml", "training: {weight_decay: 0.1, max_grad_norm: 0.5}\n")
    write(tmp_path / "configs" / "sub" / "b.yaml", "training: {weight_decay: 0.2}\n")
    top = write(tmp_path / "configs" / "top.yaml", "base: [base.yaml, sub/a.yaml, sub/b.yaml]\n"
                                                   "generation: {num_beams: 2}\n")
    over = write(tmp_path / "over.yaml", "generation: {num_beams: 3}\n")
    loaded = load_config([top, over], env={})
    assert loaded.config.training.weight_decay == 0.2      # b after a
    assert loaded.config.training.max_grad_norm == 0.5
    assert loaded.config.generation.num_beams == 3         # second file after first
    assert loaded.sources["generation.num_beams"] == f"file:{over}"
    assert loaded.sources["training.weight_decay"] == f"file:{tmp_path / 'configs' / 'sub' / 'b.yaml'}"


def test_base_cycle_is_an_error(tmp_path: Path) -> None:
    a = write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: a.yaml\nmodel: {name_or_path: x}\n")
    msg = error([a], env={})
    assert "base cycle" in msg and "a.yaml" in msg and "b.yaml" in msg


def test_env_short_and_double_underscore_forms(base: Path) -> None:
    env = {"DIALSUM_TRACKING_URI": "sqlite:///x.db", "DIALSUM_PARALLEL__ZERO_STAGE": "2",
           "DIALSUM_DATA_SPEAKER_TOKENS": "false", "DIALSUM_EXPERIMENT_NAME": "2024"}
    loaded = load_config([base], env=env)
    assert loaded.config.tracking.uri == "sqlite:///x.db"
    assert loaded.config.parallel.zero_stage == 2
    assert loaded.config.data.speaker_tokens is False
    assert loaded.config.experiment.name == "2024"  # str field keeps the text
    assert loaded.sources["tracking.uri"] == "env:DIALSUM_TRACKING_URI"


def test_env_unknown_key_names_the_variable(base: Path) -> None:
    msg = error([base], env={"DIALSUM_TRAINING_LEARNIGN_RATE": "1e-4"})
    assert msg.startswith("environment DIALSUM_TRAINING_LEARNIGN_RATE: training.learnign_rate: unknown key")
    assert "did you mean 'learning_rate'?" in msg


def test_env_none_reads_os_environ(base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALSUM_GENERATION__NUM_BEAMS", "7")
    assert load_config([base]).config.generation.num_beams == 7
    assert load_config([base], env={}).config.generation.num_beams == 4


def test_set_parsing_and_bool_strings(base: Path) -> None:
    loaded = load_config([base], env={}, overrides=[
        "training.learning_rate=1e-4", "parallel.offload_optimizer=\"true\"", "data.max_train_samples=100",
        "data.max_eval_samples=null", "experiment.notes=a: b", "tracking.uri=",
        "callbacks=[{path: 'pkg.mod:Cb', kwargs: {x: 1}}]"])
    c = loaded.config
    assert c.training.learning_rate == 1e-4
    assert c.parallel.offload_optimizer is True
    assert c.data.max_train_samples == 100 and c.data.max_eval_samples is None
    assert c.experiment.notes == "a: b"
    assert c.tracking.uri == ""
    assert c.callbacks == [CallbackSpec(path="pkg.mod:Cb", kwargs={"x": 1})]
    assert loaded.sources["callbacks"] == "set"


def test_set_without_equals(base: Path) -> None:
    assert error([base], env={}, overrides=["training.learning_rate"]).startswith("--set: ")


def test_float_forms_in_yaml(tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yaml", "model: {name_or_path: m}\ntraining: {learning_rate: 1e-4, weight_decay: 1,"
                                     " max_grad_norm: .5, warmup_ratio: 5E-2}\n")
    t = load_config([cfg], env={}).config.training
    assert (t.learning_rate, t.weight_decay, t.max_grad_norm, t.warmup_ratio) == (1e-4, 1.0, 0.5, 0.05)
    assert all(isinstance(v, float) for v in (t.learning_rate, t.weight_decay, t.warmup_ratio))


def test_to_dict_roundtrip(base: Path) -> None:
    loaded = load_config([base], env={}, overrides=["callbacks=[{path: 'a:B'}]"])
    d = loaded.to_dict()
    json.dumps(d)  # JSON-serialisable
    assert d["training"]["learning_rate"] == 3e-5 and d["callbacks"] == [{"path": "a:B", "kwargs": {}}]
    assert config_from_dict(json.loads(json.dumps(d))) == loaded.config
    assert config_to_dict(config_from_dict(d)) == d


def test_config_from_dict_validates() -> None:
    with pytest.raises(UserError, match=r"^config: training\.warmup_ratio: must be between 0\.0 and 1\.0"):
        config_from_dict({"model": {"name_or_path": "m"}, "training": {"warmup_ratio": 2.0}})
    with pytest.raises(UserError, match=r"model\.name_or_path: required"):
        config_from_dict({})


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize("body, expected", [
    ("training:\n  learnign_rate: 1e-4\n",
     "training.learnign_rate: unknown key (did you mean 'learning_rate'?)"),
    ("trainig:\n  learning_rate: 1e-4\n", "trainig: unknown key (did you mean 'training'?)"),
    ("training:\n  max_steps: 1.5\n", "training.max_steps: expected int, got 1.5 (float)"),
    ("training:\n  learning_rate: fast\n", "training.learning_rate: expected float, got 'fast' (str)"),
    ("data:\n  speaker_tokens: 'yes please'\n", "data.speaker_tokens: expected bool, got 'yes please' (str)"),
    ("training:\n  warmup_ratio: 1.5\n", "training.warmup_ratio: must be between 0.0 and 1.0; got 1.5"),
    ("generation:\n  num_beams: 0\n", "generation.num_beams: must be >= 1; got 0"),
    ("training:\n  optim: adamw\n", "training.optim: must be one of auto, adamw_torch, adamw_torch_fused, adafactor; "
                                    "got 'adamw'"),
    ("training:\n  learning_rate: null\n", "training.learning_rate: null is not allowed here (expected float)"),
    ("experiment:\n  tags: [ok, 3]\n", "experiment.tags[1]: expected str, got 3 (int)"),
    ("training: 5\n", "training: expected a mapping of keys, got 5"),
    ("callbacks:\n  - {pth: a:B}\n", "callbacks[0].pth: unknown key (did you mean 'path'?)"),
    ("callbacks:\n  - {kwargs: {}}\n", "callbacks[0].path: required"),
])
def test_file_errors_name_file_and_key(tmp_path: Path, body: str, expected: str) -> None:
    cfg = write(tmp_path / "configs" / "x.yaml", "model: {name_or_path: m}\n" + body)
    msg = error([cfg], env={})
    assert msg.startswith(f"{cfg}: {expected}"), msg
    assert "\n" not in msg


def test_null_allowed_for_optional(tmp_path: Path) -> None:
    cfg = write(tmp_path / "x.yaml", "model: {name_or_path: m}\nparallel: {zero_stage: null}\n")
    assert load_config([cfg], env={}).config.parallel.zero_stage is None


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert error([missing], env={}) == f"{missing}: config file not found"
    cfg = write(tmp_path / "x.yaml", "base: gone.yaml\n")
    assert error([cfg], env={}) == f"{tmp_path / 'gone.yaml'}: config file not found"


def test_malformed_yaml_reports_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "bad.yaml", "model:\n  name_or_path: m\ntraining:\n  learning_rate: [1\n")
    msg = error([cfg], env={})
    assert msg.startswith(f"{cfg}: invalid YAML at line ") and "\n" not in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    cfg = write(tmp_path / "dup.yaml", "model: {name_or_path: m}\ntraining:\n  max_steps: 1\n  max_steps: 2\n")
    msg = error([cfg], env={})
    assert msg.startswith(f"{cfg}: invalid YAML at line 4") and "duplicate key 'max_steps'" in msg


def test_top_level_not_a_mapping(tmp_path: Path) -> None:
    cfg = write(tmp_path / "list.yaml", "- a\n- b\n")
    assert error([cfg], env={}).startswith(f"{cfg}: top level must be a mapping")


def test_name_or_path_required(tmp_path: Path) -> None:
    cfg = write(tmp_path / "x.yaml", "training: {max_steps: 3}\n")
    assert error([cfg], env={}).startswith("model.name_or_path: required")
    msg = error([cfg], env={}, overrides=["model.name_or_path="])
    assert msg.startswith("--set: model.name_or_path: required")


def test_layer_origin_prefixes(base: Path) -> None:
    assert error([base], env={"DIALSUM_TRAINING__OPTIM": "sgd"}).startswith(
        "environment DIALSUM_TRAINING__OPTIM: training.optim: must be one of")
    assert error([base], env={}, sweep_params={"training.warmup_ratio": -1.0}).startswith(
        "sweep: training.warmup_ratio: must be between")
    assert error([base], env={}, overrides=["generation.num_beams=1.5"]) == (
        "--set: generation.num_beams: expected int, got '1.5' (float)")
    assert error([base], env={}, overrides=["training.learning_rate.x=1"]).startswith(
        "--set: training.learning_rate.x: expected a dotted key")


def test_shared_arguments(base: Path, tmp_path: Path) -> None:
    extra = write(tmp_path / "extra.yaml", "generation: {num_beams: 5}\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    args = parser.parse_args([str(base), "--config", str(extra), "--set", "generation.num_beams=6"])
    loaded = load_from_args(args)
    assert isinstance(loaded, LoadedConfig) and isinstance(loaded.config, DialsumConfig)
    assert loaded.config.generation.num_beams == 6
    args = parser.parse_args([str(base), "--config", str(extra)])
    assert load_from_args(args).sources["generation.num_beams"] == f"file:{extra}"


# ------------------------------------------------------------------------------------------------ CLI

def cli(*argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DIALSUM_")}
    full_env.update(COLUMNS="250", **(env or {}))
    return subprocess.run([sys.executable, "-m", "launcher.cli", "config", "show", *argv], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=120)


def test_cli_show_explain(base: Path) -> None:
    proc = cli(str(base), "--set", "generation.num_beams=3", "--explain",
               env={"DIALSUM_TRACKING__WANDB_MODE": "disabled"})
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") == 4}
    assert "set" in lines["generation.num_beams"] and " 3 " in lines["generation.num_beams"]
    assert "env:DIALSUM_TRACKING__WANDB_MODE" in lines["tracking.wandb_mode"]
    assert f"file:{base}" in lines["training.learning_rate"]
    assert "default" in lines["training.optim"]


def test_cli_show_yaml_json_and_redaction(base: Path) -> None:
    proc = cli(str(base), "--set", "tracking.uri=postgresql://me:hunter2@db/dialsum")
    assert proc.returncode == 0, proc.stderr
    shown = yaml.safe_load(proc.stdout)
    assert shown["training"]["learning_rate"] == 3e-5 and shown["model"]["name_or_path"] == "t5-small"
    assert "hunter2" not in proc.stdout and shown["tracking"]["uri"] == "postgresql://me:***@db/dialsum"
    proc = cli(str(base), "--json", "--explain")
    rows = {row["key"]: row for row in json.loads(proc.stdout)}
    assert rows["training.warmup_ratio"] == {"key": "training.warmup_ratio", "value": 0.1, "layer": f"file:{base}"}


def test_cli_bad_config_exit_2(tmp_path: Path) -> None:
    cfg = write(tmp_path / "x.yaml", "model: {name_or_path: m}\ntraining: {learnign_rate: 1}\n")
    proc = cli(str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"dialsum: error: {cfg}: training.learnign_rate: unknown key (did you mean 'learning_rate'?)"]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_example_config_is_valid() -> None:
    loaded = load_config([REPO / "configs" / "base.yaml"], env={})
    assert loaded.config.data.train_file == "data/dialogsum-mini/train.csv"  # paths are not rewritten
    assert loaded.config.training.learning_rate == 3e-5
