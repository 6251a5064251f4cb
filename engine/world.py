"""Where this process sits in its job: the one place the engine reads the variables launchers set.

Kinds are tried in a fixed order, as Lightning Fabric's cluster environments are: torch elastic first (torchrun,
`accelerate launch`, `dialsum launch`: RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT), then SLURM
tasks (`srun python -m engine`: one task per rank, SLURM_PROCID in a job step; inside `srun torchrun` every worker
inherits its task's SLURM_PROCID=0 and SLURM_NTASKS=1, which is why RANK wins), else a world of one (a plain process:
the Python API, `python -m engine`). The entry points call `detect_world` once on their environment snapshot and hand
the result down; `World.process_group_env()` is what torch's env:// initialisation, DeepSpeed and the Trainer then
read.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from engine.errors import UserError


@dataclass(frozen=True)
class World:
    kind: str                 # "torchelastic" | "slurm" | "single"
    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    master_addr: str | None = None
    master_port: int | None = None
    restart: int = 0                  # torch elastic's attempt (TORCHELASTIC_RESTART_COUNT)
    agent_store: bool = False         # the rendezvous store lives in torch elastic's agent, not in rank 0

    @property
    def nnodes(self) -> int:
        return max(1, self.world_size // self.local_world_size)

    def process_group_env(self) -> dict[str, str]:
        """The env:// variables of this world. A world of one gets a free local port, so DeepSpeed and the Trainer
        initialise a group of one instead of trying MPI discovery (which needs mpi4py)."""
        if self.master_addr is None and self.nnodes > 1:
            raise UserError("srun over several nodes: set MASTER_ADDR to the first node's address "
                            "(scripts/slurm/multi_node.sbatch does)")
        port = self.master_port
        if port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
        return {"RANK": str(self.rank), "WORLD_SIZE": str(self.world_size), "LOCAL_RANK": str(self.local_rank),
                "LOCAL_WORLD_SIZE": str(self.local_world_size), "MASTER_ADDR": self.master_addr or "127.0.0.1",
                "MASTER_PORT": str(port)}


WORLD_OF_ONE = World("single", rank=0, local_rank=0, world_size=1, local_world_size=1)


def slurm_port(job_id: str | int) -> int:
    """A rendezvous port per job (same formula as scripts/slurm/*.sbatch), so two jobs on one node do not collide."""
    return 20000 + int(job_id) % 20000


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "").strip()
    return int(value) if value.isdigit() else default


def detect_world(env: Mapping[str, str]) -> World:
    if "RANK" in env:
        world = _int(env, "WORLD_SIZE", 1)
        port = env.get("MASTER_PORT", "").strip()
        return World("torchelastic", rank=_int(env, "RANK", 0), local_rank=_int(env, "LOCAL_RANK", 0),
                     world_size=world, local_world_size=_int(env, "LOCAL_WORLD_SIZE", world),
                     master_addr=env.get("MASTER_ADDR") or None, master_port=int(port) if port.isdigit() else None,
                     restart=_int(env, "TORCHELASTIC_RESTART_COUNT", 0),
                     agent_store=env.get("TORCHELASTIC_USE_AGENT_STORE") == "True")
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        world, nnodes = _int(env, "SLURM_NTASKS", 1), _int(env, "SLURM_NNODES", 1)
        addr = env.get("MASTER_ADDR") or ("127.0.0.1" if nnodes == 1 else None)
        port = env.get("MASTER_PORT", "").strip()
        return World("slurm", rank=_int(env, "SLURM_PROCID", 0), local_rank=_int(env, "SLURM_LOCALID", 0),
                     world_size=world, local_world_size=max(1, world // nnodes), master_addr=addr,
                     master_port=int(port) if port.isdigit() else slurm_port(env.get("SLURM_JOB_ID", "0")))
    return WORLD_OF_ONE


def adopt_world(env: Mapping[str, str]) -> World:
    """This process's world, with the env:// variables set where torch elastic did not set them (srun tasks, a plain
    process), for torch's process group, DeepSpeed and the Trainer."""
    world = detect_world(env)
    if world.kind != "torchelastic":
        os.environ.update(world.process_group_env())
    return world
