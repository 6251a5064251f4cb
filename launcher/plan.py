"""The Plan: the only thing that crosses from the launcher to the rank processes.

Plain data, JSON-serialisable. The launcher (or, under an external launcher, rank 0) builds it once;
ranks read it and execute. Ranks never re-plan.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


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
        return cls.from_json(Path(path).read_text())

    def save(self, path: str | Path) -> None:
        """Atomic write: ranks may read the file while the launcher is still around."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)
