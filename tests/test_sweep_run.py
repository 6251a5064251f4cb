"""Local sweeps for real: the pruning callback against an Optuna study (one process, and two gloo ranks that must
agree), dead-trial retry on the journal storage, and (slow) `dialsum sweep` with 2 agents training the tiny model,
plus an agent SIGKILLed mid-trial whose sweep a new agent finishes."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
import torch.multiprocessing as mp
import yaml
from optuna.trial import TrialState
from transformers import TrainerControl, TrainerState

from engine.store import Registry, Tracker, open_store
from launch_helpers import kill_tree, run_processes
from launcher.sweep.agent import HEARTBEAT, PARAMS, RETRY_OF, RUN_ID, retry_stale_trials
from engine.callbacks.pruning import sweep_callbacks
from engine.sweep_trial import PRUNED_ATTR, TrialLink, make_pruner, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
HYPERBAND = {"min_resource": 1, "max_resource": 4, "reduction_factor": 2}


def study_with_strong_trials(path: Path) -> optuna.Study:
    """12 finished trials that scored ~0.9 at every evaluation (each asked the pruner, as real trials do)."""
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)), direction="maximize",
                                pruner=make_pruner(HYPERBAND))
    for i in range(12):
        trial = study.ask()
        for step in range(1, 5):
            trial.report(0.9 + 0.001 * i, step)
            trial.should_prune()
        study.tell(trial, 0.9)
    return study


def evaluate_until_stopped(rank: int, link: TrialLink, evaluations: int = 4) -> int:
    (callback,) = sweep_callbacks(vars(link))  # what the ranks get from plan.sweep_trial
    state, control = TrainerState(), TrainerControl()
    state.is_world_process_zero = rank == 0
    for n in range(1, evaluations + 1):
        metrics = {"eval_rouge_combined_f1": 0.1} if rank == 0 else {}  # only rank 0's view counts
        callback.on_evaluate(None, state, control, metrics=metrics)
        if control.should_training_stop:
            return n
    return 0


def test_no_callback_outside_a_sweep():
    assert sweep_callbacks(None) == []


def test_weak_trial_is_reported_and_pruned(tmp_path):
    path = tmp_path / "journal.log"
    study = study_with_strong_trials(path)
    stops = []
    for _ in range(4):
        trial = study.ask()
        stopped_at = evaluate_until_stopped(0, TrialLink(str(path), "s", trial._trial_id, trial.number,
                                                         "rouge_combined_f1", "maximize", HYPERBAND))
        frozen = study.trials[trial.number]
        assert frozen.intermediate_values == {n: 0.1 for n in range(1, stopped_at + 1)}
        assert frozen.user_attrs.get(PRUNED_ATTR) == stopped_at
        stops.append(stopped_at)
    assert all(stops) and min(stops) == 1  # some bracket prunes at the first evaluation
    # without early_terminate the callback reports but never stops training
    trial = study.ask()
    link = TrialLink(str(path), "s", trial._trial_id, trial.number, "rouge_combined_f1", "maximize", None)
    assert evaluate_until_stopped(0, link) == 0 and len(study.trials[trial.number].intermediate_values) == 4


def _rank_worker(rank: int, port: int, link: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    try:
        Path(out, f"{rank}.json").write_text(json.dumps(evaluate_until_stopped(rank, TrialLink.from_json(link))))
    finally:
        torch.distributed.destroy_process_group()


def test_prune_decision_reaches_every_rank(tmp_path):
    path = tmp_path / "journal.log"
    study = study_with_strong_trials(path)
    for _ in range(8):  # find a trial whose bracket prunes at the first evaluation, so rank 1 must follow early
        trial = study.ask()
        link = TrialLink(str(path), "s", trial._trial_id, trial.number, "rouge_combined_f1", "maximize", HYPERBAND)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_rank_worker, args=(port, link.to_json(), str(tmp_path)), nprocs=2, start_method="spawn")
        stops = [json.loads((tmp_path / f"{r}.json").read_text()) for r in (0, 1)]
        assert stops[0] == stops[1] and stops[0] == study.trials[trial.number].user_attrs.get(PRUNED_ATTR)
        if stops[0] == 1:
            return
    pytest.fail("no trial was pruned at its first evaluation")


@pytest.mark.parametrize("storage", ["journal", "sqlite"])
def test_dead_trial_is_failed_once_and_requeued_with_its_params(tmp_path, storage):
    url = str(tmp_path / "j.log") if storage == "journal" else f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    dead, alive = study.ask(), study.ask()
    dead.suggest_float("training.learning_rate", 1e-5, 1e-3, log=True)
    dead.suggest_categorical("training.warmup_ratio", [0.0, 0.1])
    dead.set_user_attr(HEARTBEAT, time.time() - 10)
    alive.set_user_attr(HEARTBEAT, time.time())
    assert retry_stale_trials(study, heartbeat_seconds=1) == [dead.number]
    assert retry_stale_trials(study, heartbeat_seconds=1) == []  # failed once, queued once
    trials = study.get_trials()
    assert trials[dead.number].state == TrialState.FAIL and trials[alive.number].state == TrialState.RUNNING
    (queued,) = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.user_attrs[RETRY_OF] == dead.number
    retry = study.ask()
    assert retry.number == queued.number
    assert retry.suggest_float("training.learning_rate", 1e-5, 1e-3, log=True) == dead.params["training.learning_rate"]
    assert retry.suggest_categorical("training.warmup_ratio", [0.0, 0.1]) == dead.params["training.warmup_ratio"]


# ---------------------------------------------------------------------------------------------------- end to end

@pytest.fixture
def sweep_files(tmp_path, tiny_model_dir, mini_data) -> tuple[Path, Path]:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "experiment": {"name": "swp", "output_root": str(tmp_path / "out")},
        "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"train_file": str(mini_data["train_csv"]), "eval_file": str(mini_data["dev_csv"]),
                 "max_source_length": 64, "max_target_length": 16, "max_train_samples": 16, "max_eval_samples": 4},
        "training": {"max_steps": 4, "eval_steps": 2, "logging_steps": 2, "global_batch_size": 4},
        "generation": {"num_beams": 1, "max_new_tokens": 8, "early_stopping": False},
        "parallel": {"deepspeed": False},
        "tracking": {"heartbeat_seconds": 1.0},
    }))
    sweep = tmp_path / "lr.yaml"
    sweep.write_text(
        "method: random\nmetric: {name: eval/rouge_combined_f1, goal: maximize}\n"
        "parameters:\n  training:\n    parameters:\n"
        "      learning_rate: {distribution: log_uniform_values, min: 1e-4, max: 3e-3}\n"
        "      warmup_ratio: {values: [0.0, 0.25], probabilities: [0.5, 0.5]}\n"
        "early_terminate: {type: hyperband, min_iter: 1, eta: 2}\n")
    return base, sweep


def _sweep_cmd(base: Path, sweep: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launcher.cli", "sweep", str(sweep), "--config", str(base), "--nproc", "1", *extra]


def _finished_trials(tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="lr", storage=open_storage(str(tmp_path / "out/sweeps/lr/journal.log")))
    return study.get_trials()


def _check_trial_runs(trials, tracker: Tracker) -> None:
    """Every finished trial is a completed tracked run in the sweep's group with its sampled values in its config."""
    for t in trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED), (t.number, t.state, t.user_attrs)
        run = tracker.get_run(t.user_attrs[RUN_ID])
        assert run["status"] == "completed" and run["group"] == "lr" and run["name"] == f"lr-trial-{t.number}"
        params = t.user_attrs[PARAMS]
        assert run["config"]["training"]["learning_rate"] == pytest.approx(params["training.learning_rate"])
        assert run["config"]["training"]["warmup_ratio"] == params["training.warmup_ratio"]
        assert ("pruned" in [e["kind"] for e in run["events"]]) == (t.state == TrialState.PRUNED)


