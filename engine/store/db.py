"""The store's database: one SQLAlchemy Core schema on SQLite (default) or PostgreSQL, versioned by migrations.

Concurrency is the point of this file. Writers never fail because another process is writing:
- SQLite runs in WAL mode with a busy timeout, and every write transaction starts with `BEGIN IMMEDIATE`, so writers
  queue for the single write lock up front instead of failing when a read lock cannot be upgraded.
- PostgreSQL writers lock what they change (`SELECT ... FOR UPDATE`, advisory locks); serialization failures and
  deadlocks are retried.
Migrations run at open, in one transaction, under a lock, so eight processes opening a new store at once is safe.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
import weakref
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import (JSON, Boolean, Column, Connection, Engine, Float, ForeignKey, Integer, MetaData, String, Table,
                        Text, create_engine, event, select, text)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from engine.errors import UserError
from engine.redact import redact_text as display_uri

T = TypeVar("T")

BUSY_TIMEOUT_MS = 60_000
WRITE_ATTEMPTS = 20
PG_MIGRATION_LOCK = 0x6469616C73756D  # "dialsum": the advisory lock key that serializes migrations

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("id", Integer, primary_key=True),  # always 1: a single row
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

runs = Table(
    "runs", metadata,
    Column("run_id", String(128), primary_key=True),
    Column("name", String(256), nullable=False),
    Column("group_name", String(256), nullable=False, default=""),
    Column("status", String(16), nullable=False),
    Column("config", JSON, nullable=False),
    Column("plan", JSON),
    Column("environment", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("notes", Text, nullable=False, default=""),
    Column("summary", JSON, nullable=False),
    Column("heartbeat_seconds", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("heartbeat_at", Float),
    Column("ended_at", Float),
    Column("error", Text, nullable=False, default=""),
    Column("failing_rank", Integer),
    Column("exit_code", Integer),
    Column("wandb_id", String(128), nullable=False, default=""),
)

metrics = Table(  # step-indexed history; NaN is stored as NULL (SQLite cannot store NaN)
    "metrics", metadata,
    Column("run_id", String(128), ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("step", Integer, primary_key=True),
    Column("value", Float),
    Column("at", Float, nullable=False),
)

latest_metrics = Table(  # the value at each key's highest step, maintained on write so listing needs no scan
    "latest_metrics", metadata,
    Column("run_id", String(128), ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("step", Integer, nullable=False),
    Column("value", Float),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False, index=True),
    Column("step", Integer, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("data", JSON, nullable=False),
    Column("at", Float, nullable=False),
)

models = Table(  # one row per model name; `latest_version` is the counter that hands out gap-free versions
    "models", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(256), nullable=False, unique=True),
    Column("latest_version", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
)

model_versions = Table(
    "model_versions", metadata,
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("run_id", String(128), nullable=False),
    Column("checkpoint_dir", Text, nullable=False),
    Column("metrics", JSON, nullable=False),
    Column("metric", String(256), nullable=False),
    Column("metric_value", Float),
    Column("greater_is_better", Boolean, nullable=False),
    Column("metadata", JSON, nullable=False),
    Column("tags", JSON, nullable=False),
    Column("created_at", Float, nullable=False),
)

aliases = Table(
    "aliases", metadata,
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), primary_key=True),
    Column("alias", String(128), primary_key=True),
    Column("version", Integer, nullable=False),
)

alias_audit = Table(
    "alias_audit", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model_id", Integer, ForeignKey("models.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("alias", String(128), nullable=False),
    Column("from_version", Integer),
    Column("to_version", Integer),
    Column("reason", Text, nullable=False),
    Column("at", Float, nullable=False),
)


def _migration_1(conn: Connection) -> None:
    """Initial schema."""
    metadata.create_all(conn, tables=[runs, metrics, latest_metrics, events, models, model_versions, aliases,
                                      alias_audit])


# Ordered; MIGRATIONS[i] brings the schema from version i to i + 1. Append only, never edit a released one.
MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1]
SCHEMA_VERSION = len(MIGRATIONS)


def now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    """Stored times are UTC epoch seconds; readers get ISO-8601."""
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def finite_or_none(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def _json_default(obj):
    return str(obj)


def finite_json(obj):
    """JSON without NaN/Infinity tokens (PostgreSQL rejects them): non-finite floats become null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def dumps(obj) -> str:
    return json.dumps(finite_json(obj), default=_json_default, allow_nan=False)


def resolve_store_uri(uri: str = "", output_root: str = "outputs", env: dict[str, str] | None = None) -> str:
    """Explicit URI, else $DIALSUM_TRACKING_URI, else SQLite at <output_root>/dialsum.db."""
    env = os.environ if env is None else env
    if uri:
        return uri
    if env.get("DIALSUM_TRACKING_URI"):
        return env["DIALSUM_TRACKING_URI"]
    return f"sqlite:///{Path(output_root).resolve() / 'dialsum.db'}"


