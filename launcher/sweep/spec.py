"""W&B sweep YAML -> a typed, validated `SweepSpec`, the same file for `--backend wandb` and `--backend local`.

W&B semantics kept: parameter forms `value`, `values` (+ `probabilities`), `min`/`max` (int_uniform when both are ints,
else uniform) and every `distribution` (`beta`/`q_beta` with `a`, `b`); `log_uniform`/`q_log_uniform`/`inv_log_uniform`
bounds are natural-log EXPONENTS, the `*_values` variants take values; nested `parameters:` become dotted names; a
metric without a goal is minimized (W&B's default) unless it is the config's own metric, whose direction the config
already says. hyperband: `max_iter` with `s` wins over `min_iter` when both are given, as in W&B's own engine.
Parameter names go through `engine.config_aliases` (HF TrainingArguments and generation names, Keras names, dialsum's
dotted keys); the metric must be one dialsum runs log. Every parameter is checked against the real config: each
categorical value and both ends of each range go through `engine.config.load_config(..., sweep_params=...)`, so a
wrong name or an out-of-range bound fails before any training.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine import config_aliases
from engine.config import DECIMAL, load_config, read_yaml
from engine.errors import UserError

METHODS = ("grid", "random", "bayes")
GOALS = ("maximize", "minimize")
DISCRETE = ("constant", "categorical", "int_uniform")
RANGES = ("uniform", "q_uniform", "log_uniform", "q_log_uniform", "log_uniform_values", "q_log_uniform_values",
          "inv_log_uniform", "inv_log_uniform_values")
NORMALS = ("normal", "q_normal", "log_normal", "q_log_normal")
BETAS = ("beta", "q_beta")
DISTRIBUTIONS = DISCRETE + RANGES + NORMALS + BETAS
TOP_KEYS = ("method", "metric", "parameters", "run_cap", "early_terminate", "name", "description", "project", "entity")
_NOT_RUN = ("not run by dialsum: each trial is `dialsum launch` with the parameters as a config layer; delete this key, "
            "or run your own script with `wandb agent` (create_trainer(config, sweep_mode=True) reads wandb.config)")
REFUSED_TOP_KEYS = {"program": _NOT_RUN, "command": _NOT_RUN,
                    "job": "W&B Launch sweeps are not supported (no job/queue runner)",
                    "image_uri": "W&B Launch sweeps are not supported (no job/queue runner)",
                    "scheduler": "custom W&B sweep schedulers are not supported (use method: grid, random or bayes)"}
PARAM_KEYS = ("distribution", "value", "values", "probabilities", "min", "max", "mu", "sigma", "q", "a", "b")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ParamSpec:
    key: str                                   # dotted config key, e.g. training.learning_rate
    distribution: str
    value: Any = None                          # constant
    values: tuple = ()                         # categorical
    probabilities: tuple[float, ...] | None = None
    min: float | None = None
    max: float | None = None
    mu: float = 0.0
    sigma: float = 1.0
    q: float | None = None
    a: float = 1.0                             # beta
    b: float = 1.0

    @property
    def discrete(self) -> bool:
        return self.distribution in DISCRETE

    def grid_values(self) -> list:
        if self.distribution == "constant":
            return [self.value]
        if self.distribution == "int_uniform":
            return list(range(int(self.min), int(self.max) + 1))
        return list(self.values)

    def bounds(self) -> tuple[float, float]:
        """(low, high) in value space for the range distributions (exponents turned into values)."""
        lo, hi = self.min, self.max
        if self.distribution in ("log_uniform", "q_log_uniform"):
            return math.exp(lo), math.exp(hi)
        if self.distribution == "inv_log_uniform":
            return math.exp(-hi), math.exp(-lo)
        return lo, hi

    def quantize(self, x: float) -> float | int:
        """W&B's q_*: round(x / q) * q; an int when q and the bounds are ints (so int config keys accept it)."""
        if self.q is None or not self.distribution.startswith("q_"):
            return x
        y = round(x / self.q) * self.q
        ints = all(isinstance(v, int) for v in (self.q, self.min if self.min is not None else 0,
                                                self.max if self.max is not None else 0, self.mu))
        return int(round(y)) if ints else round(y, 12)  # 0.07, not 0.07000000000000001

    def from_normal(self, z: float) -> float | int:
        """A standard-normal draw -> this parameter's value (normal, log_normal and their q variants)."""
        x = self.mu + self.sigma * z
        return self.quantize(math.exp(x) if "log" in self.distribution else x)

    def from_beta(self, u: float) -> float | int:
        """A uniform draw in [0, 1] -> this Beta(a, b) parameter's value (inverse CDF by bisection), quantized."""
        import mpmath  # a dependency of torch (through sympy)

        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if mpmath.betainc(self.a, self.b, 0, mid, regularized=True) < u else (lo, mid)
        return self.quantize((lo + hi) / 2)

    def corners(self) -> list:
        """Values to check against the config: every category, both ends of a range, the centre of a normal."""
        if self.discrete:
            return self.grid_values() if self.distribution != "int_uniform" else [int(self.min), int(self.max)]
        if self.distribution in NORMALS:
            return [self.from_normal(0.0)]
        if self.distribution in BETAS:
            return [self.quantize(0.0), self.quantize(1.0)]
        lo, hi = self.bounds()
        return [self.quantize(lo), self.quantize(hi)]


