"""The contract between the launcher and the ranks: the Plan, and the exit codes.

The Plan is plain data, JSON-serialisable, and the one channel from the launcher to its ranks: `launcher/planner.py`
is its only producer (in `dialsum launch`, or on rank 0 under an external launcher); ranks read it and execute, and
never re-plan. It says everything a rank needs: the effective config, the parallelism, the task, the environment the
rank processes are started with (`env`), the sweep trial a run reports to and the launcher's preemption grace.

`plan.json` is written redacted (engine/redact.py). The values redaction removed travel by one other route, named
once: the environment variable SECRETS_ENV, which the launcher sets for the processes it starts (never a file);
`Plan.load` puts each value back at its config key. A redacted plan whose secrets did not arrive is an error, never
a run with `***` in its store URI. It imports no torch or transformers, so the CLI loads it cheaply.
"""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.atomic import atomic_write_text
from engine.errors import UserError
from engine.redact import redact, redacted_paths, restore_secrets, secret_values

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again"; batch scripts requeue on it, launchers pass it through
OOM_RESTART_EXIT_CODE = 76  # a ZeRO-3 forward ran out of memory: restart from the last checkpoint at a smaller micro-batch

# The secret values plan.json lacks, by config key, for one run id (JSON), in the environment of the rank processes.
SECRETS_ENV = "DIALSUM_SECRETS"


def fresh_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_dir(output_root: str | Path, run_id: str) -> Path:
    """A run's folder: plan.json, config.yaml, checkpoints, logs, predictions, the exported model."""
    return Path(output_root).resolve() / "runs" / run_id


def backend_for(device: str) -> str:
    """The collective backend for a device kind: nccl on CUDA, gloo on CPU."""
    return "nccl" if device == "cuda" else "gloo"


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
    task: str = "seq2seq"            # engine/tasks: "seq2seq" | "causal"
    method: str = "full"             # what is trained: full | lora | dora | qlora (training.method, auto resolved)
    reasons: dict = field(default_factory=dict)          # decision -> one-line reason
    memory: dict = field(default_factory=dict)           # predictions: per-stage bytes per GPU, chosen peak
    env: dict = field(default_factory=dict)              # environment the rank processes are started with
    topology: dict = field(default_factory=dict)         # the topology the plan was made for
    sweep_trial: dict | None = None  # the local sweep trial this run reports its evaluations to (engine/callbacks/pruning)
    preempt_lead_s: float = 0.0      # how long the launcher waits for signalled ranks (0: unknown, an external launcher)
    # speed choices that leave what is learned unchanged (planner.speed_choices)
    group_by_length: bool = False    # training batches of similar length (transformers' LengthGroupedSampler)
    eval_batch_size: int = 0         # per rank, per generation batch (0: the micro-batch)
    optim: str = "adamw_torch"       # transformers optimizer name
    dataloader_num_workers: int = 0  # per rank
    pad_to_multiple_of: int = 1      # batch lengths rounded up to a multiple of this (1: longest in the batch)
    find_unused_parameters: bool = True  # DDP looks for parameters without a gradient after every forward
    gather_for_generation: bool = False  # ZeRO-3: evaluation gathers the whole model once instead of per token
    partitioned_loading: bool = False    # ZeRO-3 on several ranks: the model is built as its partitions (zero.Init)

    def to_json(self) -> str:
        """Unredacted: for the broadcast to the ranks of an external launcher (memory, never a file)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> "Plan":
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path: str | Path, env: Mapping[str, str] | None = None) -> "Plan":
        """The saved plan with its secrets put back from SECRETS_ENV (`env`, default os.environ)."""
        plan = cls.from_json(Path(path).read_text())
        env = os.environ if env is None else env
        carried = json.loads(env.get(SECRETS_ENV) or "{}")
        if carried.get("run_id") == plan.run_id:  # a restart's new plan keeps its run, and its secrets
            plan.config = restore_secrets(plan.config, carried["secrets"])
        missing = redacted_paths(plan.config)
        if missing:
            raise UserError(f"{path}: the config's secret values ({', '.join(missing)}) are redacted in this file and "
                            f"did not reach this rank ({SECRETS_ENV} is unset or lacks them); start the ranks with "
                            "`dialsum launch`, which passes them")
        return plan

    def save(self, path: str | Path) -> None:
        """Atomic write of the redacted plan: ranks may read the file while the launcher is still around."""
        atomic_write_text(path, json.dumps(redact(asdict(self)), indent=2, sort_keys=True))

    def secrets_env(self) -> dict[str, str]:
        """{SECRETS_ENV: ...} for the processes that run this plan: what `save` leaves out of plan.json, by config
        key, for this run only."""
        return {SECRETS_ENV: json.dumps({"run_id": self.run_id, "secrets": secret_values(self.config)})}
