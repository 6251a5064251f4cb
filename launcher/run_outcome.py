"""After the ranks are gone: a run that rank 0 could not close (it was killed, or another rank took the group
down) is marked failed with the failing rank and exit code, so the tracker never keeps a lie."""
from __future__ import annotations

from engine.recorder import store_uri
from engine.schema import DialsumConfig
from launcher.spawn import LaunchOutcome

OPEN_STATUSES = ("created", "running")


def record_launch_failure(cfg: DialsumConfig, run_id: str, outcome: LaunchOutcome) -> None:
    from engine.store import Tracker, open_store

    tracker = Tracker(open_store(store_uri(cfg)))
    if tracker.exists(run_id) and tracker.get_run(run_id)["status"] in OPEN_STATUSES:
        tracker.finish(run_id, "failed", error=outcome.error, failing_rank=outcome.failing_rank,
                       exit_code=outcome.exit_code)
