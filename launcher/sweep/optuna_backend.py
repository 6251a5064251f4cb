"""The local sweep engine: a `SweepSpec` as an Optuna study (storage, sampler, pruner, parameter suggestions).

Storage is what lets agents share a sweep: a journal file (default `<output_root>/sweeps/<name>/journal.log`; many
processes, or machines on a shared filesystem, no database) or an RDB URL (`postgresql+psycopg://...` for agents on
other machines; `sqlite:///...` for one machine). Parameters Optuna cannot express natively (categorical
`probabilities`, the normal and beta families) are drawn as a uniform `u` in [0, 1] and mapped through the inverse CDF, so
every sampler, the retry of a dead trial and `enqueue_trial` work on them unchanged.
"""
from __future__ import annotations

import bisect
import json
from itertools import accumulate
from pathlib import Path
from statistics import NormalDist
from typing import Any

import optuna

from engine.sweep_trial import make_pruner
from launcher.sweep.spec import ParamSpec, SweepSpec

_PRIMITIVE = (type(None), bool, int, float, str)
_EPS = 1e-9


class AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler whose after_trial does not call `study.stop()` (only valid inside optimize(); the agents use
    ask/tell and stop on their own budget, which never exceeds the grid size)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def default_storage(output_root: str, name: str) -> str:
    return str(Path(output_root).resolve() / "sweeps" / name / "journal.log")


def _choices(p: ParamSpec) -> list:
    """Optuna categorical choices must be primitives; lists/dicts go in as JSON text."""
    return [v if isinstance(v, _PRIMITIVE) else json.dumps(v, sort_keys=True) for v in p.grid_values()]


def make_sampler(spec: SweepSpec, seed: int | None) -> optuna.samplers.BaseSampler:
    if spec.method == "grid":
        space = {p.key: _choices(p) for p in spec.parameters if p.distribution != "constant"}
        return AskTellGridSampler(space, seed=seed)
    if spec.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)  # GPSampler needs scipy, which dialsum does not depend on


def create_study(spec: SweepSpec, storage: optuna.storages.BaseStorage, seed: int | None) -> optuna.Study:
    """Create the sweep's study, or join it when another agent already did."""
    return optuna.create_study(
        study_name=spec.name, storage=storage, direction=spec.goal, load_if_exists=True,
        sampler=make_sampler(spec, seed), pruner=make_pruner(spec.hyperband.kwargs() if spec.hyperband else None))


def suggest_value(trial: optuna.Trial, p: ParamSpec, grid: bool) -> Any:
    """One parameter's value for this trial, in the config's terms (exponents, q, CDFs applied)."""
    d = p.distribution
    if d == "constant":
        return p.value
    if d == "categorical" and (p.probabilities is None or grid):
        choices = _choices(p)
        return p.values[choices.index(trial.suggest_categorical(p.key, choices))]
    if d == "categorical":
        u = trial.suggest_float(p.key, 0.0, 1.0)
        cdf = list(accumulate(p.probabilities))
        return p.values[min(bisect.bisect_right(cdf, u), len(p.values) - 1)]
    if d == "int_uniform":
        return trial.suggest_int(p.key, int(p.min), int(p.max))
    if d in ("normal", "q_normal", "log_normal", "q_log_normal"):
        u = min(max(trial.suggest_float(p.key, 0.0, 1.0), _EPS), 1 - _EPS)
        return p.from_normal(NormalDist().inv_cdf(u))
    if d in ("beta", "q_beta"):
        return p.from_beta(trial.suggest_float(p.key, 0.0, 1.0))
    lo, hi = p.bounds()
    return p.quantize(trial.suggest_float(p.key, lo, hi, log=d not in ("uniform", "q_uniform")))


def suggest(trial: optuna.Trial, spec: SweepSpec) -> dict[str, Any]:
    """The trial's sweep parameters, named as in the YAML (nested names dotted) -> values."""
    grid = spec.method == "grid"
    return {p.key: suggest_value(trial, p, grid) for p in spec.parameters}