@dataclass(frozen=True)
class Hyperband:
    """Optuna HyperbandPruner arguments; resources are evaluation counts (W&B's hyperband 'iterations')."""
    min_resource: int
    max_resource: int | str   # "auto": the longest finished trial decides
    reduction_factor: int

    def kwargs(self) -> dict:
        return {"min_resource": self.min_resource, "max_resource": self.max_resource,
                "reduction_factor": self.reduction_factor}


@dataclass(frozen=True)
class SweepSpec:
    source: str                      # the YAML file as the user named it (error messages)
    name: str
    method: str
    metric: str                      # bare name, e.g. rouge_combined_f1 (logged as eval/<metric>, summary best/<metric>)
    goal: str
    parameters: tuple[ParamSpec, ...]
    run_cap: int | None = None
    target: float | None = None
    hyperband: Hyperband | None = None
    project: str = ""
    entity: str = ""
    notes: list[str] = field(default_factory=list)  # defaults the user may want to know about
    world: int = 1                   # ranks per trial, for per_device_train_batch_size -> global batch
    base_global_batch: int = 8       # the base config's training.global_batch_size

    def config_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """A trial's parameters, named as in the YAML -> dialsum's dotted config keys (one alias table)."""
        return config_aliases.to_config_params(params, f"{self.source}: parameters", world=self.world,
                                               base_global=self.base_global_batch)[0]

    def mapping_notes(self) -> list[str]:
        """How the YAML's names map onto dialsum keys (printed by --dry-run and at the start of a sweep)."""
        example = {p.key: p.corners()[0] for p in self.parameters}
        return config_aliases.to_config_params(example, f"{self.source}: parameters", world=self.world,
                                               base_global=self.base_global_batch)[1]

    @property
    def direction(self) -> str:
        return self.goal

    def grid_size(self) -> int:
        return math.prod(len(p.grid_values()) for p in self.parameters)

    def budget(self, count: int | None) -> int:
        """Trials to run: --count, capped by run_cap and (grid) the grid size; one of them must be given."""
        caps = [c for c in (count, self.run_cap, self.grid_size() if self.method == "grid" else None) if c]
        if not caps:
            raise UserError(f"{self.source}: run_cap: a {self.method} sweep has no end; set run_cap or pass --count")
        return min(caps)


# ---------------------------------------------------------------------------------------------------- parsing

def _err(source: str, where: str, msg: str) -> UserError:
    return UserError(f"{source}: {where}: {msg}")


