"""`dialsum launch`: validate config and data, plan for this hardware, spawn the DeepSpeed ranks, return their code."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine.config import add_config_arguments, load_config
from engine.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("launch", help="plan for this hardware and train on DeepSpeed ranks")
    add_config_arguments(parser)
    parser.add_argument("--nproc", type=int, default=None, help="rank processes on this node (default: planned)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes in the job")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (multi-node)")
    parser.add_argument("--master-addr", default=None, help="rendezvous host (multi-node)")
    parser.add_argument("--master-port", type=int, default=29500, help="rendezvous port (multi-node)")
    parser.add_argument("--rdzv-timeout", type=int, default=600, metavar="S",
                        help="multi-node: seconds a node waits for the others to join before it exits non-zero")
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="torch elastic restarts of the worker group (each resumes from the last checkpoint)")
    parser.add_argument("--run-id", dest="run_id", default=None, metavar="RUN_ID",
                        help="use this run id (default: DIALSUM_RUN_ID, else new); a run with a complete checkpoint "
                             "resumes from it, at any rank count (the planner keeps the global batch)")
    parser.add_argument("--resume", dest="run_id", help=argparse.SUPPRESS)  # deprecated spelling of --run-id
    parser.add_argument("--topology-file", default=None, help="plan for a described topology instead of this machine")
    parser.add_argument("--sweep-params", default=None, metavar="FILE.json",
                        help="sweep parameters (dotted keys), applied above files and environment, below --set")
    parser.add_argument("--sweep-trial", default=None, metavar="JSON",
                        help="the local sweep trial this run reports its evaluations to (set by `dialsum sweep`)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    parser.add_argument("--verbose", action="store_true",
                        help="every rank prints to the console (default: rank 0; the others write runs/<id>/logs/)")
    parser.set_defaults(func=run)


def check_data(cfg) -> None:
    """Read every configured split once so bad data fails here, before any rank starts or any run is recorded."""
    from engine.data import read_dialogues

    d = cfg.data
    read_dialogues(d.train_file, require_summary=True, limit=d.max_train_samples, key="data.train_file")
    read_dialogues(d.eval_file, require_summary=True, limit=d.max_eval_samples, key="data.eval_file")
    if d.test_file:
        read_dialogues(d.test_file, require_summary=False, key="data.test_file")


def audit_rows(cfg, task_name: str) -> None:
    """A task that audits its encoded rows (the causal task: masks, ends, prompts) does so here, before any rank
    starts; the token cache it fills is what the ranks then read."""
    from engine.tasks import get_task

    task = get_task(task_name)
    if task.audits_before_launch:
        from engine.datasets import prepare_datasets

        task.audit(cfg, *prepare_datasets(cfg, task))


def check_model(cfg) -> None:
    """The model must be readable before any rank starts: a missing directory, a config.json that is not JSON or a hub
    id that cannot be resolved is a one-line error here, not a rank's traceback after the run folder exists."""
    from engine.modeling import check_model_source
    from launcher.memory_estimate import model_spec

    name = cfg.model.name_or_path
    source = check_model_source(name, "model.name_or_path")
    if cfg.model.tokenizer:
        check_model_source(cfg.model.tokenizer, "model.tokenizer")
    try:
        model_spec(source)
    except (OSError, ValueError, KeyError) as exc:
        what = "config.json (a Hugging Face model config)" if Path(source).is_dir() else "a hub id in the local cache"
        reason = " ".join(str(exc).split())
        raise UserError(f"model.name_or_path: cannot read {name!r} as {what}: "
                        f"{reason if len(reason) <= 200 else reason[:197] + '...'}") from None


