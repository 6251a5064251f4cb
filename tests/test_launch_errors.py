"""Bad input to `dialsum launch`: one clear line naming the file/key/row, exit code 2, no traceback, and nothing
recorded (no run in the tracker, no registry version, no rank started)."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from engine.store import Registry, Tracker, open_store
from launch_helpers import run_dialsum, small_config


def _nothing_recorded(out: Path) -> None:
    db = out / "dialsum.db"
    if db.exists():
        store = open_store(f"sqlite:///{db}")
        assert Tracker(store).list_runs() == []
        assert Registry(store).list_models() == []
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())


def _edit(config: Path, section: str, key: str, value) -> None:
    data = yaml.safe_load(config.read_text())
    data.setdefault(section, {})[key] = value
    config.write_text(yaml.safe_dump(data))


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _not_json_model(tmp: Path) -> Path:
    model = tmp / "broken-model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bart", "d_model": 64,\n')  # cut off mid-file
    return model


CASES = {
    "missing config": (lambda cfg, tmp: tmp / "nope.yaml", ["nope.yaml", "not found"]),
    "malformed yaml": (lambda cfg, tmp: _write_csv(tmp / "bad.yaml", "training: [1, 2\n"), ["bad.yaml", "line"]),
    "unknown key": (lambda cfg, tmp: (_edit(cfg, "training", "learnign_rate", 1e-3), cfg)[1],
                    ["training.learnign_rate", "did you mean 'learning_rate'"]),
    "wrong type": (lambda cfg, tmp: (_edit(cfg, "training", "max_steps", "many"), cfg)[1], ["training.max_steps"]),
    "out of range": (lambda cfg, tmp: (_edit(cfg, "training", "warmup_ratio", 2.0), cfg)[1], ["training.warmup_ratio"]),
    "missing data file": (lambda cfg, tmp: (_edit(cfg, "data", "train_file", str(tmp / "gone.csv")), cfg)[1],
                          ["data.train_file", "gone.csv"]),
    "missing column": (lambda cfg, tmp: (_edit(cfg, "data", "eval_file", str(_write_csv(
        tmp / "nosum.csv", "fname,dialogue\nd1,hello there\n"))), cfg)[1], ["data.eval_file", "nosum.csv", "summary"]),
    "empty split": (lambda cfg, tmp: (_edit(cfg, "data", "train_file", str(_write_csv(
        tmp / "empty.csv", "fname,dialogue,summary\n"))), cfg)[1], ["data.train_file", "empty.csv", "no rows"]),
    "empty row": (lambda cfg, tmp: (_edit(cfg, "data", "train_file", str(_write_csv(
        tmp / "hole.csv", "fname,dialogue,summary\na,hi,sum\nb,,sum\n"))), cfg)[1], ["hole.csv", "row 2", "dialogue"]),
    # model problems: caught by the launcher before the plan is made or any rank starts
    "missing model directory": (lambda cfg, tmp: (_edit(cfg, "model", "name_or_path", str(tmp / "no-model")), cfg)[1],
                                ["model.name_or_path", "no-model", "no such directory"]),
    "model config not JSON": (lambda cfg, tmp: (_edit(cfg, "model", "name_or_path", str(_not_json_model(tmp))), cfg)[1],
                              ["model.name_or_path", "broken-model", "config.json", "not a valid JSON"]),
    "hub id unresolvable offline": (lambda cfg, tmp: (_edit(cfg, "model", "name_or_path", "nobody/no-such-model"),
                                                      cfg)[1],
                                    ["model.name_or_path", "nobody/no-such-model", "hub"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_records_nothing(case, tmp_path, tiny_model_dir):
    make_config, expected = CASES[case]
    config = make_config(small_config(tmp_path, tiny_model_dir), tmp_path)
    proc = run_dialsum("launch", str(config), "--nproc", "2", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("dialsum: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in expected:
        assert fragment in errors[0], errors[0]
    _nothing_recorded(tmp_path / "out")
    assert "[rank" not in proc.stdout + proc.stderr, "no rank was started"
