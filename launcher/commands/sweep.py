"""`dialsum sweep SWEEP.yaml --config BASE.yaml`: run a W&B sweep YAML locally on Optuna or online by W&B.

Local (the default unless W&B is online): `--agents N` agent processes here share the study in `--storage` (default a
journal file under <output_root>/sweeps/<name>/); agents elsewhere join with the same YAML and storage URL. At the
end: a table of the trials, and the best trial's registry version gets the alias `sweep-<name>` (`best` is moved by
the registry itself, by metric, as every trial registers).
"""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run a W&B sweep YAML: locally on Optuna (offline) or by W&B (online)")
    p.add_argument("sweep_file", metavar="SWEEP.yaml", help="W&B sweep configuration (method, metric, parameters, ...)")
    p.add_argument("--config", dest="configs", action="append", default=[], metavar="FILE",
                   help="base dialsum config the sweep parameters go into (repeatable, later ones win)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix one dotted key for every trial (repeatable; must not be a swept key)")
    p.add_argument("--backend", choices=["local", "wandb"], default=None,
                   help="local = Optuna (default unless W&B is online), wandb = W&B's sweep controller")
    p.add_argument("--agents", type=int, default=1, help="agent processes on this machine (default 1)")
    p.add_argument("--count", type=int, default=None,
                   help="trials in the whole sweep (local; default run_cap, or the grid size); per agent for wandb")
    p.add_argument("--storage", default=None,
                   help="shared study storage: a journal file path (default <output_root>/sweeps/<name>/journal.log) "
                        "or an RDB URL (postgresql+psycopg://..., sqlite:///...)")
    p.add_argument("--sweep-id", default=None, help="wandb backend: join this existing W&B sweep")
    p.add_argument("--nproc", type=int, default=None, help="rank processes per trial (default: planned)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: experiment.seed)")
    p.add_argument("--heartbeat-seconds", type=float, default=30.0,
                   help="agents mark their trial alive this often; a trial silent for 3x this is retried")
    p.add_argument("--dry-run", action="store_true", help="validate and print the first parameter sets, no training")
    p.add_argument("--show", type=int, default=5, help="parameter sets --dry-run prints (default 5)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from launcher.sweep.command import run_sweep

    return run_sweep(args)
