"""Rank 0's recorder writes the metrics several callbacks log at one step as one record: one store transaction and one
W&B history row, flushed before anything that must come after them (a later step, an event, finish)."""
from __future__ import annotations

from sqlalchemy import event

from engine.config import load_config
from engine.recorder import Rank0Recorder
from launch_helpers import small_config, wandb_history
from launcher.planner import make_plan
from launcher.topology import detect_topology


def test_metrics_of_one_step_are_written_once_and_in_order(tmp_path, tiny_model_dir):
    loaded = load_config([str(small_config(tmp_path, tiny_model_dir, tracking={"wandb_mode": "offline"}))])
    plan = make_plan(loaded, detect_topology(), run_id="merge1", nproc_per_node=1)
    recorder = Rank0Recorder(plan, loaded.config, environment={})
    recorder.start()
    recorder.wandb.wait()                     # W&B starts in the background, then queues its run id for the store
    assert recorder.writer.drain(timeout=60)  # the run's creation and that id, on the writer thread
    commits: list[int] = []
    event.listen(recorder.tracker.store.engine, "commit", lambda conn: commits.append(1))

    recorder.log_metrics(10, {"train/loss": 2.5})           # RecorderCallback
    recorder.log_metrics(10, {"system/rss_bytes": 1e9})     # MemoryTracker
    recorder.log_metrics(10, {"perf/step_time_s": 0.1})     # Profiler
    assert commits == [], "nothing is written before the step's last callback"
    recorder.flush()                                        # RecorderFlush, last in the list
    assert recorder.writer.drain(timeout=60)                # written by the writer thread
    assert len(commits) == 1
    recorder.flush()
    assert recorder.writer.drain(timeout=60)
    assert len(commits) == 1, "an empty flush writes nothing"

    recorder.log_metrics(11, {"custom/ema": 1.0})
    recorder.log_event(12, "anomaly", {"kind": "loss_spike"})  # step 11 lands before the event
    recorder.log_metrics(13, {"train/loss": 2.0})
    recorder.finish("completed")                                # and step 13 before the run closes

    run = recorder.tracker.get_run("merge1")
    history = {h["step"]: h for h in run["history"]}
    assert history[10]["train/loss"] == 2.5 and history[10]["system/rss_bytes"] == 1e9
    assert history[10]["perf/step_time_s"] == 0.1
    assert history[11]["custom/ema"] == 1.0 and history[13]["train/loss"] == 2.0
    assert [e["kind"] for e in run["events"]] == ["anomaly"]
    assert run["status"] == "completed"

    [run_dir] = (tmp_path / "out" / "wandb").glob("offline-run-*")
    rows = wandb_history(run_dir)
    step10 = [r for r in rows if r["_step"] == 10]
    assert len(step10) == 1, "one W&B record for the three callbacks' metrics"
    assert {"train/loss", "system/rss_bytes", "perf/step_time_s"} <= set(step10[0])
    assert [r["_step"] for r in rows] == sorted(r["_step"] for r in rows)


def test_locked_sweep_store_delays_an_evaluation_by_at_most_the_prune_wait(tmp_path, monkeypatch):
    """Another connection holds the Optuna SQLite store (BEGIN EXCLUSIVE) for 8 s: each evaluation waits at most
    PRUNE_WAIT_S (2 s here) for the study instead of the whole lock, and both reports land once the lock is gone."""
    import sqlite3
    import threading
    import time

    import optuna
    from transformers import TrainerControl, TrainerState

    from engine.callbacks import pruning
    from engine.sweep_trial import open_storage

    monkeypatch.setattr(pruning, "PRUNE_WAIT_S", 2.0)
    db = tmp_path / "optuna.db"
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{db}"), direction="maximize")
    trial = study.ask()
    callback = pruning.SweepPruningCallback(pruning.TrialLink(f"sqlite:///{db}", "s", trial._trial_id, trial.number,
                                                              "rouge_combined_f1", "maximize", None))
    state, control = TrainerState(), TrainerControl()
    lock = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(8.0, lambda: (lock.execute("COMMIT"), lock.close()))
    release.start()
    try:
        waits = []
        for value in (0.3, 0.4):
            started = time.monotonic()
            callback.on_evaluate(None, state, control, metrics={"eval_rouge_combined_f1": value})
            waits.append(time.monotonic() - started)
        assert all(w < 4.0 for w in waits), waits
        assert not control.should_training_stop
        assert callback._writer.drain(timeout=120)
    finally:
        release.join()
    assert study.trials[trial.number].intermediate_values == {1: 0.3, 2: 0.4}


def test_failed_run_exits_within_the_ending_wait_while_the_store_is_locked(tmp_path, tiny_model_dir, monkeypatch):
    """Another process holds the SQLite store (BEGIN EXCLUSIVE) while rank 0 fails: finish("failed") returns after
    ENDING_WAIT_S (2 s here), not after the 60 s a completed run's writes may retry, so the failing rank leaves inside
    the launcher's grace; once the lock is gone the queued end still lands."""
    import sqlite3
    import time

    from engine import recorder as recorder_module

    monkeypatch.setattr(recorder_module, "WRITE_RETRY_S", 60.0)
    monkeypatch.setattr(recorder_module, "ENDING_WAIT_S", 2.0)
    loaded = load_config([str(small_config(tmp_path, tiny_model_dir))])
    plan = make_plan(loaded, detect_topology(), run_id="fails", nproc_per_node=1)
    recorder = Rank0Recorder(plan, loaded.config, environment={})
    recorder.start()
    assert recorder.writer.drain(timeout=60)
    lock = sqlite3.connect(tmp_path / "out" / "dialsum.db", isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        recorder.finish("failed", error="RuntimeError: boom", failing_rank=0, exit_code=1)
        took = time.monotonic() - started
    finally:
        lock.execute("COMMIT")
        lock.close()
    assert 2.0 <= took < 15, took
    assert recorder.writer.drain(timeout=60)
    assert recorder.tracker.get_run("fails")["status"] == "failed"
