"""Model registry: gap-free versions per model name, aliases with compare-and-set `best`, and an alias audit trail.

Every registration runs in one transaction that first locks the model's counter row (`SELECT ... FOR UPDATE` on
PostgreSQL; SQLite's `BEGIN IMMEDIATE` already holds the database's write lock), so concurrent writers get 1, 2, 3...
and `best` moves only when the new version beats the version `best` points at *inside the same transaction* —
unlike last-writer-wins aliases, racing registrations cannot leave `best` on a worse model.
"""
from __future__ import annotations

import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, func, select

from engine.best import is_better
from engine.errors import UserError
from engine.store.db import Store, alias_audit, aliases, finite_or_none, iso, model_versions, models, now
from engine.redact import redact

BEST, LATEST = "best", "latest"
RESERVED_ALIASES = (BEST, LATEST)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]*$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")

Ref = int | str  # a version number, 'latest', or an alias


def parse_model_ref(text: str) -> tuple[str, Ref]:
    """CLI syntax: `NAME` (latest), `NAME:3` (version 3), `NAME@best` (an alias)."""
    if "@" in text:
        name, ref = text.split("@", 1)
    elif ":" in text:
        name, ref = text.split(":", 1)
        if not ref.isdigit():
            raise UserError(f"model reference {text!r}: expected NAME:VERSION with a version number")
        ref = int(ref)
    else:
        name, ref = text, LATEST
    if not name or not _NAME.match(name) or ref == "":
        raise UserError(f"model reference {text!r}: expected NAME, NAME:VERSION or NAME@ALIAS")
    return name, ref


