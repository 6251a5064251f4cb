"""The body of `dialsum sweep` (imported only when the command runs, so `dialsum --help` stays fast)."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna

from engine.config import load_config
from engine.errors import UserError
from launcher.sweep.agent import PARAMS, RETRY_OF, RUN_ID, SURPLUS, Agent, AgentSettings, sweep_dir
from engine.sweep_trial import is_url, open_storage
from launcher.sweep.optuna_backend import default_storage, make_sampler, suggest
from launcher.sweep.spec import SweepSpec, check_params, load_sweep, read_sweep_yaml


def _check_args(args: argparse.Namespace) -> None:
    for name in ("agents", "count", "nproc", "show"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name}: must be >= 1; got {value}")
    if args.heartbeat_seconds <= 0:
        raise UserError(f"--heartbeat-seconds: must be > 0; got {args.heartbeat_seconds}")


def dry_run(spec: SweepSpec, settings: AgentSettings, n: int) -> None:
    """Sample the first parameter sets in memory and check each against the full config."""
    from launcher.display import print_table

    study = optuna.create_study(direction=spec.goal, sampler=make_sampler(spec, settings.seed))
    rows = []
    for i in range(min(n, settings.count)):
        params = suggest(study.ask(), spec)
        check_params(spec, params, settings.configs, settings.overrides)
        rows.append([i, json.dumps(spec.config_params(params))])
    print_table(f"first {len(rows)} parameter sets as config keys (valid for the config)", ["#", "params"], rows)


def run_agents(settings: AgentSettings, agents: int, folder: Path) -> None:
    """One agent here, or `agents` agent processes (each its own process group, so one can die alone)."""
    if agents == 1:
        Agent(settings).run()
        return
    procs = []
    for i in range(agents):
        path = replace(settings, agent_index=i).save(folder / f"{os.getpid()}-{i}.json")
        procs.append(subprocess.Popen([sys.executable, "-m", "launcher.sweep.agent", str(path)],
                                      start_new_session=True))
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs:
            proc.wait()
        raise


def summarize(spec: SweepSpec, storage: str, base) -> bool:
    """Print the trials; promote `sweep-<name>` to the best trial's model version. True if any trial finished."""
    from engine.store import store_uri
    from engine.store import Registry, open_store
    from launcher.display import print_table

    study = optuna.load_study(study_name=spec.name, storage=open_storage(storage))
    trials = [t for t in study.get_trials(deepcopy=False) if SURPLUS not in t.user_attrs]
    rows = [[t.number, json.dumps(t.user_attrs.get(PARAMS, {})), t.value, t.state.name.lower(),
             t.user_attrs.get(RUN_ID, ""), f"retry of {t.user_attrs[RETRY_OF]}" if RETRY_OF in t.user_attrs else ""]
            for t in trials]
    print_table(f"sweep {spec.name}: {spec.goal} {spec.metric}", ["trial", "params", "value", "state", "run", "note"],
                rows)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        print(f"sweep {spec.name}: no trial completed")
        return any(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    best = study.best_trial
    print(f"best trial {best.number}: {spec.metric}={best.value:.4f} run {best.user_attrs.get(RUN_ID)} "
          f"params {json.dumps(best.user_attrs.get(PARAMS, {}))}")
    if base.tracking.register_model:
        store = open_store(store_uri(base))
        try:
            registry, name = Registry(store), base.registry_name()
            versions = [v for v in registry.list_versions(name) if v["run_id"] == best.user_attrs.get(RUN_ID)]
            if versions:
                alias = f"sweep-{spec.name}"
                registry.promote(name, versions[0]["version"], alias, reason=f"best trial {best.number} of {spec.name}")
                best_ref = registry.get(name, "best")["ref"]
                print(f"registry: {name}:{versions[0]['version']} is @{alias}; @best is {best_ref}")
        finally:
            store.close()
    return True


def run_sweep(args: argparse.Namespace) -> int:
    _check_args(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_sweep(args.sweep_file, args.configs, args.overrides, world=args.nproc)
    base = load_config(args.configs, args.overrides).config
    wandb_mode = os.environ.get("WANDB_MODE") or base.tracking.wandb_mode
    backend = args.backend or ("wandb" if wandb_mode == "online" else "local")
    storage = args.storage or default_storage(base.experiment.output_root, spec.name)
    if not is_url(storage):
        storage = str(Path(storage).resolve())
    count = spec.budget(args.count) if backend == "local" else (args.count or spec.run_cap or 0)
    settings = AgentSettings(sweep_file=str(args.sweep_file), configs=list(args.configs), storage=storage, count=count,
                             overrides=list(args.overrides), nproc=args.nproc, heartbeat_seconds=args.heartbeat_seconds,
                             seed=base.experiment.seed if args.seed is None else args.seed)
    hb = f", hyperband {spec.hyperband.kwargs()}" if spec.hyperband else ""
    print(f"sweep {spec.name}: {spec.method}, {spec.goal} {spec.metric}, {count or 'unlimited'} trials, "
          f"backend {backend}{' (storage ' + storage + ')' if backend == 'local' else ''}{hb}")
    for note in spec.notes:
        print(f"note: {note}")
    for note in spec.mapping_notes():
        print(f"parameter: {note}")
    if args.dry_run:
        dry_run(spec, settings, args.show)
        return 0
    if backend == "wandb":
        if wandb_mode != "online":
            raise UserError("--backend wandb: W&B sweeps need WANDB_MODE=online (use --backend local offline)")
        if args.agents != 1:
            raise UserError("--backend wandb: one agent per process; start more with --sweep-id on this or other machines")
        from launcher.sweep.wandb_backend import run_wandb_agent

        run_wandb_agent(spec, read_sweep_yaml(args.sweep_file), settings, base, args.sweep_id, args.count)
        return 0
    run_agents(settings, args.agents, sweep_dir(base.experiment.output_root, spec.name) / "agents")
    return 0 if summarize(spec, storage, base) else 1
