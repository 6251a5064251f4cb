"""`--backend wandb`: the same YAML run by W&B's sweep controller (online only; W&B sweeps cannot run offline).

Kept thin: the spec goes to `wandb.sweep` with the metric named as the engine logs it (`eval/<metric>`), and each
`wandb.agent` call reads the parameters W&B chose from `wandb.config`, closes that handle, and launches the same
trial subprocess as the local backend with `--run-id` = the W&B run id, so the engine's rank 0 resumes that
very run (group = sweep) and logs the metric W&B's controller is waiting for.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from typing import Any

from engine.atomic import atomic_write_text
from engine.errors import UserError
from launcher.sweep.agent import AgentSettings, sweep_dir, trial_command
from launcher.sweep.spec import SweepSpec, check_params

def to_wandb_config(spec: SweepSpec, data: Mapping[str, Any]) -> dict:
    """The user's YAML as W&B takes it, with the metric normalised to the logged key and the sweep's name."""
    out = dict(data)
    out["name"] = spec.name
    out["metric"] = {"name": f"eval/{spec.metric}", "goal": spec.goal,
                     **({"target": spec.target} if spec.target is not None else {})}
    return out


def params_from_wandb(config: Mapping[str, Any], spec: SweepSpec) -> dict[str, Any]:
    """wandb.config (nested as the YAML was, or flat dotted keys) -> {name as in the YAML: value} for the swept keys."""
    out = {}
    for p in spec.parameters:
        if p.key in config:
            out[p.key] = config[p.key]
            continue
        node: Any = config
        for part in p.key.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise UserError(f"{spec.source}: parameters.{p.key}: W&B did not send a value for it")
            node = node[part]
        out[p.key] = node
    return out


def run_wandb_agent(spec: SweepSpec, data: Mapping[str, Any], settings: AgentSettings, base, sweep_id: str | None,
                    count: int | None) -> str:
    """Create the sweep (unless joining `sweep_id`) and run one W&B agent here; returns the sweep id."""
    import wandb

    project = spec.project or base.tracking.wandb_project
    entity = spec.entity or base.tracking.wandb_entity or None
    if sweep_id is None:
        sweep_id = wandb.sweep(to_wandb_config(spec, data), project=project, entity=entity)
        print(f"W&B sweep {sweep_id}: join from other machines with --backend wandb --sweep-id {sweep_id}")
    trials = sweep_dir(base.experiment.output_root, spec.name) / "trials"

    def trial() -> None:
        run = wandb.init()
        params, run_id = params_from_wandb(run.config, spec), run.id
        run.finish()
        check_params(spec, params, settings.configs, settings.overrides)
        params_file = atomic_write_text(trials / f"{run_id}.json", json.dumps(spec.config_params(params), indent=2))
        cmd = trial_command(settings, spec.name, f"{spec.name}-{run_id}", base.registry_name(), params_file)
        subprocess.run([*cmd, "--run-id", run_id], check=False)

    wandb.agent(sweep_id, function=trial, count=count, project=project, entity=entity)
    return sweep_id
