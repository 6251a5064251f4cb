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
from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs, SignalException, Std
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from engine.plan import Plan

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
                master_port: int = 29500, max_restarts: int = 0, rdzv_timeout: int = 600,
                verbose: bool = False) -> LaunchOutcome:
    """Run `python -m engine --plan PLAN` on `plan.nproc_per_node` local ranks; several nodes meet at master_addr.
    Local rank 0 prints to the console; the others write `logs/` in the run folder (every rank prints with verbose)."""
    logging.getLogger("torch.distributed.elastic").setLevel(logging.WARNING)
    # The rank processes inherit this environment (torch elastic takes no other): the plan's, and its secrets, the one
    # value besides the plan file that crosses to the ranks (engine/plan.py). Set for every spawn, so a restart with
    # a new plan carries that plan's.
    os.environ.update({**plan.env, **plan.secrets_env()})
    # A fresh TCPStore for every (re)started worker group: the shared rendezvous store keeps the dead group's gloo
    # addresses, and a restarted rank then dials a dead peer ("connectFullMesh ... Connection refused").
    os.environ.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    if plan.nnodes == 1 and master_addr is None:
        backend, endpoint, rdzv_configs = "c10d", "localhost:0", {}  # what `torchrun --standalone` does
    else:  # static: the first node hosts the store; every node waits rdzv_timeout for the others to join
        backend, endpoint = "static", f"{master_addr}:{master_port}"
        rdzv_configs = {"rank": node_rank, "timeout": rdzv_timeout}
    config = LaunchConfig(
        min_nodes=plan.nnodes, max_nodes=plan.nnodes, nproc_per_node=plan.nproc_per_node,
        run_id=f"dialsum-{plan.run_id}",  # the same on every node: the key their rendezvous meets under
        rdzv_backend=backend, rdzv_endpoint=endpoint,
        rdzv_configs=rdzv_configs, max_restarts=max_restarts, monitor_interval=0.1, start_method="spawn",
        signals_to_handle=FORWARDED_SIGNALS, shutdown_timeout=SHUTDOWN_GRACE_S,
        logs_specs=_logs_specs(plan_path.parent / "logs", plan.nproc_per_node, verbose),
    )
    try:
        elastic_launch(config, sys.executable)("-m", "engine", "--plan", str(plan_path))
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        code = failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # signal -9 -> 137
        _show_log_tail(plan_path.parent / "logs", failure.local_rank, rank)
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


LOG_TAIL_LINES = 20


def _logs_specs(log_dir: Path, nproc: int, verbose: bool) -> DefaultLogsSpecs:
    """Local ranks other than 0 write <run>/logs/<job>/attempt_<n>/<local rank>/{stdout,stderr}.log instead of the
    console, so a note every rank prints appears once; verbose leaves every rank on the console."""
    if verbose:
        return DefaultLogsSpecs(log_dir=str(log_dir))
    return DefaultLogsSpecs(log_dir=str(log_dir), redirects={r: Std.ALL for r in range(1, nproc)})


def _show_log_tail(log_dir: Path, local_rank: int, rank: int) -> None:
    """A failing rank whose output went to a file: its last lines, so the reason is on the console."""
    logs = sorted(log_dir.glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda f: f.stat().st_mtime)
    if not logs:
        return  # local rank 0, or verbose: its output is already on the console
    lines = logs[-1].read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    print(f"--- rank {rank}: last {len(lines)} lines of {logs[-1]} ---", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr, flush=True)
