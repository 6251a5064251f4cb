"""After the ranks are gone: settle the run so the tracker never keeps a lie.

A run rank 0 marked `preempted` in this attempt (its ranks exited with PREEMPTED_EXIT_CODE, or the launcher was
signalled) stays so and the launcher exits PREEMPTED_EXIT_CODE, for batch scripts to requeue on; a run left
open, or marked failed by rank 0 because a peer's death broke its collective, is marked failed with the rank the
launcher saw die first and that rank's exit code. A failure before rank 0 recorded the run (a rank killed at import
or while loading the model, a rendezvous that never met) gets the run recorded by the launcher, failed the same way.
"""
from __future__ import annotations

from engine.errors import UserError
from engine.plan import PREEMPTED_EXIT_CODE, Plan, run_dir
from engine.schema import DialsumConfig
from engine.store import store_uri
from launcher.spawn import LaunchOutcome

OPEN_STATUSES = ("created", "running", "crashed")  # crashed: running with a stale heartbeat


def settle_run(cfg: DialsumConfig, plan: Plan, outcome: LaunchOutcome) -> int:
    """The launcher's exit code for this outcome, after recording a failure the ranks could not record."""
    from engine.environment import collect_environment
    from engine.recorder import create_run
    from engine.store import Tracker, open_store

    run_id = plan.run_id
    tracker = Tracker(open_store(store_uri(cfg)))
    run = tracker.get_run(run_id) if tracker.exists(run_id) else None
    this_attempt = outcome.exit_code == PREEMPTED_EXIT_CODE or outcome.launcher_signal is not None
    if run is not None and run["status"] == "preempted" and this_attempt:
        return PREEMPTED_EXIT_CODE
    if outcome.exit_code == 0:
        return 0
    if run is None:  # no rank got as far as recording it: the failure must still show in `dialsum runs list`
        try:
            create_run(tracker, plan, cfg, collect_environment(plan.topology))
        except UserError:  # another node's launcher recorded it first (a store shared by the nodes)
            pass
        run = tracker.get_run(run_id)
    if run["status"] in (*OPEN_STATUSES, "failed", "preempted"):
        ranks_view = run.get("error") or ""
        error = outcome.error + (f"; rank 0 saw: {ranks_view}" if ranks_view else "")
        tracker.finish(run_id, "failed", error=error, failing_rank=outcome.failing_rank, exit_code=outcome.exit_code)
    return outcome.exit_code


def record_oom_restart(cfg: DialsumConfig, old, new, outcome: LaunchOutcome) -> None:
    """The run's `oom_restart` event: a ZeRO-3 forward ran out of memory and the job restarts at a smaller micro-batch
    from its last complete checkpoint (a restart cannot be agreed inside a half-done all-gather)."""
    from engine.checkpointing import latest_checkpoint, read_marker
    from engine.store import Tracker, open_store

    checkpoint = latest_checkpoint(run_dir(cfg.experiment.output_root, old.run_id) / "checkpoints")
    step = read_marker(checkpoint)["step"] if checkpoint else 0
    data = {"failing_rank": outcome.failing_rank, "micro_batch_size": [old.micro_batch_size, new.micro_batch_size],
            "gradient_accumulation_steps": [old.gradient_accumulation_steps, new.gradient_accumulation_steps],
            "global_batch_size": new.global_batch_size, "checkpoint": checkpoint.name if checkpoint else None}
    print(f"dialsum: rank {outcome.failing_rank} ran out of memory in a ZeRO-3 forward: restarting from "
          f"{data['checkpoint'] or 'the start'} at micro-batch {new.micro_batch_size}", flush=True)
    tracker = Tracker(open_store(store_uri(cfg)))
    if tracker.exists(old.run_id):
        tracker.log_event(old.run_id, step, "oom_restart", data)
