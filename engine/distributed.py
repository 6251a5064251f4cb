"""Plans for ranks that were started by someone else (torchrun, accelerate launch, srun, or a plain `python`).

Rank 0 plans once and broadcasts the Plan; other ranks receive it, so ranks never re-plan. The process group is
initialised first with the device's natural backend (nccl with CUDA, else gloo), the same one the planner picks.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engine.config import load_config
from engine.errors import UserError
from engine.plan import Plan, new_run_id


def global_rank() -> int:
    """This process's global rank as its launcher set it (torchrun, dialsum launch, accelerate, srun through
    adopt_slurm_environment, or a world of one); 0 outside any launcher. The one place the engine reads it."""
    return int(os.environ.get("RANK", "0"))


def is_distributed() -> bool:
    """Whether a process group is up (a world of one started by create_trainer has none)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def backend_for(device: str) -> str:
    """The collective backend for a device kind: nccl on CUDA, gloo on CPU (the planner records it in the Plan)."""
    return "nccl" if device == "cuda" else "gloo"


def adopt_slurm_environment(env: dict[str, str] | None = None) -> None:
    """Plain `srun python -m engine`: one task per rank, so SLURM's task ids are the ranks. Skipped when RANK is set
    (torchrun/accelerate inside srun: every worker inherits its task's SLURM_PROCID=0 and SLURM_NTASKS=1)."""
    env = os.environ if env is None else env
    if "RANK" in env or "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return
    world = int(env["SLURM_NTASKS"])
    nnodes = int(env.get("SLURM_NNODES", "1"))
    env.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=str(world), LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
               LOCAL_WORLD_SIZE=str(max(1, world // nnodes)))
    if "MASTER_ADDR" not in env:
        if nnodes > 1:
            raise UserError("srun over several nodes: set MASTER_ADDR to the first node's address "
                            "(scripts/slurm/multi_node.sbatch does)")
        env["MASTER_ADDR"] = "127.0.0.1"
    env.setdefault("MASTER_PORT", str(slurm_port(env.get("SLURM_JOB_ID", "0"))))


def slurm_port(job_id: str | int) -> int:
    """A rendezvous port per job (same formula as scripts/slurm/*.sbatch), so two jobs on one node do not collide."""
    return 20000 + int(job_id) % 20000


def adopt_world_of_one(env: dict[str, str] | None = None) -> None:
    """A plain process (the Python API, `python -m engine`, no launcher): the env:// variables of a one-rank world on
    a free local port, so DeepSpeed and the Trainer initialise a process group of one instead of trying MPI
    discovery (which needs mpi4py). Nothing changes when a launcher already set RANK."""
    env = os.environ if env is None else env
    if "RANK" in env:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port))


def init_process_group(use_deepspeed: bool, backend: str) -> None:
    if torch.distributed.is_initialized():
        return
    if use_deepspeed:
        if not torch.cuda.is_available():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed

        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    else:
        torch.distributed.init_process_group(backend=backend)


def plan_for_this_process(config_files: Sequence[str], overrides: Sequence[str] = (),
                          sweep_params: Mapping[str, Any] | None = None) -> Plan:
    from launcher.ds_config import refuse_fsdp
    from launcher.planner import make_plan
    from launcher.topology import detect_topology

    adopt_slurm_environment()
    refuse_fsdp(os.environ)  # on every rank, before any collective: an accelerate FSDP config is one line, exit 2
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    loaded = load_config(config_files, overrides, sweep_params=sweep_params)
    if world_size == 1:
        adopt_world_of_one()
        plan = make_plan(loaded, detect_topology(), run_id=new_run_id(), nnodes=1, nproc_per_node=1)
        os.environ.update(plan.env)
        return plan
    device = "cuda" if torch.cuda.is_available() else "cpu"
    init_process_group(bool(loaded.config.parallel.deepspeed), backend_for(device))
    payload: list[Any] = [None]
    if torch.distributed.get_rank() == 0:
        try:
            plan = make_plan(loaded, detect_topology(), run_id=new_run_id(),
                             nnodes=world_size // local_world, nproc_per_node=local_world)
            payload = [plan.to_json()]
        except Exception as exc:  # the other ranks wait in the broadcast: they get the error instead of a plan
            payload = [{"planning_error": str(exc), "user_error": isinstance(exc, UserError)}]
            torch.distributed.broadcast_object_list(payload, src=0)
            raise
    torch.distributed.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], dict):
        message = payload[0]["planning_error"]
        raise UserError(message) if payload[0]["user_error"] else RuntimeError(f"rank 0 could not plan: {message}")
    plan = Plan.from_json(payload[0])
    os.environ.update(plan.env)
    return plan
