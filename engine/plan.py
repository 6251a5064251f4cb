"""The contract between the launcher and the ranks: the Plan and the exit codes.

The Plan is plain data, JSON-serialisable. `launcher/planner.py` is its only producer (in `dialsum launch`, or on
rank 0 under an external launcher); ranks read it and execute, and never re-plan. It imports no torch or
transformers, so the CLI loads it cheaply.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.atomic import atomic_write_text
from engine.redact import redact

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; batch scripts requeue on it, launchers pass it through
OOM_RESTART_EXIT_CODE = 76  # a ZeRO-3 forward ran out of memory: restart from the last checkpoint at a smaller micro-batch


def fresh_run_id() -> str:
    return uuid.uuid4().hex[:12]


def new_run_id() -> str:
    """A job's run id: DIALSUM_RUN_ID when a resumed job must keep its run, else a fresh one."""
    return os.environ.get("DIALSUM_RUN_ID") or fresh_run_id()


def run_dir(output_root: str | Path, run_id: str) -> Path:
    """A run's folder: plan.json, config.yaml, checkpoints, logs, predictions, the exported model."""
    return Path(output_root).resolve() / "runs" / run_id


# Carries the unredacted config from the launcher to its ranks (their environment, never a file).
CONFIG_ENV = "DIALSUM_PLAN_CONFIG"


@dataclass
class Plan:
    run_id: str                      # tracker run id, fixed before any rank starts (kept across resumes)
    config: dict                     # the effective, validated config (DialsumConfig as a nested dict)
    config_sources: dict             # dotted key -> layer that set it ("default", "file:x.yaml", "env", "sweep", "set")
    device: str                      # "cpu" | "cuda"
    backend: str                     # "gloo" | "nccl"
    nnodes: int
    nproc_per_node: int
    world_size: int
    precision: str                   # "fp32" | "bf16" | "fp16"
    zero_stage: int                  # 0..3 (0 with deepspeed=False means plain DDP)
    use_deepspeed: bool
    offload_optimizer: bool
    offload_params: bool
    gradient_checkpointing: bool
    micro_batch_size: int            # per rank, per forward
    gradient_accumulation_steps: int
    global_batch_size: int           # micro x accumulation x world_size (always exact)
    deepspeed_config: dict | None    # rendered DeepSpeed config, every "auto" resolved
    reasons: dict = field(default_factory=dict)          # decision -> one-line reason
    memory: dict = field(default_factory=dict)           # predictions: per-stage bytes per GPU, chosen peak
    env: dict = field(default_factory=dict)              # environment the ranks must see (e.g. DS_ACCELERATOR)
    topology: dict = field(default_factory=dict)         # the topology the plan was made for
    # speed choices that leave what is learned unchanged (planner.speed_choices)
    group_by_length: bool = False    # training batches of similar length (transformers' LengthGroupedSampler)
    eval_batch_size: int = 0         # per rank, per generation batch (0: the micro-batch)
    optim: str = "adamw_torch"       # transformers optimizer name
    dataloader_num_workers: int = 0  # per rank
    pad_to_multiple_of: int = 1      # batch lengths rounded up to a multiple of this (1: longest in the batch)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """The saved (redacted) plan, with the real config from CONFIG_ENV when the launcher exported this plan's."""
        plan = cls.from_json(Path(path).read_text())
        real = json.loads(os.environ.get(CONFIG_ENV) or "null")
        if real is not None and redact(real) == plan.config:
            plan.config = real
        return plan

    def save(self, path: str | Path) -> None:
        """Atomic write of the redacted plan: ranks may read the file while the launcher is still around."""
        atomic_write_text(path, json.dumps(redact(asdict(self)), indent=2, sort_keys=True))

    def export_config(self) -> None:
        """The real config for the ranks this process starts, through their environment only (plan.json is
        redacted): `load` takes it back when it redacts to the saved config."""
        if redact(self.config) != self.config:
            os.environ[CONFIG_ENV] = json.dumps(self.config)