def store_uri(cfg) -> str:
    """The store of a run's config (a DialsumConfig): tracking.uri, already layered with DIALSUM_TRACKING_URI, else
    SQLite under the output root."""
    return resolve_store_uri(cfg.tracking.uri, cfg.experiment.output_root)


class Store:
    """An open store: the engine plus read/write transactions that behave the same on both backends."""

    def __init__(self, engine: Engine, uri: str):
        self.engine = engine
        self.uri = display_uri(uri)
        self.is_postgres = engine.dialect.name == "postgresql"
        self._write_engine = engine.execution_options(dialsum_write=True)
        # Closed by close(), when the store is dropped, or at exit (the entry points' exit_now runs this too). Engines
        # sit in reference cycles, so without it a dropped store's connection stayed open until a later collection;
        # SQLite folds its write-ahead log back into the database file when the last connection closes.
        self._dispose = weakref.finalize(self, engine.dispose)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot (SQLite WAL readers never wait for writers)."""
        with self.engine.begin() as conn:
            yield conn

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run `fn(conn)` in one write transaction, retried when the database reports a conflict.

        `fn` must be safe to re-run: it only touches the database through `conn`."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self._write_engine.begin() as conn:
                    return fn(conn)
            except DBAPIError as exc:
                if attempt == WRITE_ATTEMPTS - 1 or not self._retryable(exc):
                    raise
                time.sleep(min(1.0, 0.01 * 2 ** attempt) * random.random())
        raise AssertionError("unreachable")

    def _retryable(self, exc: DBAPIError) -> bool:
        if self.is_postgres:  # serialization_failure, deadlock_detected
            return getattr(exc.orig, "sqlstate", None) in ("40001", "40P01")
        message = str(exc.orig).lower()
        return "database is locked" in message or "database is busy" in message

    def insert(self, table: Table):
        """The dialect's INSERT, which offers ON CONFLICT (upserts) on both backends."""
        return (postgresql.insert if self.is_postgres else sqlite.insert)(table)

    def close(self) -> None:
        self._dispose()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sqlite_engine(url) -> Engine:
    engine = create_engine(url, json_serializer=dumps, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's implicit BEGIN is DEFERRED)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; still atomic per transaction in WAL
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("dialsum_write") else "BEGIN")

    return engine


def _migrate(store: Store) -> None:
    def run(conn: Connection) -> None:
        if store.is_postgres:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        metadata.create_all(conn, tables=[schema_version])
        current = conn.execute(select(schema_version.c.version).where(schema_version.c.id == 1)).scalar()
        if current is None:
            conn.execute(schema_version.insert().values(id=1, version=0, updated_at=now()))
            current = 0
        if current > SCHEMA_VERSION:
            raise UserError(f"store {store.uri} has schema version {current}, newer than this dialsum understands "
                            f"({SCHEMA_VERSION}); upgrade dialsum")
        for migration in MIGRATIONS[current:]:
            migration(conn)
        if current < SCHEMA_VERSION:
            conn.execute(schema_version.update().where(schema_version.c.id == 1)
                         .values(version=SCHEMA_VERSION, updated_at=now()))

    store.write(run)


def open_store(uri: str, *, create: bool = True) -> Store:
    """Open (and create or migrate) the store at a SQLAlchemy URL: `sqlite:///path` or `postgresql+psycopg://...`.

    `create=False` refuses to create a new SQLite file (for read-only commands such as `dialsum runs list`)."""
    try:
        url = make_url(uri)
    except ArgumentError:
        raise UserError(f"tracking store URI {display_uri(uri)!r} is not a SQLAlchemy URL "
                        "(expected sqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB)") from None
    if url.drivername == "postgresql":  # psycopg (3) is the driver we ship; psycopg2 is not a dependency
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise UserError(f"tracking store URI {uri!r} needs a file path (sqlite:///PATH); in-memory stores "
                            "cannot be shared between processes")
        path = Path(url.database)
        if not path.exists():
            if not create:
                raise UserError(f"no tracking store at {path} (pass --uri, --output-root or set DIALSUM_TRACKING_URI)")
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = _sqlite_engine(url)
    elif url.get_backend_name() == "postgresql":
        try:
            engine = create_engine(url, json_serializer=dumps, pool_pre_ping=True)
        except (NoSuchModuleError, ImportError):
            raise UserError(f"tracking store URI {display_uri(uri)!r}: driver {url.drivername} is not installed "
                            "(use postgresql+psycopg://)") from None
    else:
        raise UserError(f"tracking store URI {display_uri(uri)!r}: backend {url.get_backend_name()!r} is not "
                        "supported (expected sqlite or postgresql)")
    store = Store(engine, uri)
    try:
        _migrate(store)
    except DBAPIError as exc:
        store.close()
        raise UserError(f"cannot open tracking store {store.uri}: {display_uri(str(exc.orig)).strip()}") from None
    except BaseException:
        store.close()
        raise
    return store
