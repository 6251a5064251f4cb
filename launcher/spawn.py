"""Spawn the rank processes through torch elastic (the machinery behind torchrun), stream their output, and turn
the outcome into an exit code plus, on failure, which rank died and how.

Signals: SIGTERM/SIGINT/SIGHUP/SIGQUIT and SIGUSR1 (SLURM's pre-timeout warning) sent to the launcher are forwarded to
every rank; the ranks checkpoint at their next step boundary and exit, and the launcher waits up to
SHUTDOWN_GRACE_S for them before killing what is left. A rank that dies takes the group down: torch elastic notices
within `monitor_interval`, the survivors see their peer's sockets close inside the next collective and exit.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from torch.distributed import DistNetworkError, DistStoreError
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from launcher.plan import Plan

FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# A preempted rank finishes its step and writes a checkpoint in this time, then torch elastic SIGKILLs it (SLURM's
# --signal lead in scripts/slurm is 90 s); DIALSUM_SHUTDOWN_GRACE_S for models whose steps and checkpoints take longer.
SHUTDOWN_GRACE_S = int(os.environ.get("DIALSUM_SHUTDOWN_GRACE_S", "120"))


@dataclass
class LaunchOutcome:
    exit_code: int
    failing_rank: int | None = None
    error: str = ""
    launcher_signal: str | None = None  # set when the ranks stopped because the launcher itself was signalled


def spawn_ranks(plan: Plan, plan_path: Path, *, node_rank: int = 0, master_addr: str | None = None,
                master_port: int = 29500, max_restarts: int = 0, rdzv_timeout: int = 600) -> LaunchOutcome:
    """Run `python -m engine --plan PLAN` on `plan.nproc_per_node` local ranks; several nodes meet at master_addr."""
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    os.environ.update(plan.env)
    # A fresh TCPStore for every (re)started worker group: the shared rendezvous store keeps the dead group's gloo
    # addresses, and a restarted rank then dials a dead peer ("connectFullMesh ... Connection refused").
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # the preemption lead the ranks compare their step and checkpoint times with (engine/signals.py)
    os.environ.setdefault("DIALSUM_PREEMPT_LEAD_S", str(SHUTDOWN_GRACE_S))
    if plan.nnodes == 1 and master_addr is None:
        backend, endpoint, rdzv_configs = "c10d", "localhost:0", {}  # what `torchrun --standalone` does
    else:  # static: the first node hosts the store; every node waits rdzv_timeout for the others to join
        backend, endpoint = "static", f"{master_addr}:{master_port}"
        rdzv_configs = {"rank": node_rank, "timeout": rdzv_timeout}
    config = LaunchConfig(
        min_nodes=plan.nnodes, max_nodes=plan.nnodes, nproc_per_node=plan.nproc_per_node,
        run_id=f"dialsum-{plan.run_id}",  # the same on every node: the key their rendezvous meets under
        rdzv_backend=backend, rdzv_endpoint=endpoint,
        rdzv_configs=rdzv_configs, max_restarts=max_restarts, monitor_interval=0.5, start_method="spawn",
        signals_to_handle=FORWARDED_SIGNALS, shutdown_timeout=SHUTDOWN_GRACE_S,
    )
    try:
        elastic_launch(config, sys.executable)("-m", "engine", "--plan", str(plan_path))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # signal -9 -> 137
        return LaunchOutcome(exit_code=code, failing_rank=rank,
                             error=f"rank {rank} exited with code {failure.exitcode}")
    except (DistStoreError, DistNetworkError) as exc:  # the rendezvous: a node never came, or the first node is gone
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return LaunchOutcome(exit_code=1, error=f"node {node_rank}: rendezvous at {endpoint} failed within "
                                                f"{rdzv_timeout} s (--rdzv-timeout): {first_line}")
    except SignalException as exc:
        name = signal.Signals(exc.sigval).name
        return LaunchOutcome(exit_code=128 + exc.sigval, error=f"launcher received {name}",
                             launcher_signal=name)
    return LaunchOutcome(exit_code=0)