@pytest.mark.slow
def test_two_agents_run_the_count_as_tracked_runs(tmp_path, sweep_files):
    base, sweep = sweep_files
    [done] = run_processes([_sweep_cmd(base, sweep, "--agents", "2", "--count", "4")], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = _finished_trials(tmp_path)
    assert len(trials) == 4
    assert {"[sweep agent 0]", "[sweep agent 1]"} <= {line[:15] for line in done.stdout.splitlines()}
    store = open_store(f"sqlite:///{tmp_path / 'out/dialsum.db'}")
    _check_trial_runs(trials, Tracker(store))
    assert len(Tracker(store).list_runs(group="lr")) == 4
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        promoted = Registry(store).get("swp", "sweep-lr")
        assert promoted["run_id"] in {t.user_attrs[RUN_ID] for t in complete if t.value == best.value}
        assert "best trial" in done.stdout and "is @sweep-lr" in done.stdout


@pytest.mark.slow
def test_killed_agent_does_not_lose_the_sweep(tmp_path, sweep_files):
    base, sweep = sweep_files
    store = open_store(f"sqlite:///{tmp_path / 'out/dialsum.db'}")
    tracker = Tracker(store)
    cmd = _sweep_cmd(base, sweep, "--count", "2", "--heartbeat-seconds", "1")
    agent = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        killed_run = None
        deadline = time.time() + 240
        while killed_run is None and time.time() < deadline:  # wait until trial 0 is training (its run is running)
            time.sleep(0.5)
            journal = tmp_path / "out/sweeps/lr/journal.log"
            if journal.exists() and (tmp_path / "out/dialsum.db").exists():
                trials = _finished_trials(tmp_path)
                run_id = trials[0].user_attrs.get(RUN_ID) if trials else None
                if run_id and tracker.exists(run_id) and tracker.get_run(run_id)["status"] == "running":
                    killed_run = run_id
        assert killed_run, "trial 0 never started training"
    finally:
        kill_tree(agent)  # with its launcher and the trial's ranks, as a machine or job loss would

    [done] = run_processes([cmd], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trial 0 lost its agent; queued again" in done.stdout
    trials = _finished_trials(tmp_path)
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs[RUN_ID] == killed_run
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF) == 0]
    assert len(retries) == 1 and retries[0].params == trials[0].params
    finished = [t for t in trials if t.number != 0]
    assert len(finished) == 2  # the count is met: one new trial and the retry
    _check_trial_runs(finished, tracker)
    assert tracker.get_run(killed_run)["status"] == "crashed"  # no heartbeat from the killed rank 0