def _number(value: Any, source: str, where: str, *, integer: bool = False) -> float | int:
    """YAML numbers, or decimal strings (PyYAML reads 1e-5 as a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _err(source, where, f"expected a number, got {value!r}")
    if isinstance(value, str):
        if not DECIMAL.fullmatch(value.strip()):
            raise _err(source, where, f"expected a number, got {value!r}")
        value = float(value)
    if integer and not isinstance(value, int):
        raise _err(source, where, f"expected an integer, got {value!r}")
    return value


def _unknown(keys: Sequence, allowed: Sequence[str], source: str, where: str) -> None:
    import difflib

    for key in keys:
        if key not in allowed:
            match = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean '{match[0]}'?)" if match else f" (expected one of {', '.join(allowed)})"
            raise _err(source, f"{where}{key}", f"unknown key{hint}")


def _param(body: Mapping, key: str, source: str) -> ParamSpec:
    where = f"parameters.{key}"
    _unknown(list(body), PARAM_KEYS, source, f"{where}.")
    dist = body.get("distribution")
    if dist is None:
        if "value" in body:
            dist = "constant"
        elif "values" in body:
            dist = "categorical"
        elif "min" in body and "max" in body:
            ints = all(isinstance(body[k], int) and not isinstance(body[k], bool) for k in ("min", "max"))
            dist = "int_uniform" if ints else "uniform"
        else:
            raise _err(source, where, "needs 'value', 'values', or 'min' and 'max' (or a 'distribution')")
    if dist not in DISTRIBUTIONS:
        raise _err(source, where, f"unknown distribution {dist!r} (expected one of {', '.join(DISTRIBUTIONS)})")
    need = f"'distribution: {dist}' needs"
    if dist == "constant":
        if "value" not in body:
            raise _err(source, where, f"{need} 'value'")
        return ParamSpec(key, dist, value=body["value"])
    if dist == "categorical":
        values = body.get("values")
        if not isinstance(values, list) or not values:
            raise _err(source, where, f"{need} a non-empty list 'values'")
        probs = body.get("probabilities")
        if probs is not None:
            if not isinstance(probs, list) or len(probs) != len(values):
                raise _err(source, f"{where}.probabilities", f"expected a list of {len(values)} numbers, one per value")
            probs = tuple(float(_number(p, source, f"{where}.probabilities")) for p in probs)
            if any(p < 0 for p in probs) or abs(sum(probs) - 1.0) > 1e-6:
                raise _err(source, f"{where}.probabilities", f"must be >= 0 and sum to 1; got {list(probs)}")
        return ParamSpec(key, dist, values=tuple(values), probabilities=probs)
    for extra in ("values", "value", "probabilities"):
        if extra in body:
            raise _err(source, f"{where}.{extra}", f"not used by 'distribution: {dist}'")
    q = _number(body["q"], source, f"{where}.q") if "q" in body else (1 if dist.startswith("q_") else None)
    if q is not None and q <= 0:
        raise _err(source, f"{where}.q", f"must be > 0; got {q!r}")
    if dist in BETAS:
        a, b = (_number(body.get(k, 1), source, f"{where}.{k}") for k in ("a", "b"))
        for k, v in (("a", a), ("b", b)):
            if v <= 0:
                raise _err(source, f"{where}.{k}", f"must be > 0; got {v!r}")
        return ParamSpec(key, dist, a=a, b=b, q=q)
    for extra in ("a", "b"):
        if extra in body:
            raise _err(source, f"{where}.{extra}", f"not used by 'distribution: {dist}' (only beta, q_beta)")
    if dist in NORMALS:
        mu = _number(body.get("mu", 0), source, f"{where}.mu")
        sigma = _number(body.get("sigma", 1), source, f"{where}.sigma")
        if sigma <= 0:
            raise _err(source, f"{where}.sigma", f"must be > 0; got {sigma!r}")
        return ParamSpec(key, dist, mu=mu, sigma=sigma, q=q)
    if "min" not in body or "max" not in body:
        raise _err(source, where, f"{need} 'min' and 'max'")
    integer = dist == "int_uniform"
    lo = _number(body["min"], source, f"{where}.min", integer=integer)
    hi = _number(body["max"], source, f"{where}.max", integer=integer)
    if not lo < hi:
        raise _err(source, where, f"{need} min < max; got min={lo!r}, max={hi!r}")
    if dist in ("log_uniform_values", "q_log_uniform_values", "inv_log_uniform_values") and lo <= 0:
        raise _err(source, f"{where}.min", f"'distribution: {dist}' takes values (> 0); got {lo!r} "
                                           "(use log_uniform for exponents)")
    return ParamSpec(key, dist, min=lo, max=hi, q=q)


def _params(body: Any, prefix: str, source: str) -> list[ParamSpec]:
    where = f"parameters{'.' + prefix if prefix else ''}"
    if not isinstance(body, Mapping) or not body:
        raise _err(source, where, "expected a non-empty mapping of parameter names")
    out: list[ParamSpec] = []
    for name, spec in body.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if not isinstance(spec, Mapping):
            raise _err(source, f"parameters.{key}", f"expected a mapping (values:, value:, distribution:, ...), "
                                                    f"got {spec!r}")
        if "parameters" in spec:
            if len(spec) != 1:
                raise _err(source, f"parameters.{key}", "nested 'parameters' cannot be mixed with other keys")
            out += _params(spec["parameters"], key, source)
        else:
            out.append(_param(spec, key, source))
    return out


def _hyperband(body: Any, source: str, notes: list[str]) -> Hyperband:
    where = "early_terminate"
    if not isinstance(body, Mapping):
        raise _err(source, where, f"expected a mapping with type: hyperband, got {body!r}")
    _unknown(list(body), ("type", "min_iter", "max_iter", "eta", "s", "strict"), source, f"{where}.")
    if body.get("type") != "hyperband":
        raise _err(source, f"{where}.type", f"only 'hyperband' is supported; got {body.get('type')!r}")
    eta = _number(body.get("eta", 3), source, f"{where}.eta", integer=True)
    if eta < 2:
        raise _err(source, f"{where}.eta", f"must be >= 2; got {eta}")
    s = _number(body["s"], source, f"{where}.s", integer=True) if "s" in body else None
    if s is not None and s < 1:
        raise _err(source, f"{where}.s", f"must be >= 1; got {s}")
    if "max_iter" in body:
        # W&B's engine (sweeps/hyperband_stopping.py) takes max_iter and s when max_iter is given, ignoring min_iter:
        # bands at int(max_iter / eta^k) for k = 1..s, stopping below 1.
        hi = _number(body["max_iter"], source, f"{where}.max_iter", integer=True)
        if s is None:
            raise _err(source, f"{where}.s", "hyperband with max_iter needs s (the number of brackets)")
        bands = [int(hi / eta ** k) for k in range(1, s + 1) if hi / eta ** k >= 1]
        if not bands:
            raise _err(source, f"{where}.max_iter", f"max_iter {hi} / eta {eta} is below 1: no band to stop at")
        if "min_iter" in body:
            notes.append(f"early_terminate: max_iter and s set the bands {sorted(bands)}; min_iter is ignored, "
                         "as W&B's own hyperband does")
        return Hyperband(min(bands), hi, eta)
    if "min_iter" in body:
        lo = _number(body["min_iter"], source, f"{where}.min_iter", integer=True)
        if lo < 1:
            raise _err(source, f"{where}.min_iter", f"must be >= 1; got {lo}")
        # W&B brackets at min_iter * eta^k, k < s; Optuna's rungs stop below max_resource.
        return Hyperband(lo, lo * eta ** s if s else "auto", eta)
    raise _err(source, where, "hyperband needs min_iter (or max_iter and s)")


def parse_sweep(data: Any, source: str, default_metric: tuple[str, bool] = ("rouge_combined_f1", True)) -> SweepSpec:
    """Validate the YAML structure (no config check). `default_metric` = (config metric, greater_is_better)."""
    if not isinstance(data, Mapping):
        raise UserError(f"{source}: top level must be a mapping (method:, metric:, parameters:, ...)")
    for key, why in REFUSED_TOP_KEYS.items():
        if key in data:
            raise _err(source, key, why)
    _unknown(list(data), TOP_KEYS, source, "")
    notes: list[str] = []
    method = data.get("method")
    if method not in METHODS:
        raise _err(source, "method", f"expected one of {', '.join(METHODS)}; got {method!r}")
    metric_body = data.get("metric")
    config_metric, greater = default_metric
    target = None
    if metric_body is None:
        metric, goal = config_metric, "maximize" if greater else "minimize"
        notes.append(f"metric not set: using the config's {metric} ({goal})")
    else:
        if not isinstance(metric_body, Mapping):
            raise _err(source, "metric", f"expected a mapping with name and goal, got {metric_body!r}")
        _unknown(list(metric_body), ("name", "goal", "target"), source, "metric.")
        name = metric_body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _err(source, "metric.name", "required (e.g. eval/rouge_combined_f1)")
        metric = config_aliases.metric_key(name, config_metric)
        if metric is None:
            logged = ", ".join(config_aliases.logged_metrics())
            raise _err(source, "metric.name", f"{name.strip()!r} is not logged by dialsum runs (they log eval/<name> "
                                              f"for {logged}; aliases such as eval_loss, val_loss, rouge1 work)")
        if metric != name.strip():
            notes.append(f"metric {name.strip()} -> {metric}")
        goal = metric_body.get("goal")
        if goal is None:
            goal = ("maximize" if greater else "minimize") if metric == config_metric else "minimize"
            notes.append(f"metric.goal not set: {goal} {metric}")
        elif goal not in GOALS:
            raise _err(source, "metric.goal", f"expected maximize or minimize; got {goal!r}")
        if "target" in metric_body:
            target = float(_number(metric_body["target"], source, "metric.target"))
    if "parameters" not in data:
        raise _err(source, "parameters", "required: the values to sweep")
    params = _params(data["parameters"], "", source)
    seen: set[str] = set()
    for p in params:
        if p.key in seen:
            raise _err(source, f"parameters.{p.key}", "given twice (nested and dotted forms name the same key)")
        seen.add(p.key)
        if method == "grid" and not p.discrete:
            raise _err(source, f"parameters.{p.key}", f"method grid needs discrete values; 'distribution: "
                                                       f"{p.distribution}' is continuous (use values: [...])")
    run_cap = data.get("run_cap")
    if run_cap is not None:
        run_cap = _number(run_cap, source, "run_cap", integer=True)
        if run_cap < 1:
            raise _err(source, "run_cap", f"must be >= 1; got {run_cap}")
    name = str(data.get("name") or Path(source).stem)
    if not _NAME.match(name):
        origin = "" if data.get("name") else " (the file's name; set name: to choose another)"
        raise _err(source, "name", f"{name!r}{origin}: a sweep name starts with a letter or digit, then letters, digits, "
                                   f"'_', '-', '.' (it names the group and the storage)")
    hyperband = _hyperband(data["early_terminate"], source, notes) if data.get("early_terminate") is not None else None
    return SweepSpec(source=source, name=name, method=method, metric=metric, goal=goal, parameters=tuple(params),
                     run_cap=run_cap, target=target, hyperband=hyperband, project=str(data.get("project") or ""),
                     entity=str(data.get("entity") or ""), notes=notes)


def read_sweep_yaml(path: str | Path) -> Any:
    return read_yaml(path, "sweep file")


def check_params(spec: SweepSpec, params: Mapping[str, Any], files: Sequence[str], overrides: Sequence[str],
                 where: str = "parameters"):
    """load_config with these sweep params (named as in the YAML); a rejection names the sweep file and parameter."""
    config_params = spec.config_params(params)
    try:
        return load_config(files, overrides, sweep_params=config_params)
    except UserError as exc:
        msg = str(exc)
        if msg.startswith("sweep: "):  # load_config names the dotted key: "sweep: training.x: must be ..."
            key, _, msg = msg.removeprefix("sweep: ").partition(": ")
            names = [name for name in params if config_aliases.target_of(name) == key]
            where = f"parameters.{names[0] if len(names) == 1 else key}"
        raise _err(spec.source, where, f"rejected by the config: {msg}") from None


def load_sweep(path: str | Path, files: Sequence[str], overrides: Sequence[str] = (), world: int | None = None
               ) -> SweepSpec:
    """Parse the sweep YAML, map its names onto dialsum keys and check every parameter against the base config files
    (+ --set overrides). `world`: ranks per trial (default parallel.nproc_per_node, else 1), for per-device batches."""
    if not files:
        raise UserError("dialsum sweep: --config BASE.yaml is required (the config the sweep parameters go into)")
    base = load_config(files, overrides).config
    spec = parse_sweep(read_sweep_yaml(path), str(path),
                       (base.training.metric_for_best_model, base.training.greater_is_better))
    spec = replace(spec, world=world or base.parallel.nproc_per_node or 1,
                   base_global_batch=base.training.global_batch_size)
    overridden = {item.partition("=")[0].strip() for item in overrides}
    named: dict[str, str] = {}
    for p in spec.parameters:
        try:
            key = config_aliases.target_of(p.key)
        except ValueError as exc:
            raise _err(spec.source, f"parameters.{p.key}", str(exc)) from None
        if key in named and not {p.key, named[key]} <= set(config_aliases.BATCH_FACTORS):
            raise _err(spec.source, f"parameters.{p.key}", f"sets {key}, as parameters.{named[key]} does; "
                                                          "keep one of them")
        named[key] = p.key
        if key in overridden:
            raise _err(spec.source, f"parameters.{p.key}", f"{key} is also fixed by --set; drop one of them")
        for value in p.corners():
            check_params(spec, {p.key: value}, files, overrides, f"parameters.{p.key}")
    if spec.metric != base.training.metric_for_best_model:
        spec.notes.append(f"trials are scored by {spec.metric} at the checkpoint training.metric_for_best_model "
                          f"({base.training.metric_for_best_model}) picks")
    return spec
