"""Secrets leave a process only redacted (engine.redact.redact): plan.json holds '***' while the ranks get the real
values through the one secrets variable the launcher sets (engine.plan.SECRETS_ENV), and log lines pass through the
same redaction. The end-to-end check that no file a
launch writes holds a secret is test_entrypoints.py::test_single_rank_launch_writes_no_secret_anywhere."""
from __future__ import annotations

import io
import json
import logging

import pytest

from engine.redact import RedactingFilter, redact
from engine.errors import UserError
from engine.plan import SECRETS_ENV, Plan

SECRETS = ("sk-live-abc123", "dbpass-77", "hookpw-42")


def a_plan() -> Plan:
    config = {"tracking": {"uri": f"postgresql://dialsum:{SECRETS[1]}@db.example.org/runs"},
              "callbacks": [{"path": "x:Notify", "kwargs": {"api_key": SECRETS[0],
                                                             "url": f"https://u:{SECRETS[2]}@hooks.example.org/a"}}],
              "training": {"max_new_tokens": 12}}
    return Plan(run_id="r1", config=config, config_sources={}, device="cpu", backend="gloo", nnodes=1,
                nproc_per_node=1, world_size=1, precision="fp32", zero_stage=2, use_deepspeed=True,
                offload_optimizer=False, offload_params=False, gradient_checkpointing=False, micro_batch_size=1,
                gradient_accumulation_steps=1, global_batch_size=1, deepspeed_config=None,
                env={"HF_TOKEN": "hf_abcdef"})


def test_plan_file_is_redacted_and_ranks_get_the_real_config_from_the_secrets_variable(tmp_path):
    plan = a_plan()
    path = tmp_path / "plan.json"
    plan.save(path)
    text = path.read_text()
    assert not any(secret in text for secret in SECRETS) and "hf_abcdef" not in text
    saved = json.loads(text)
    assert saved["config"]["callbacks"][0]["kwargs"]["api_key"] == "***"
    assert saved["config"]["tracking"]["uri"] == "postgresql://dialsum:***@db.example.org/runs"
    assert saved["config"]["training"]["max_new_tokens"] == 12  # `token` inside a longer word is not a secret
    assert Plan.load(path, plan.secrets_env()).config == plan.config  # a rank of this launcher: the real values


def test_secrets_are_restored_by_key_also_into_a_changed_plan(tmp_path):
    """An OOM restart saves a new plan (another micro-batch pin in its config) while the ranks' secrets variable is
    the one the launcher set: the secrets still go back where they belong (this once fell back to '***')."""
    secrets = a_plan().secrets_env()
    changed = a_plan()
    changed.config["parallel"] = {"micro_batch_size": 2}
    changed.save(tmp_path / "plan.json")
    assert Plan.load(tmp_path / "plan.json", secrets).config == changed.config


def test_a_redacted_plan_without_its_secrets_is_refused(tmp_path):
    """Never a run whose store URI reads `postgresql://dialsum:***@...`: the rank says what is missing."""
    a_plan().save(tmp_path / "plan.json")
    with pytest.raises(UserError, match=r"callbacks\.0\.kwargs\.api_key, callbacks\.0\.kwargs\.url, tracking\.uri.*"
                                        f"{SECRETS_ENV}"):
        Plan.load(tmp_path / "plan.json", {})
    other = a_plan()  # another run's secrets fill nothing here
    other.run_id = "r2"
    with pytest.raises(UserError, match=r"\(callbacks\.0\.kwargs\.api_key, callbacks\.0\.kwargs\.url, tracking\.uri\)"):
        Plan.load(tmp_path / "plan.json", other.secrets_env())


def test_log_lines_are_redacted(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandbkey-0123456789")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("dialsum-redaction-test")
    logger.addHandler(handler)
    try:
        logger.warning("cannot reach %s with key %s", f"postgresql://u:{SECRETS[1]}@h/db", "wandbkey-0123456789")
    finally:
        logger.removeHandler(handler)
    line = stream.getvalue()
    assert "postgresql://u:***@h/db" in line and "with key ***" in line
    assert SECRETS[1] not in line and "wandbkey-0123456789" not in line


@pytest.mark.parametrize("key", ["api_key", "token", "password", "secret", "webhookSecret", "HF_TOKEN"])
def test_secret_looking_keys_anywhere(key):
    assert redact({"a": [{"b": {key: "s3cr3t"}}]}) == {"a": [{"b": {key: "***"}}]}