SEED_SWEEP_FUNCTION = """
import json, sys
import wandb
from engine.trainer import create_trainer

config_path, wandb_dir = sys.argv[1], sys.argv[2]
# what wandb.agent hands the function: flat HF names and a nested dialsum section
run = wandb.init(project="seed-sweep", dir=wandb_dir, mode="offline",
                 config={"learning_rate": 2e-3, "num_beams": 2, "generation_max_length": 9,
                         "training": {"max_steps": 4}})
trainer = create_trainer(config_path, sweep_mode=True)
datasets = trainer.prepare_data()
result = trainer.train(datasets)
still_open = wandb.run is not None and wandb.run.id == run.id
wandb.log(result.best_metrics)  # the seed's own sweep function does this after train()
run.finish()
print("RESULT " + json.dumps({"wandb_id": run.id, "run_id": result.run_id, "best": result.best_metrics,
                              "cfg": [trainer.cfg.training.learning_rate, trainer.cfg.generation.num_beams,
                                      trainer.cfg.generation.max_new_tokens, trainer.cfg.training.max_steps],
                              "still_open": still_open}))
"""


def test_seed_sweep_api_reads_wandb_config_and_logs_into_the_same_run(tmp_path, tiny_model_dir):
    """create_trainer(cfg, sweep_mode=True) under an active offline W&B run: its config (flat HF names, nested keys)
    is the sweep layer, the engine logs into that run (no second one), and best_metrics has the ROUGE keys."""
    from launch_helpers import small_config, wandb_history

    config = small_config(tmp_path, tiny_model_dir, parallel={"deepspeed": False, "zero_stage": None},
                          training={"eval_steps": 2, "logging_steps": 1},
                          data={"max_train_samples": 16, "max_eval_samples": 4})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a plain process as a world of one (RANK etc. set so DeepSpeed/accelerate never try MPI discovery)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WANDB_MODE": "offline"}
    env.pop("DIALSUM_RUN_ID", None)
    proc = subprocess.Popen([sys.executable, "-c", SEED_SWEEP_FUNCTION, str(config), str(tmp_path / "user")],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=400)
    finally:
        kill_tree(proc)
    assert proc.returncode == 0, out[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    assert result["cfg"] == [2e-3, 2, 8, 4]  # generation_max_length 9 counts the decoder start token
    assert result["run_id"] == result["wandb_id"] and result["still_open"]
    assert {"rouge1_f1", "rouge2_f1", "rougeL_f1", "rouge_combined_f1"} <= set(result["best"])
    runs = list(tmp_path.rglob("offline-run-*"))
    assert len(runs) == 1 and runs[0].parent == tmp_path / "user" / "wandb", runs  # no second W&B run
    history = wandb_history(runs[0])
    assert any("eval/rouge_combined_f1" in h for h in history) and any("train/loss" in h for h in history)
    assert any("rouge_combined_f1" in h for h in history)  # the function's own wandb.log after train()
    store = open_store(f"sqlite:///{tmp_path / 'out' / 'dialsum.db'}")
    try:
        run = Tracker(store).get_run(result["run_id"])
        assert run["status"] == "completed" and run["config"]["training"]["learning_rate"] == 2e-3
    finally:
        store.close()
