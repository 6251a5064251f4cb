"""Planning for ranks that someone else started (torchrun, `accelerate launch`, `srun python -m engine`, a plain
process): rank 0 plans once and broadcasts the Plan, so ranks never re-plan and the run is recorded once.

Every rank first refuses an accelerate FSDP config (one line, exit 2, before any collective), then joins the process
group with the device's backend, the one the planner records.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.config import load_config
from engine.errors import UserError
from engine.plan import Plan, backend_for, fresh_run_id
from engine.world import World


def plan_external_ranks(world: World, env: Mapping[str, str], config_files: Sequence[str],
                        overrides: Sequence[str] = (), sweep_params: Mapping[str, Any] | None = None) -> Plan:
    import torch

    from engine.distributed import init_process_group
    from launcher.ds_config import refuse_fsdp
    from launcher.planner import make_plan
    from launcher.topology import detect_topology

    refuse_fsdp(env)
    loaded = load_config(config_files, overrides, env=env, sweep_params=sweep_params)
    run_id = env.get("DIALSUM_RUN_ID") or fresh_run_id()

    def plan() -> Plan:
        return make_plan(loaded, detect_topology(env), env=env, run_id=run_id, nnodes=world.nnodes,
                         nproc_per_node=world.local_world_size)

    if world.world_size == 1:
        return plan()
    init_process_group(backend_for("cuda" if torch.cuda.is_available() else "cpu"))
    payload: list[Any] = [None]
    if world.rank == 0:
        try:
            payload = [plan().to_json()]
        except Exception as exc:  # the other ranks wait in the broadcast: they get the error instead of a plan
            payload = [{"planning_error": str(exc), "user_error": isinstance(exc, UserError)}]
            torch.distributed.broadcast_object_list(payload, src=0)
            raise
    torch.distributed.broadcast_object_list(payload, src=0)
    if isinstance(payload[0], dict):
        message = payload[0]["planning_error"]
        raise UserError(message) if payload[0]["user_error"] else RuntimeError(f"rank 0 could not plan: {message}")
    return Plan.from_json(payload[0])
