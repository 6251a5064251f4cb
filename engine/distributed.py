"""The process group, and the plan of a run whose ranks someone else started (torchrun, accelerate launch, srun).

The group is torch's own, with the plan's backend; DeepSpeed and the Trainer adopt a group that exists (DeepSpeed's
`init_distributed` wraps it), so whether a run uses DeepSpeed need not be known to start it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engine.allocator import set_mmap_threshold
from engine.plan import Plan
from engine.world import World


def is_distributed() -> bool:
    """Whether a process group is up (a world of one started by create_trainer has none)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_process_group(backend: str) -> None:
    """env:// through the launcher's store (torch elastic: a fresh one for every restart attempt)."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)


def plan_for_this_process(world: World, env: Mapping[str, str], config_files: Sequence[str],
                          overrides: Sequence[str] = (), sweep_params: Mapping[str, Any] | None = None) -> Plan:
    """Rank 0 plans, the others receive its Plan. The one hand-off from the engine to the launcher (a lazy import,
    tests/test_architecture.py): the ranks of an external launcher have no `dialsum launch` to plan for them. These
    ranks did not start with `plan.env` (`dialsum launch` starts its ranks with it): what is still read later is set
    now (DeepSpeed reads DS_ACCELERATOR at its import), and the rank's share of the cores goes to torch, which read
    OMP_NUM_THREADS at its own import, and glibc's mmap threshold to mallopt, glibc having read
    MALLOC_MMAP_THRESHOLD_ at the process's start (engine/allocator.py)."""
    import os

    from launcher.external import plan_external_ranks

    plan = plan_external_ranks(world, env, config_files, overrides, sweep_params)
    for name, value in plan.env.items():
        os.environ.setdefault(name, value)
    if "OMP_NUM_THREADS" in plan.env:
        torch.set_num_threads(int(plan.env["OMP_NUM_THREADS"]))
    if "MALLOC_MMAP_THRESHOLD_" in plan.env:  # the user's own value where they set one (launcher/planner.py)
        set_mmap_threshold(int(plan.env["MALLOC_MMAP_THRESHOLD_"]))
    return plan
