"""Run tracking: lifecycle, heartbeats, step-indexed metrics, events, summaries; written by rank 0 only.

A run left `running` by a process that died stops heartbeating; readers report it `crashed` once its heartbeat is
older than 3 x its interval. The stored row is not rewritten, so a run that was only slow recovers on its next beat.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from engine.errors import UserError
from engine.store.db import Store, events, finite_or_none, iso, latest_metrics, metrics, now, runs
from engine.redact import redact, redact_text

FINAL_STATUSES = ("completed", "failed", "killed", "preempted")
STATUSES = ("created", "running", "crashed") + FINAL_STATUSES
CRASH_AFTER_BEATS = 3


def flatten(obj: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: params as dotted keys, the way configs name them."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


class Tracker:
    def __init__(self, store: Store):
        self.store = store
        self._upserts = None

    # ----- writes -----
    def create_run(self, run_id: str, *, name: str, group: str = "", config: dict, plan: dict | None,
                   environment: dict, tags: list[str] | tuple[str, ...] = (), notes: str = "",
                   heartbeat_seconds: float | None = None) -> None:
        """Record a new run (status `created`). The heartbeat interval defaults to config tracking.heartbeat_seconds."""
        if heartbeat_seconds is None:
            heartbeat_seconds = float(config.get("tracking", {}).get("heartbeat_seconds", 30.0))

        def write(conn: Connection) -> None:
            if conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id)).first():
                raise UserError(f"run {run_id!r} already exists in {self.store.uri}")
            conn.execute(runs.insert().values(
                run_id=run_id, name=name, group_name=group, status="created", config=redact(config),
                plan=redact(plan), environment=redact(environment), tags=list(tags), notes=redact_text(notes),
                summary={}, heartbeat_seconds=heartbeat_seconds, created_at=now(), error="", wandb_id=""))

        self.store.write(write)

    def start(self, run_id: str) -> None:
        """Mark the run `running` (again, on a resume: the end fields are cleared)."""
        t = now()
        self._update(run_id, status="running", started_at=t, heartbeat_at=t, ended_at=None, error="",
                     failing_rank=None, exit_code=None)

    def heartbeat(self, run_id: str) -> None:
        self._update(run_id, heartbeat_at=now())

    def finish(self, run_id: str, status: str, *, error: str = "", failing_rank: int | None = None,
               exit_code: int | None = None) -> None:
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status must be one of {FINAL_STATUSES}, got {status!r}")
        t = now()
        self._update(run_id, status=status, ended_at=t, heartbeat_at=t, error=redact_text(error),
                     failing_rank=failing_rank, exit_code=exit_code)

    def set_summary(self, run_id: str, metrics_: dict[str, float]) -> None:
        """Merge best/final metrics into the run's summary."""
        def write(conn: Connection) -> None:
            summary = self._row(conn, run_id, lock=True).summary
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(summary={**summary, **metrics_}))

        self.store.write(write)

    def set_wandb_id(self, run_id: str, wandb_id: str) -> None:
        self._update(run_id, wandb_id=wandb_id)

    def log_metrics(self, run_id: str, step: int, metrics_: dict[str, float]) -> None:
        """Append to the history at `step` (a repeated (step, key) overwrites) and advance the latest values."""
        if not metrics_:
            return
        t = now()
        rows = [{"run_id": run_id, "key": k, "step": int(step), "value": finite_or_none(float(v)), "at": t}
                for k, v in metrics_.items()]

        history_upsert, latest_upsert = self._metric_upserts()

        def write(conn: Connection) -> None:
            self._check_exists(conn, run_id)
            conn.execute(history_upsert, rows)
            conn.execute(latest_upsert, [{k: r[k] for k in ("run_id", "key", "step", "value")} for r in rows])

        self.store.write(write)

    def _metric_upserts(self):
        """The two upserts of log_metrics, built once: building them per call cost most of a logged step."""
        if self._upserts is None:
            history = self.store.insert(metrics)
            latest = self.store.insert(latest_metrics)
            self._upserts = (
                history.on_conflict_do_update(index_elements=[metrics.c.run_id, metrics.c.key, metrics.c.step],
                                              set_={"value": history.excluded.value, "at": history.excluded.at}),
                latest.on_conflict_do_update(index_elements=[latest_metrics.c.run_id, latest_metrics.c.key],
                                             set_={"step": latest.excluded.step, "value": latest.excluded.value},
                                             where=latest.excluded.step >= latest_metrics.c.step),
            )
        return self._upserts

    def log_event(self, run_id: str, step: int, kind: str, data: dict[str, Any]) -> None:
        """Something that happened at a step: an anomaly, an OOM backoff, a memory reading."""
        def write(conn: Connection) -> None:
            self._check_exists(conn, run_id)
            conn.execute(events.insert().values(run_id=run_id, step=int(step), kind=kind, data=redact(data), at=now()))

        self.store.write(write)

    # ----- reads -----
    def exists(self, run_id: str) -> bool:
        with self.store.read() as conn:
            return self._has_run(conn, run_id)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """Everything about a run: fields, config, plan, environment, summary, latest metrics, history, events."""
        with self.store.read() as conn:
            row = self._row(conn, run_id)
            latest = self._latest(conn, [run_id]).get(run_id, {})
            history: dict[int, dict[str, Any]] = {}
            for step, key, value in conn.execute(
                    select(metrics.c.step, metrics.c.key, metrics.c.value)
                    .where(metrics.c.run_id == run_id).order_by(metrics.c.step, metrics.c.key)):
                history.setdefault(step, {"step": step})[key] = _nan_if_none(value)
            event_rows = conn.execute(select(events).where(events.c.run_id == run_id).order_by(events.c.id)).all()
        run = self._describe(row, latest)
        run.update(config=row.config, plan=row.plan, environment=row.environment, history=list(history.values()),
                   events=[{"step": e.step, "kind": e.kind, "data": e.data, "at": iso(e.at)} for e in event_rows])
        return run

    def events_of_kind(self, kind: str, *, status: str) -> list[dict[str, Any]]:
        """Every `kind` event of the runs in `status`, newest run first, with the run's config and plan: one query,
        whatever the number of runs and metrics in the store (the planner reads past memory peaks this way)."""
        query = (select(events.c.run_id, events.c.data, runs.c.config, runs.c.plan)
                 .join(runs, runs.c.run_id == events.c.run_id)
                 .where(events.c.kind == kind, runs.c.status == status)
                 .order_by(runs.c.created_at.desc(), events.c.id))
        with self.store.read() as conn:
            return [{"run_id": r.run_id, "data": r.data, "config": r.config, "plan": r.plan or {}}
                    for r in conn.execute(query)]

    def list_runs(self, status: str | None = None, sort_by_metric: str | None = None, descending: bool = True,
                  group: str | None = None) -> list[dict[str, Any]]:
        """Runs newest first, or by a metric (summary value, else latest logged value; runs without it go last)."""
        if status is not None and status not in STATUSES:
            raise UserError(f"unknown run status {status!r} (expected one of {', '.join(STATUSES)})")
        query = select(runs).order_by(runs.c.created_at.desc(), runs.c.run_id)
        if group is not None:
            query = query.where(runs.c.group_name == group)
        with self.store.read() as conn:
            rows = conn.execute(query).all()
            latest = self._latest(conn, [r.run_id for r in rows])
        out = [self._describe(r, latest.get(r.run_id, {})) for r in rows]
        if status is not None:
            out = [r for r in out if r["status"] == status]
        if sort_by_metric:
            def key(r: dict) -> tuple[bool, float]:
                value = r["metrics"].get(sort_by_metric)
                missing = value is None or value != value
                return missing, 0.0 if missing else (-value if descending else value)

            out.sort(key=key)
        return out

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        """Params that differ between the runs (dotted keys) and every metric side by side."""
        found = [self.get_run(r) for r in run_ids]
        params = [flatten(r["config"]) for r in found]
        keys = sorted(set().union(*params))
        differ = {k: [p.get(k) for p in params] for k in keys if len({repr(p.get(k)) for p in params}) > 1}
        metric_keys = sorted(set().union(*(r["metrics"] for r in found)))
        return {"run_ids": list(run_ids),
                "status": [r["status"] for r in found],
                "params": differ,
                "metrics": {k: [r["metrics"].get(k) for r in found] for k in metric_keys}}

    # ----- helpers -----
    def _update(self, run_id: str, **values: Any) -> None:
        def write(conn: Connection) -> None:
            if conn.execute(runs.update().where(runs.c.run_id == run_id).values(**values)).rowcount == 0:
                raise UserError(f"no run {run_id!r} in {self.store.uri}")

        self.store.write(write)

    @staticmethod
    def _has_run(conn: Connection, run_id: str) -> bool:
        return conn.execute(select(runs.c.run_id).where(runs.c.run_id == run_id)).first() is not None

    def _check_exists(self, conn: Connection, run_id: str) -> None:
        """Cheap existence check for writes that only append (no JSON decoding of the run row)."""
        if not self._has_run(conn, run_id):
            raise UserError(f"no run {run_id!r} in {self.store.uri}")

    def _row(self, conn: Connection, run_id: str, lock: bool = False):
        """The run's row; `lock` holds it (PostgreSQL) for a read-modify-write."""
        query = select(runs).where(runs.c.run_id == run_id)
        row = conn.execute(query.with_for_update() if lock else query).first()
        if row is None:
            raise UserError(f"no run {run_id!r} in {self.store.uri}")
        return row

    @staticmethod
    def _latest(conn: Connection, run_ids: list[str]) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        if run_ids:
            for run_id, key, value in conn.execute(
                    select(latest_metrics.c.run_id, latest_metrics.c.key, latest_metrics.c.value)
                    .where(latest_metrics.c.run_id.in_(run_ids))):
                out.setdefault(run_id, {})[key] = _nan_if_none(value)
        return out

    @staticmethod
    def _describe(row, latest: dict[str, float]) -> dict[str, Any]:
        status = row.status
        t = now()
        if status == "running" and t - (row.heartbeat_at or row.started_at or row.created_at) > \
                CRASH_AFTER_BEATS * row.heartbeat_seconds:
            status = "crashed"
        end = row.ended_at if row.ended_at is not None else (row.heartbeat_at if status == "crashed" else t)
        return {
            "run_id": row.run_id, "name": row.name, "group": row.group_name, "status": status,
            "stored_status": row.status, "tags": row.tags, "notes": row.notes,
            "created_at": iso(row.created_at), "started_at": iso(row.started_at), "ended_at": iso(row.ended_at),
            "heartbeat_at": iso(row.heartbeat_at), "heartbeat_seconds": row.heartbeat_seconds,
            "duration_s": None if row.started_at is None else round(end - row.started_at, 3),
            "error": row.error, "failing_rank": row.failing_rank, "exit_code": row.exit_code,
            "wandb_id": row.wandb_id, "summary": row.summary, "latest": latest,
            "metrics": {**latest, **row.summary},  # what sorting and comparing use: summary wins over latest
        }


def _nan_if_none(value: float | None) -> float:
    """History and latest values come back as floats; a NaN was stored as NULL."""
    return float("nan") if value is None else value
