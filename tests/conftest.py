"""Shared fixtures: the repo root, the shipped DialogSum-mini files, and a tiny BART built once per session.

The environment is set at import, before any test imports transformers/wandb/deepspeed, and is inherited by every rank a
test launches: W&B stays offline and quiet, DeepSpeed uses the CPU accelerator, tokenizers do not warn about forks, and
the Hugging Face hub is never contacted (there is no internet; an unknown hub id then fails at once instead of retrying
for a minute).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.update({
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
})

REPO_ROOT = Path(__file__).resolve().parent.parent
MINI_DIR = REPO_ROOT / "data" / "dialogsum-mini"


@pytest.fixture(autouse=True)
def fresh_wandb_service():
    """After a test that ran W&B in this process, tear its service down: wandb keeps one per process, started with the
    environment of the first run, so a later test's WANDB_BASE_URL or init timeout would be ignored."""
    yield
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def mini_data() -> dict[str, Path]:
    """Paths keyed `train_csv`, `train_jsonl`, `dev_csv`, ..., `test_jsonl` (test has summary1..3), plus `dir`."""
    files = {f"{split}_{ext}": MINI_DIR / f"{split}.{ext}" for split in ("train", "dev", "test") for ext in ("csv", "jsonl")}
    return {"dir": MINI_DIR, **files}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, mini_data) -> Path:
    """`dialsum init-model --size tiny --seed 0` on the mini train CSV (a few seconds, once per session)."""
    from launcher.model_init import init_model

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    init_model(mini_data["train_csv"], out, size="tiny", seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, mini_data) -> Path:
    """`dialsum init-model --arch llama --size tiny --seed 0`: a decoder-only model with a ChatML chat template."""
    from launcher.model_init import init_model

    out = tmp_path_factory.mktemp("tiny-llama") / "model"
    init_model(mini_data["train_csv"], out, size="tiny", seed=0, arch="llama")
    return out