class Registry:
    def __init__(self, store: Store):
        self.store = store

    # ----- writes -----
    def register(self, name: str, *, run_id: str, checkpoint_dir: str | Path, metrics: dict[str, float], metric: str,
                 greater_is_better: bool, metadata: dict[str, Any], tags: list[str] | tuple[str, ...] = ()) -> int:
        """Add the next version of `name` and move `best` to it if its `metric` beats the current best. Returns it."""
        if not _NAME.match(name):
            raise UserError(f"model name {name!r}: use letters, digits, '_', '-', '.', '/' (no ':' or '@')")
        value = finite_or_none(metrics.get(metric))
        checkpoint_dir = str(Path(checkpoint_dir).resolve())

        def write(conn: Connection) -> int:
            conn.execute(self.store.insert(models).values(name=name, latest_version=0, created_at=now())
                         .on_conflict_do_nothing(index_elements=[models.c.name]))
            model = conn.execute(select(models.c.id, models.c.latest_version).where(models.c.name == name)
                                 .with_for_update()).one()
            version = model.latest_version + 1
            conn.execute(models.update().where(models.c.id == model.id).values(latest_version=version))
            conn.execute(model_versions.insert().values(
                model_id=model.id, version=version, run_id=run_id, checkpoint_dir=checkpoint_dir, metrics=metrics,
                metric=metric, metric_value=value, greater_is_better=greater_is_better, metadata=redact(metadata),
                tags=list(tags), created_at=now()))
            best = self._alias_target(conn, model.id, BEST)
            best_value = None if best is None else conn.execute(
                select(model_versions.c.metric_value)
                .where(model_versions.c.model_id == model.id, model_versions.c.version == best)).scalar()
            if is_better(value, best_value, greater_is_better):
                self._move_alias(conn, model.id, BEST, version,
                                 f"registered: {metric}={value:.6g} beats " +
                                 ("no previous best" if best is None else f"v{best} ({best_value})"))
            return version

        return self.store.write(write)

    def promote(self, name: str, version: int, alias: str, *, reason: str = "") -> None:
        """Point `alias` (e.g. `production`) at `version`. `best` and `latest` are managed by the registry."""
        if alias in RESERVED_ALIASES:
            raise UserError(f"alias {alias!r} is managed by the registry and cannot be set by hand")
        if not _ALIAS.match(alias):
            raise UserError(f"alias {alias!r}: start with a letter; use letters, digits, '_', '-', '.'")

        def write(conn: Connection) -> None:
            model_id = self._model_id(conn, name)
            self._version_row(conn, model_id, name, version)
            self._move_alias(conn, model_id, alias, version, reason or "promoted")

        self.store.write(write)

    def delete(self, name: str, version: int) -> None:
        """Remove a version's rows and its checkpoint directory together.

        The directory is renamed aside first (so a failed transaction can put it back), removed after commit.
        Aliases on the version are dropped; `best` falls back to the best remaining version."""
        with self.store.read() as conn:
            row = self._version_row(conn, self._model_id(conn, name), name, version)
        directory = Path(row.checkpoint_dir)
        aside = directory.with_name(f".{directory.name}.deleting-{uuid.uuid4().hex[:8]}")
        moved = directory.exists()
        if moved:
            directory.rename(aside)

        def write(conn: Connection) -> None:
            model_id = self._model_id(conn, name)
            conn.execute(select(models.c.id).where(models.c.id == model_id).with_for_update())
            self._version_row(conn, model_id, name, version)
            conn.execute(model_versions.delete()
                         .where(model_versions.c.model_id == model_id, model_versions.c.version == version))
            for (alias,) in conn.execute(select(aliases.c.alias).where(
                    aliases.c.model_id == model_id, aliases.c.version == version)).all():
                replacement = self._best_version(conn, model_id) if alias == BEST else None
                self._move_alias(conn, model_id, alias, replacement, f"v{version} deleted")

        try:
            self.store.write(write)
        except BaseException:
            if moved:
                aside.rename(directory)
            raise
        if moved:
            shutil.rmtree(aside, ignore_errors=True)

    # ----- reads -----
    def get(self, name: str, ref: Ref = LATEST) -> dict[str, Any]:
        """One version by number, `latest`, or alias."""
        with self.store.read() as conn:
            model_id = self._model_id(conn, name)
            version = self._resolve(conn, model_id, name, ref)
            row = self._version_row(conn, model_id, name, version)
            names = self._aliases(conn, model_id)
        return self._describe(name, row, names)

    def list_models(self) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            counts = dict(conn.execute(select(model_versions.c.model_id, func.count())
                                       .group_by(model_versions.c.model_id)).all())
            out = []
            for m in conn.execute(select(models).order_by(models.c.name)).all():
                alias_map = {a: v for v, names in self._aliases(conn, m.id).items() for a in names}
                best = alias_map.get(BEST)
                best_row = None if best is None else self._version_row(conn, m.id, m.name, best)
                out.append({"name": m.name, "versions": counts.get(m.id, 0), "latest_version": m.latest_version,
                            "aliases": dict(sorted(alias_map.items())), "created_at": iso(m.created_at),
                            "metric": None if best_row is None else best_row.metric,
                            "best_value": None if best_row is None else best_row.metric_value})
        return out

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        with self.store.read() as conn:
            model_id = self._model_id(conn, name)
            names = self._aliases(conn, model_id)
            rows = conn.execute(select(model_versions).where(model_versions.c.model_id == model_id)
                                .order_by(model_versions.c.version)).all()
        return [self._describe(name, r, names) for r in rows]

    def search(self, metric: str | None = None, min_value: float | None = None, tag: str | None = None,
               architecture: str | None = None) -> list[dict[str, Any]]:
        """Versions across all models matching every filter given; with `metric`, best first by that metric."""
        if min_value is not None and metric is None:
            raise UserError("search: --min needs --metric")
        with self.store.read() as conn:
            model_names = dict(conn.execute(select(models.c.id, models.c.name)).all())
            alias_names = {mid: self._aliases(conn, mid) for mid in model_names}
            rows = conn.execute(select(model_versions)
                                .order_by(model_versions.c.model_id, model_versions.c.version)).all()
        out = []
        for r in rows:
            value = r.metrics.get(metric) if metric else None
            if metric and value is None:
                continue
            if min_value is not None and value < min_value:
                continue
            if tag is not None and tag not in r.tags:
                continue
            if architecture is not None and architecture.lower() not in str(r.metadata.get("architecture", "")).lower():
                continue
            out.append(self._describe(model_names[r.model_id], r, alias_names[r.model_id]))
        if metric:
            out.sort(key=lambda d: -d["metrics"][metric])
        return out

    def compare(self, name: str, v1: Ref, v2: Ref) -> dict[str, Any]:
        """Two versions: metrics side by side with the difference (b - a), and metadata keys that differ."""
        a, b = self.get(name, v1), self.get(name, v2)
        metric_keys = sorted(set(a["metrics"]) | set(b["metrics"]))
        metrics_ = {}
        for k in metric_keys:
            x, y = a["metrics"].get(k), b["metrics"].get(k)
            numeric = isinstance(x, (int, float)) and isinstance(y, (int, float))
            metrics_[k] = {"a": x, "b": y, "delta": (y - x) if numeric else None}
        meta_keys = sorted(set(a["metadata"]) | set(b["metadata"]))
        return {"name": name, "a": a, "b": b, "metrics": metrics_,
                "metadata": {k: {"a": a["metadata"].get(k), "b": b["metadata"].get(k)} for k in meta_keys
                             if a["metadata"].get(k) != b["metadata"].get(k)}}

    def audit(self, name: str) -> list[dict[str, Any]]:
        """Every alias move of a model, oldest first."""
        with self.store.read() as conn:
            model_id = self._model_id(conn, name)
            rows = conn.execute(select(alias_audit).where(alias_audit.c.model_id == model_id)
                                .order_by(alias_audit.c.id)).all()
        return [{"alias": r.alias, "from_version": r.from_version, "to_version": r.to_version, "reason": r.reason,
                 "at": iso(r.at)} for r in rows]

    # ----- helpers -----
    def _model_id(self, conn: Connection, name: str) -> int:
        model_id = conn.execute(select(models.c.id).where(models.c.name == name)).scalar()
        if model_id is None:
            raise UserError(f"no model {name!r} in {self.store.uri}")
        return model_id

    def _version_row(self, conn: Connection, model_id: int, name: str, version: int):
        row = conn.execute(select(model_versions).where(model_versions.c.model_id == model_id,
                                                        model_versions.c.version == version)).first()
        if row is None:
            have = conn.execute(select(model_versions.c.version).where(model_versions.c.model_id == model_id)
                                .order_by(model_versions.c.version)).scalars().all()
            raise UserError(f"model {name!r} has no version {version} (versions: "
                            f"{', '.join(map(str, have)) or 'none'})")
        return row

    def _resolve(self, conn: Connection, model_id: int, name: str, ref: Ref) -> int:
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            return int(ref)
        if ref == LATEST:
            version = conn.execute(select(func.max(model_versions.c.version))
                                   .where(model_versions.c.model_id == model_id)).scalar()
        else:
            version = self._alias_target(conn, model_id, ref)
        if version is None:
            raise UserError(f"model {name!r} has no version at {ref!r}")
        return version

    @staticmethod
    def _alias_target(conn: Connection, model_id: int, alias: str) -> int | None:
        return conn.execute(select(aliases.c.version)
                            .where(aliases.c.model_id == model_id, aliases.c.alias == alias)).scalar()

    @staticmethod
    def _aliases(conn: Connection, model_id: int) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for alias, version in conn.execute(select(aliases.c.alias, aliases.c.version)
                                           .where(aliases.c.model_id == model_id).order_by(aliases.c.alias)):
            out.setdefault(version, []).append(alias)
        return out

    @staticmethod
    def _best_version(conn: Connection, model_id: int) -> int | None:
        rows = conn.execute(select(model_versions.c.version, model_versions.c.metric_value,
                                   model_versions.c.greater_is_better)
                            .where(model_versions.c.model_id == model_id).order_by(model_versions.c.version)).all()
        best = None
        for r in rows:
            if is_better(r.metric_value, None if best is None else best.metric_value, r.greater_is_better):
                best = r
        return None if best is None else best.version

    def _move_alias(self, conn: Connection, model_id: int, alias: str, version: int | None, reason: str) -> None:
        """Point (or, with None, drop) an alias and write the audit row, in the caller's transaction."""
        previous = self._alias_target(conn, model_id, alias)
        if previous == version:
            return
        if version is None:
            conn.execute(aliases.delete().where(aliases.c.model_id == model_id, aliases.c.alias == alias))
        else:
            upsert = self.store.insert(aliases).values(model_id=model_id, alias=alias, version=version)
            conn.execute(upsert.on_conflict_do_update(index_elements=[aliases.c.model_id, aliases.c.alias],
                                                      set_={"version": version}))
        conn.execute(alias_audit.insert().values(model_id=model_id, alias=alias, from_version=previous,
                                                 to_version=version, reason=reason, at=now()))

    @staticmethod
    def _describe(name: str, row, alias_names: dict[int, list[str]]) -> dict[str, Any]:
        return {"name": name, "version": row.version, "ref": f"{name}:{row.version}", "run_id": row.run_id,
                "checkpoint_dir": row.checkpoint_dir, "metric": row.metric, "metric_value": row.metric_value,
                "greater_is_better": row.greater_is_better, "metrics": row.metrics, "metadata": row.metadata,
                "tags": row.tags, "aliases": alias_names.get(row.version, []), "created_at": iso(row.created_at)}
