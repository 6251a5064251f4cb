"""Many processes at once: opening (migrating) a new store and registering versions of one model.

8 spawned processes x 50 registrations each must yield versions 1..400 with no gap and no duplicate, and `best` must
end on the truly best metric (compare-and-set inside the registering transaction, not last-writer-wins).
"""
from __future__ import annotations

import multiprocessing as mp
import queue
import random
import time

import pytest

from engine.store import Registry, Tracker, open_store

PROCESSES, PER_PROCESS = 8, 50


pytest_plugins = ["pg"]  # the PostgreSQL fixtures (tests/pg.py), one server per session


def _worker(uri: str, worker: int, barrier, results) -> None:
    barrier.wait()  # every process opens the (new) store at the same moment
    store = open_store(uri)
    registry, tracker = Registry(store), Tracker(store)
    rng = random.Random(worker)
    run_id = f"worker-{worker}"
    tracker.create_run(run_id, name="w", config={}, plan=None, environment={})
    out = []
    for i in range(PER_PROCESS):
        rouge = rng.random()
        version = registry.register("kobart", run_id=run_id, checkpoint_dir=f"/ckpt/{worker}/{i}",
                                    metrics={"rouge": rouge}, metric="rouge", greater_is_better=True, metadata={})
        tracker.log_metrics(run_id, i, {"rouge": rouge})
        out.append((version, rouge))
    store.close()
    results.put(out)


def _hammer(uri: str) -> None:
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(uri, w, barrier, results)) for w in range(PROCESSES)]
    for p in procs:
        p.start()
    registered, deadline = [], time.monotonic() + 120
    for _ in procs:
        while True:  # fail fast when a worker dies instead of waiting out the queue
            try:
                registered += results.get(timeout=1)
                break
            except queue.Empty:
                assert not [p.exitcode for p in procs if p.exitcode not in (None, 0)], "a worker failed"
                assert time.monotonic() < deadline, "workers did not finish in 120 s"
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    versions = sorted(v for v, _ in registered)
    assert versions == list(range(1, PROCESSES * PER_PROCESS + 1))
    metric_of = dict(registered)
    store = open_store(uri)
    registry = Registry(store)
    stored = {v["version"]: v["metrics"]["rouge"] for v in registry.list_versions("kobart")}
    assert stored == metric_of
    best = registry.get("kobart", "best")
    assert best["metric_value"] == max(metric_of.values())
    chain = [a["to_version"] for a in registry.audit("kobart") if a["alias"] == "best"]
    assert chain[-1] == best["version"]
    assert all(metric_of[a] < metric_of[b] for a, b in zip(chain, chain[1:]))  # every move was an improvement
    assert len(Tracker(store).get_run("worker-0")["history"]) == PER_PROCESS
    store.close()


def test_concurrent_registration_sqlite(tmp_path):
    _hammer(f"sqlite:///{tmp_path / 'new' / 'dialsum.db'}")


@pytest.mark.postgres
def test_concurrent_registration_postgres(postgres_url):
    _hammer(postgres_url)