def read_sweep_params(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        params = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read sweep parameters as JSON ({exc})") from None
    if not isinstance(params, dict):
        raise UserError(f"{path}: sweep parameters must be a JSON object of dotted keys")
    return params


def oom_restart_plan(plan, outcome, topology, args, env):
    """The plan to restart with after a ZeRO-3 forward ran out of memory (engine/oom.py): half the micro-batch, same
    global batch, same run (it resumes from its last checkpoint); None when this outcome is not that or at 1 row."""
    from engine.config import load_config
    from engine.plan import OOM_RESTART_EXIT_CODE
    from launcher.planner import make_plan

    if outcome.exit_code != OOM_RESTART_EXIT_CODE or plan.micro_batch_size <= 1 or args.nnodes > 1:
        return None
    overrides = [*args.overrides, f"parallel.micro_batch_size={plan.micro_batch_size // 2}"]
    smaller = load_config([*args.config, *args.extra_configs], overrides=overrides, env=env,
                          sweep_params=read_sweep_params(args.sweep_params))
    return make_plan(smaller, topology, env=env, run_id=plan.run_id, nnodes=args.nnodes, nproc_per_node=args.nproc,
                     sweep_trial=plan.sweep_trial, preempt_lead_s=plan.preempt_lead_s)


def run(args: argparse.Namespace) -> int:
    from engine.plan import fresh_run_id, run_dir
    from engine.quiet import quiet_libraries
    from launcher.planner import make_plan
    from launcher.commands.plan import print_plan
    from launcher.topology import detect_topology, load_topology

    env = dict(os.environ)  # the one read of this launcher's environment: config layer, accelerate, threads, run id
    loaded = load_config([*args.config, *args.extra_configs], overrides=args.overrides, env=env,
                         sweep_params=read_sweep_params(args.sweep_params))
    check_data(loaded.config)
    quiet_libraries()  # the launcher reads model configs and audits rows with the engine's libraries
    check_model(loaded.config)
    topology = load_topology(args.topology_file) if args.topology_file else detect_topology(env)
    run_id = args.run_id or env.get("DIALSUM_RUN_ID")
    if args.nnodes > 1 and not run_id:
        raise UserError("--nnodes > 1: every node must use the same run id; pass --run-id ID (or set DIALSUM_RUN_ID) "
                        "on each node")
    plan = make_plan(loaded, topology, env=env, run_id=run_id or fresh_run_id(), nnodes=args.nnodes,
                     nproc_per_node=args.nproc, sweep_trial=read_sweep_trial(args.sweep_trial),
                     preempt_lead_s=preempt_lead_s(env))
    audit_rows(loaded.config, plan.task)
    print_plan(plan)
    if args.dry_run:
        return 0
    from launcher.spawn import spawn_ranks
    from launcher.run_outcome import record_oom_restart, settle_run

    plan_path = run_dir(loaded.config.experiment.output_root, plan.run_id) / "plan.json"
    while True:
        plan.save(plan_path)
        outcome = spawn_ranks(plan, plan_path, node_rank=args.node_rank, master_addr=args.master_addr,
                              master_port=args.master_port, max_restarts=args.max_restarts,
                              rdzv_timeout=args.rdzv_timeout, verbose=args.verbose)
        smaller = oom_restart_plan(plan, outcome, topology, args, env)
        if smaller is None:
            break
        record_oom_restart(loaded.config, plan, smaller, outcome)
        plan = smaller
    if outcome.error and outcome.failing_rank is None and outcome.launcher_signal is None:
        print(f"dialsum: error: {outcome.error}", file=sys.stderr)  # no rank ran: the rendezvous failed
    return settle_run(loaded.config, plan, outcome)


def preempt_lead_s(env) -> float:
    """How long a signalled rank has to checkpoint: the launcher's grace, or less where the scheduler signals closer to
    its kill (`DIALSUM_PREEMPT_LEAD_S`: scripts/slurm set SLURM's --signal lead, 90 s)."""
    from launcher.spawn import SHUTDOWN_GRACE_S

    lead = env.get("DIALSUM_PREEMPT_LEAD_S", "").strip()
    try:
        return min(float(lead), SHUTDOWN_GRACE_S) if lead else float(SHUTDOWN_GRACE_S)
    except ValueError:
        raise UserError(f"environment DIALSUM_PREEMPT_LEAD_S: expected seconds, got {lead!r}") from None


def read_sweep_trial(text: str | None) -> dict | None:
    """The trial a local sweep agent started this launch for (its `--sweep-trial`), for the ranks' pruning callback."""
    if not text:
        return None
    from engine.sweep_trial import TrialLink

    return vars(TrialLink.from_json(text))
