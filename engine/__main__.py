"""Per-rank entry: `python -m engine --plan PLAN.json` (from `dialsum launch`) or `python -m engine --config X.yaml`
(started directly by torchrun, accelerate launch or srun: rank 0 plans and broadcasts)."""
from __future__ import annotations

import argparse
import logging
import os
import sys

from engine.errors import UserError
from engine.quiet import quiet_libraries


def die_with_parent() -> None:
    """Ask Linux to send this rank SIGTERM when its launcher (torch elastic's agent, torchrun, srun) dies, so a
    SIGKILLed launcher leaves no rank training on alone (torch elastic starts ranks in their own sessions). SIGTERM is
    the preemption signal: the ranks checkpoint at the next step end and stop."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m engine")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--plan", help="Plan JSON written by `dialsum launch`.")
    source.add_argument("--config", nargs="+", help="Config YAML file(s), when started by torchrun/accelerate/srun.")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Config override (with --config).")
    args = parser.parse_args(argv)
    if args.plan and args.set:
        parser.error("--set applies to --config only: a plan is already decided (change it with `dialsum launch "
                     "... --set`)")
    from engine.world import adopt_world

    env = dict(os.environ)  # the one snapshot of what this rank was started with
    try:
        world = adopt_world(env)
    except UserError as exc:
        print(f"dialsum: error: {exc}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(level=logging.INFO if world.rank == 0 else logging.WARNING,
                        format=f"[rank{world.rank}] %(levelname)s %(name)s: %(message)s")
    from engine.redact import redact_logging

    redact_logging()
    quiet_libraries()
    try:
        from engine.plan import Plan

        if args.plan:
            from engine.distributed import init_process_group

            plan = Plan.load(args.plan, env)
            if plan.world_size > 1:  # env:// through the elastic agent's store, fresh for every restart attempt
                init_process_group(plan.backend)
        else:
            from engine.distributed import plan_for_this_process

            plan = plan_for_this_process(world, env, args.config, args.set)
        from engine.trainer import DialogueSummarizationTrainer

        trainer = DialogueSummarizationTrainer(plan, world)
        result = trainer.train(trainer.prepare_data())
    except UserError as exc:
        print(f"dialsum: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if result.preempted_at is not None:
        from engine.plan import PREEMPTED_EXIT_CODE

        if world.rank == 0:
            print(f"run {result.run_id} preempted: checkpoint at step {result.preempted_at}; start it again with "
                  f"DIALSUM_RUN_ID={result.run_id} (or `dialsum launch ... --run-id {result.run_id}`) to resume")
        return PREEMPTED_EXIT_CODE
    if world.rank == 0:
        best = ", ".join(f"{k}={v:.4f}" for k, v in result.best_metrics.items() if k.startswith("rouge"))
        print(f"run {result.run_id} completed: {best}; model v{result.model_version} at {result.model_path}; "
              f"predictions {result.predictions_path}")
    return 0


if __name__ == "__main__":
    from engine.process_exit import exit_now

    exit_now(main())
