"""The planner: from a config and a topology to a Plan, choosing the cheapest setting that fits, with one reason per
decision.

Candidates (ZeRO stage x optimizer/parameter offload x gradient checkpointing) are tried cheapest first; the first
that fits with `parallel.memory_headroom` left free wins, with the largest micro-batch that keeps
`training.global_batch_size` exact. Cost order: ZeRO 0 < 1 < 2 (same communication volume as DDP) < ZeRO-3 (1.5x
the traffic: cheap on NVLink, priced above checkpointing and optimizer offload on PCIe or across nodes) <
checkpointing (~1/3 more compute) < optimizer offload (CPU Adam, PCIe copies) < parameter offload. User pins in
`config.parallel` restrict the candidates; a pinned plan that cannot fit is a UserError saying by how much and what
would fit instead.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from engine.config import LoadedConfig
from engine.errors import UserError
from engine.schema import DialsumConfig, ParallelConfig
from launcher.ds_config import (
    UserDeepSpeed, auto_values, read_user_deepspeed, render_deepspeed_config, resolve_user_deepspeed,
    trainer_values, user_pins,
)
from launcher.memory_estimate import (
    GiB, T5_FAMILY, AdapterSpec, ModelSpec, activation_bytes, adapter_params, cpu_bytes_per_node, element_bytes,
    frozen_base_bytes, generation_bytes, model_spec, model_state_bytes, overhead_bytes,
)
from engine.plan import Plan, backend_for
from launcher.topology import Topology


@dataclass(frozen=True)
class Candidate:
    zero_stage: int
    offload_optimizer: bool = False
    offload_params: bool = False
    gradient_checkpointing: bool = False

    def cost(self, slow_interconnect: bool) -> float:
        stage = (0.0, 0.1, 0.2, 9.0 if slow_interconnect else 2.0)[self.zero_stage]
        return stage + 4 * self.gradient_checkpointing + 6 * self.offload_optimizer + 10 * self.offload_params

    def describe(self) -> str:
        offload = {(False, False): "no offload", (True, False): "optimizer offload",
                   (True, True): "optimizer+parameter offload"}[(self.offload_optimizer, self.offload_params)]
        return f"ZeRO-{self.zero_stage}, {offload}, checkpointing {'on' if self.gradient_checkpointing else 'off'}"


@dataclass(frozen=True)
class Footprint:
    model_states: int
    activations: int
    overhead: int
    cpu_per_node: int   # host RAM a GPU plan needs per node (0 on CPU: everything is in `total`)
    correction: float = 1.0   # measured/predicted of past runs of this model (plan_history.memory_corrections)

    @property
    def formula_total(self) -> int:
        return self.model_states + self.activations + self.overhead

    @property
    def total(self) -> int:
        return int(self.formula_total * self.correction)


@dataclass(frozen=True)
class Setting:
    """Everything fixed before the search: model, device, precision, world and budgets."""
    spec: ModelSpec
    device: str
    precision: str
    nnodes: int
    nproc: int
    source_length: int
    target_length: int
    device_bytes: int    # memory of one GPU, or this rank's share of RAM on CPU
    budget: int          # device_bytes x (1 - headroom)
    cpu_budget: int      # host RAM per node x (1 - headroom)
    slow_interconnect: bool
    correction: float = 1.0
    activation_scale: tuple[float, float] = (1.0, 1.0)   # traced/formula, checkpointing off and on (plan --trace)
    adapters: AdapterSpec | None = None                  # None: full fine-tuning

    @property
    def world(self) -> int:
        return self.nnodes * self.nproc

    @property
    def method(self) -> str:
        return "full" if self.adapters is None else self.adapters.method

    @property
    def trainable_params(self) -> int:
        return self.spec.params if self.adapters is None else adapter_params(self.spec, self.adapters)

    def weight_bytes(self) -> int:
        """The whole model's weights in memory (what ZeRO-3 gathers for generation)."""
        w = element_bytes(self.precision)
        if self.adapters is None:
            return w * self.spec.params
        return frozen_base_bytes(self.spec, self.adapters, self.precision) + w * self.trainable_params

    def footprint(self, c: Candidate, micro: int) -> Footprint:
        spec = self.spec
        states = model_state_bytes(spec, stage=c.zero_stage, world_size=self.world, precision=self.precision,
                                   offload_optimizer=c.offload_optimizer, offload_params=c.offload_params,
                                   adapters=self.adapters)
        acts = activation_bytes(spec, micro_batch=micro, source_length=self.source_length,
                                target_length=self.target_length, precision=self.precision,
                                checkpointing=c.gradient_checkpointing, device=self.device, adapters=self.adapters)
        acts = int(acts * self.activation_scale[c.gradient_checkpointing])
        cpu = 0 if self.device == "cpu" else cpu_bytes_per_node(
            spec, stage=c.zero_stage, gpus_per_node=self.nproc, nnodes=self.nnodes,
            offload_optimizer=c.offload_optimizer, offload_params=c.offload_params, adapters=self.adapters,
            precision=self.precision, zero_init=loads_partitioned(c.zero_stage, self.world, self.method, self.device))
        return Footprint(states, acts, overhead_bytes(spec, device=self.device, stage=c.zero_stage,
                                                      precision=self.precision), cpu, self.correction)

    def fits(self, fp: Footprint) -> bool:
        return fp.total <= self.budget and fp.cpu_per_node <= self.cpu_budget


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


# ---------------------------------------------------------------------------------------------------- decisions

def choose_precision(pinned: str, topology: Topology, model_type: str) -> tuple[str, str]:
    t5 = model_type in T5_FAMILY
    if not topology.gpus:
        if pinned == "fp16":
            raise UserError("parallel.precision: fp16 is not supported on CPU (DeepSpeed rejects it); use fp32 or bf16")
        if pinned == "bf16":
            if not topology.cpu_bf16:
                raise UserError("parallel.precision: bf16 pinned but this CPU has no native bf16 (avx512_bf16/AMX); "
                                "use fp32 or auto")
            return "bf16", "bf16: pinned (parallel.precision); this CPU has native bf16"
        return "fp32", ("fp32: CPU default; bf16 autocast measured 3.3x slower a step for the 0.6M-parameter demo BART "
                        "on an AVX-512-bf16 CPU (faster from ~30M parameters, ROUGE unverified there): pin "
                        "parallel.precision=bf16 to use the CPU's bf16")
    if pinned == "fp16" and t5:
        raise UserError(f"parallel.precision: fp16 pinned for a {model_type} model; T5-family activations overflow "
                        "in fp16; use bf16 (compute capability >= 8.0) or fp32")
    if pinned == "bf16" and not topology.bf16:
        ccs = ", ".join(sorted({g.compute_capability for g in topology.gpus}))
        raise UserError(f"parallel.precision: bf16 pinned but the GPUs (compute capability {ccs}) lack bf16; "
                        f"use {'fp32' if t5 else 'fp16 or fp32'}")
    if pinned != "auto":
        return pinned, f"{pinned}: pinned (parallel.precision)"
    if topology.bf16:
        return "bf16", "bf16: every GPU has compute capability >= 8.0"
    if t5:
        return "fp32", f"fp32: no bf16 on these GPUs and fp16 overflows in {model_type} models"
    return "fp16", "fp16: no bf16 on these GPUs (compute capability < 8.0); loss scaling on"


def _world(topology: Topology, par: ParallelConfig, nnodes: int | None, nproc: int | None) -> tuple[int, int, str]:
    nnodes = nnodes or topology.nnodes
    if nproc is not None:
        how = "--nproc"
    elif par.nproc_per_node is not None:
        nproc, how = par.nproc_per_node, "pinned (parallel.nproc_per_node)"
    elif topology.gpus:
        nproc, how = len(topology.gpus), "one rank per GPU"
    else:
        nproc, how = 1, "CPU default (pin parallel.nproc_per_node or pass --nproc for more ranks)"
    if nproc < 1 or nnodes < 1:
        raise UserError(f"nproc_per_node and nnodes must be >= 1, got {nproc} and {nnodes}")
    if topology.gpus and nproc > len(topology.gpus):
        raise UserError(f"parallel.nproc_per_node / --nproc: {nproc} ranks per node but the node has "
                        f"{len(topology.gpus)} GPUs")
    unit = "GPU" if topology.gpus else "CPU"
    return nnodes, nproc, f"{nnodes * nproc}: {nnodes} node(s) x {nproc} {unit} rank(s) ({how})"


def _check_global_batch(global_batch: int, world: int) -> int:
    if global_batch % world:
        below, above = global_batch // world * world, (global_batch // world + 1) * world
        options = " or ".join(str(v) for v in (below, above) if v > 0)
        raise UserError(f"training.global_batch_size: {global_batch} is not divisible by the world size {world} "
                        f"(micro-batch x accumulation x world must equal it); use {options}, "
                        f"or a world size that divides {global_batch}")
    return global_batch // world


def _check_pins(par: ParallelConfig) -> None:
    if par.deepspeed is False and (par.zero_stage or par.offload_optimizer or par.offload_params):
        raise UserError("parallel.deepspeed: false (plain DDP) cannot honour parallel.zero_stage > 0 or CPU offload; "
                        "set parallel.deepspeed=true or unset them")
    if par.offload_optimizer and par.zero_stage == 0:
        raise UserError("parallel.offload_optimizer: needs parallel.zero_stage >= 1 (got 0)")
    if par.offload_params and par.zero_stage not in (None, 3):
        raise UserError(f"parallel.offload_params: needs parallel.zero_stage=3 (got {par.zero_stage})")
    if par.offload_params and par.offload_optimizer is False:
        raise UserError("parallel.offload_params: needs parallel.offload_optimizer=true as well")


def _candidates(par: ParallelConfig, device: str) -> list[Candidate]:
    """Every setting DeepSpeed supports that agrees with the pins. On CPU, offload only when pinned (the states
    are in RAM either way)."""
    out = []
    for stage, opt, params, ckpt in itertools.product(range(4), (False, True), (False, True), (False, True)):
        c = Candidate(stage, opt, params, ckpt)
        if (opt and stage == 0) or (params and (stage != 3 or not opt)) or (par.deepspeed is False and stage):
            continue
        if device == "cpu" and opt and not (par.offload_optimizer or par.offload_params):
            continue
        pins = {"zero_stage": stage, "offload_optimizer": opt, "offload_params": params, "gradient_checkpointing": ckpt}
        if all(getattr(par, k) is None or getattr(par, k) == v for k, v in pins.items()):
            out.append(c)
    return out


def _divisors_desc(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def _search(setting: Setting, candidates: list[Candidate], micros: list[int]):
    """(candidate, micro, footprint) of the cheapest candidate that fits, at its largest micro-batch; or None."""
    for c in sorted(candidates, key=lambda c: (c.cost(setting.slow_interconnect), c.zero_stage)):
        for micro in micros:
            fp = setting.footprint(c, micro)
            if setting.fits(fp):
                return c, micro, fp
    return None


def _too_big(setting: Setting, par: ParallelConfig, candidates: list[Candidate], micros: list[int],
             per_rank: int, also: str = "") -> UserError:
    """The error for a plan that cannot fit: the least the pinned choices need, and what would fit instead."""
    need = min((setting.footprint(c, micros[-1]) for c in candidates),
               key=lambda fp: max(fp.total / setting.budget, fp.cpu_per_node / setting.cpu_budget))
    headroom = f"(1 - parallel.memory_headroom {par.memory_headroom:g})"
    if need.total / setting.budget >= need.cpu_per_node / setting.cpu_budget:
        short = (f"needs {gib(need.total)} per {'GPU' if setting.device == 'cuda' else 'rank'}, "
                 f"{gib(need.total - setting.budget)} over the {gib(setting.budget)} budget "
                 f"({gib(setting.device_bytes)} x {headroom})")
    else:
        short = (f"needs {gib(need.cpu_per_node)} host RAM per node, {gib(need.cpu_per_node - setting.cpu_budget)} "
                 f"over the {gib(setting.cpu_budget)} budget (each of the {setting.nproc} ranks loads the whole model "
                 "on the host first, unless ZeRO-3 on several ranks builds it partitioned; offloaded states live "
                 "there too)")
    pins = [f"{k}={getattr(par, k)}" for k in ("zero_stage", "offload_optimizer", "offload_params",
                                               "gradient_checkpointing", "micro_batch_size")
            if getattr(par, k) is not None]
    free = ParallelConfig(deepspeed=par.deepspeed)
    found = _search(setting, _candidates(free, setting.device), _divisors_desc(per_rank)) if pins else None
    if found:
        c, micro, fp = found
        return UserError(f"parallel ({', '.join(pins)}): the pinned plan {short}; would fit: "
                         f"zero_stage={c.zero_stage}, offload_optimizer={c.offload_optimizer}, offload_params={c.offload_params}, "
                         f"gradient_checkpointing={c.gradient_checkpointing}, micro_batch_size={micro} "
                         f"({gib(fp.total)}); unset or change the pins")
    what = f"parallel ({', '.join(pins)}): the pinned plan" if pins else "model.name_or_path: the model"
    more = " (parallel.deepspeed=false rules out ZeRO)" if par.deepspeed is False else ""
    return UserError(f"{what} {short} even in its smallest setting; nothing fits on {setting.world} "
                     f"{'GPU' if setting.device == 'cuda' else 'CPU rank'}(s){more}: "
                     + (also or "use more or larger GPUs, shorter data.max_source_length, or a smaller model"))


# ---------------------------------------------------------------------------------------------------- the method
# What is trained: full fine-tuning, or adapters on a frozen base (engine/adapters.py). `auto` tries them in this
# order, each at its cheapest ZeRO/offload/checkpointing setting: full fine-tuning learns most, LoRA keeps the base
# exact, QLoRA's 4-bit base costs quality and speed (dequantized in every step).

AUTO_METHODS = ("full", "lora", "qlora")


def adapter_spec(cfg: DialsumConfig, method: str) -> AdapterSpec | None:
    if method == "full":
        return None
    lora = cfg.lora
    return AdapterSpec(method=method, r=lora.r, targets=tuple(lora.target_modules), dropout=lora.dropout,
                       modules_to_save=tuple(lora.modules_to_save))


def _unplanned_method(cfg: DialsumConfig) -> str:
    return "full" if cfg.training.method == "auto" else cfg.training.method


def _adapter_methods(setting: Setting) -> list[str]:
    """The adapter methods the memory model can size for this model (its linear layers known) and this machine
    runs (QLoRA: bitsandbytes installed)."""
    from engine.adapters import has_4bit_kernels

    if not setting.spec.linear_shapes:
        return []
    return ["lora"] + (["qlora"] if has_4bit_kernels() else [])


def _least(setting: Setting, candidates: list[Candidate]) -> int:
    """The smallest footprint any candidate reaches (micro-batch 1)."""
    return min(setting.footprint(c, 1).total for c in candidates)


def _choose_method(cfg: DialsumConfig, setting: Setting, candidates: list[Candidate], micros: list[int],
                   corrections: Mapping[str, tuple[float, str]]):
    """(setting, search result or None, reason): training.method as configured, or for `auto` the first of
    AUTO_METHODS that fits; each method's predictions corrected by its own past runs."""
    unit = "GPU" if setting.device == "cuda" else "rank"

    def for_method(method: str) -> Setting:
        return dataclasses.replace(setting, adapters=adapter_spec(cfg, method),
                                   correction=corrections[method][0] if method in corrections else 1.0)

    if cfg.training.method != "auto":
        setting = for_method(cfg.training.method)
        found = _search(setting, candidates, micros)
        trained = f"{setting.trainable_params / 1e6:,.1f}M of {setting.spec.params / 1e6:,.1f}M parameters trained"
        if setting.adapters is None:
            return setting, found, (f"full: training.method ({trained}; auto would take LoRA or QLoRA where full "
                                    "fine-tuning does not fit)")
        return setting, found, f"{setting.method}: training.method ({trained}, the base frozen)"
    tried = []
    for method in ["full", *(m for m in _adapter_methods(setting) if m in AUTO_METHODS)]:
        candidate_setting = for_method(method)
        found = _search(candidate_setting, candidates, micros)
        if found is not None:
            done = "full fine-tuning fits" if method == "full" else "; ".join(tried)
            return candidate_setting, found, (f"{method}: auto; {done}; {gib(found[2].total)} per {unit} at "
                                              f"{found[0].describe()}")
        tried.append(f"{method} needs >= {gib(_least(candidate_setting, candidates))} per {unit}")
    return setting, None, ""


def _what_would_fit(cfg: DialsumConfig, setting: Setting, candidates: list[Candidate]) -> str:
    """For a full fine-tune that fits nowhere: the adapter methods that would, at their smallest footprint."""
    if setting.adapters is not None:
        return ""
    fits = []
    for method in _adapter_methods(setting):
        least = _least(dataclasses.replace(setting, adapters=adapter_spec(cfg, method)), candidates)
        if least <= setting.budget:
            fits.append(f"{method} fits at {gib(least)} per {'GPU' if setting.device == 'cuda' else 'rank'}")
    if not fits:
        return ""
    return f"training.method: {', '.join(fits)} (or auto, which picks the first that fits)"


# ---------------------------------------------------------------------------------------------------- the plan

def _load_spec(name: str, device: str) -> tuple[ModelSpec | None, str]:
    try:
        spec = model_spec(name)
    except (OSError, ValueError, KeyError) as exc:
        why = f"model.name_or_path: cannot read the model config of {name!r}: {str(exc).splitlines()[0]}"
        if device == "cuda":
            raise UserError(f"{why}; a GPU plan needs the model's sizes (use a local model directory)") from None
        return None, why
    return spec, f"{spec.model_type}, {spec.params / 1e6:.1f}M parameters (from {name})"


def check_task_and_method(cfg: DialsumConfig, spec: ModelSpec) -> None:
    """model.task agrees with the model's config; adapters name layers it has (engine/adapters.py)."""
    from engine.adapters import check_adapters, uses_adapters

    if cfg.model.task not in ("auto", spec.task):
        raise UserError(f"model.task: {cfg.model.task} set, but {spec.model_type} is "
                        f"{'an encoder-decoder' if spec.task == 'seq2seq' else 'a decoder-only'} model; set "
                        f"model.task: {spec.task} or auto")
    if uses_adapters(cfg) or cfg.training.method == "auto":
        check_adapters(cfg, spec.model_type, list(spec.linear_layers))


def make_plan(loaded: LoadedConfig, topology: Topology, *, run_id: str, env: Mapping[str, str] | None = None,
              nnodes: int | None = None, nproc_per_node: int | None = None, trace: bool = False,
              sweep_trial: dict | None = None, preempt_lead_s: float = 0.0) -> Plan:
    """Plan a run of `loaded.config` on `topology` (nnodes default: the topology's cluster view). A function of its
    arguments: `env` is the environment snapshot the entry point took (default: an empty one); what the plan takes
    from it is accelerate's DeepSpeed settings and OMP_NUM_THREADS. `trace` (or parallel.trace_memory): activations
    from a fake-tensor trace of the model class. Past runs of the model on this kind of device correct the prediction
    (plan_history.memory_corrections). `sweep_trial` and `preempt_lead_s` are recorded for the ranks."""
    from launcher.plan_history import memory_corrections

    env = {} if env is None else env
    cfg = loaded.config
    device = "cuda" if topology.gpus else "cpu"
    spec, model_reason = _load_spec(cfg.model.name_or_path, device)
    if spec is not None:
        check_task_and_method(cfg, spec)
    methods = AUTO_METHODS if cfg.training.method == "auto" else (cfg.training.method,)
    memory = {"corrections": memory_corrections(cfg, device, methods) if spec else {},
              "trace": (trace or cfg.parallel.trace_memory) and spec is not None}
    user_ds = read_user_deepspeed(cfg.parallel.deepspeed_config, env)
    if user_ds is None:
        plan = plan_for_spec(cfg, spec, topology, run_id=run_id, nnodes=nnodes, nproc_per_node=nproc_per_node,
                             env=env, **memory)
        if plan.use_deepspeed:
            plan.reasons["deepspeed_config"] = (f"dialsum's plan: rendered for the choices above (ds_configs zero"
                                                f"{plan.zero_stage}.json, every value filled)")
    else:
        plan = plan_user_deepspeed(user_ds, cfg, spec, topology, run_id=run_id, nnodes=nnodes,
                                   nproc_per_node=nproc_per_node, env=env, **memory)
    plan.config, plan.config_sources = loaded.to_dict(), dict(loaded.sources)
    if cfg.training.method == "auto":  # the ranks train what the plan chose
        plan.config["training"]["method"] = plan.method
        plan.config_sources["training.method"] = "planner (training.method: auto)"
    plan.reasons = {"model": model_reason, **plan.reasons}
    plan.sweep_trial, plan.preempt_lead_s = sweep_trial, preempt_lead_s
    return plan


def plan_for_spec(cfg: DialsumConfig, spec: ModelSpec | None, topology: Topology, *, run_id: str,
                  nnodes: int | None = None, nproc_per_node: int | None = None, env: Mapping[str, str] | None = None,
                  corrections: Mapping[str, tuple[float, str]] | None = None, trace: bool = False) -> Plan:
    """The planning itself, for a model described by `spec` (None: sizes unknown, CPU only: a conservative plan).
    `corrections`: (factor, reason) from past runs, by training method; `trace`: activations traced from
    cfg.model.name_or_path."""
    par = cfg.parallel
    device = "cuda" if topology.gpus else "cpu"
    _check_pins(par)
    nnodes, nproc, world_reason = _world(topology, par, nnodes, nproc_per_node)
    world = nnodes * nproc
    per_rank = _check_global_batch(cfg.training.global_batch_size, world)
    precision, precision_reason = choose_precision(par.precision, topology, spec.model_type if spec else "")
    reasons = {"world_size": world_reason, "precision": precision_reason}
    if par.micro_batch_size is not None and per_rank % par.micro_batch_size:
        raise UserError(f"parallel.micro_batch_size: {par.micro_batch_size} does not divide "
                        f"training.global_batch_size / world size = {cfg.training.global_batch_size} / {world} = "
                        f"{per_rank}; use one of {', '.join(map(str, reversed(_divisors_desc(per_rank))))}")
    candidates = _candidates(par, device)
    memory: dict = {}
    if spec is None:
        chosen = min(candidates, key=lambda c: (c.cost(False), c.zero_stage))
        micro = par.micro_batch_size or 1
        reasons.update(zero_stage=f"{chosen.zero_stage}: model size unknown; cheapest allowed setting",
                       offload=("optimizer states to CPU: pinned" if chosen.offload_optimizer
                                else "none: model size unknown"),
                       gradient_checkpointing=f"{'on' if chosen.gradient_checkpointing else 'off'}: model size unknown",
                       micro_batch_size=f"{micro}: model size unknown, smallest micro-batch",
                       method=f"{_unplanned_method(cfg)}: " + ("model size unknown; full fine-tuning" if
                                                               cfg.training.method == "auto" else "training.method"))
    else:
        slow = world > 1 and (nnodes > 1 or (device == "cuda" and not topology.all_nvlink(nproc)))
        if device == "cuda":
            device_bytes = min(g.memory_total_bytes for g in topology.gpus[:nproc])
        else:
            device_bytes = topology.ram_bytes // nproc
        setting = Setting(spec=spec, device=device, precision=precision, nnodes=nnodes, nproc=nproc,
                          source_length=cfg.data.max_source_length, target_length=cfg.data.max_target_length,
                          device_bytes=device_bytes, budget=int(device_bytes * (1 - par.memory_headroom)),
                          cpu_budget=int(topology.ram_bytes * (1 - par.memory_headroom)), slow_interconnect=slow,
                          adapters=adapter_spec(cfg, _unplanned_method(cfg)))
        if par.micro_batch_size:
            micros = [par.micro_batch_size]
        else:  # a bare parameter count has no activation model: one sample per forward
            micros = _divisors_desc(per_rank) if spec.has_architecture else [1]
        traced = None
        if trace and spec.has_architecture:
            setting, traced = _traced(setting, cfg.model.name_or_path, candidates, micros[0])
        corrections = corrections or {}
        setting, found, reasons["method"] = _choose_method(cfg, setting, candidates, micros, corrections)
        if setting.method in corrections:
            reasons["memory"] = corrections[setting.method][1]
        if found is None:
            raise _too_big(setting, par, candidates, micros, per_rank, also=_what_would_fit(cfg, setting, candidates))
        chosen, micro, fp = found
        reasons.update(_explain(setting, par, chosen, micro, fp, per_rank))
        memory = _memory_table(setting, chosen, micro, fp)
        if traced:
            memory["trace"] = traced
    accum = per_rank // micro
    use_deepspeed, reasons["deepspeed"] = choose_deepspeed(par, chosen)
    speed = speed_choices(cfg, topology, chosen, micro=micro, nproc=nproc, setting=None if spec is None else setting,
                          model_states=fp.model_states if spec is not None else 0, world=world,
                          use_deepspeed=use_deepspeed)
    reasons.update(speed.reasons)
    gather = False
    if chosen.zero_stage == 3:
        gather, reasons["gather_for_generation"] = _gather_for_generation(
            cfg, setting if spec is not None else None, chosen, speed.eval_batch_size)
    method = setting.method if spec else _unplanned_method(cfg)
    ds = None
    if use_deepspeed:
        ds = render_deepspeed_config(zero_stage=chosen.zero_stage, precision=precision, micro_batch_size=micro,
                                     gradient_accumulation_steps=accum, world_size=world,
                                     gradient_clipping=cfg.training.max_grad_norm,
                                     hidden_size=spec.hidden_size if spec else 0, device=device,
                                     offload_optimizer=chosen.offload_optimizer, offload_params=chosen.offload_params)
    return Plan(
        run_id=run_id, config={}, config_sources={}, device=device, backend=backend_for(device),
        task=spec.task if spec else "seq2seq", method=method,
        nnodes=nnodes, nproc_per_node=nproc, world_size=world, precision=precision, zero_stage=chosen.zero_stage,
        use_deepspeed=use_deepspeed, offload_optimizer=chosen.offload_optimizer, offload_params=chosen.offload_params,
        gradient_checkpointing=chosen.gradient_checkpointing, micro_batch_size=micro,
        gradient_accumulation_steps=accum, global_batch_size=micro * accum * world, deepspeed_config=ds,
        reasons=reasons, memory=memory, env=_rank_env(device, topology, nproc, env or {}), topology=topology.to_dict(),
        group_by_length=speed.group_by_length, eval_batch_size=speed.eval_batch_size, optim=speed.optim,
        dataloader_num_workers=speed.dataloader_num_workers, pad_to_multiple_of=speed.pad_to_multiple_of,
        find_unused_parameters=speed.find_unused_parameters, gather_for_generation=gather,
        partitioned_loading=use_deepspeed and loads_partitioned(chosen.zero_stage, world, method, device))


def _traced(setting: Setting, name: str, candidates: list[Candidate], micro: int) -> tuple[Setting, dict]:
    """Trace one training step of the model class on fake tensors at `micro` (checkpointing off and/or on, as the
    candidates allow) and scale the formula's activations by traced/formula, so every candidate plans with the trace."""
    import time

    import torch

    from launcher.memory_estimate import load_configs
    from launcher.memory_trace import traced_activation_bytes

    if setting.device == "cuda" and not torch.backends.cuda.is_built():
        raise UserError(f"--trace: a GPU plan traces CUDA kernels, and this torch ({torch.__version__}) has no CUDA "
                        "build; plan without --trace (the formula) or where a CUDA build of torch is installed")
    hf_config, raw = load_configs(name)
    scale, rows = [1.0, 1.0], {}
    start = time.perf_counter()
    for ckpt in sorted({c.gradient_checkpointing for c in candidates}):
        kw = dict(micro_batch=micro, source_length=setting.source_length, target_length=setting.target_length,
                  precision=setting.precision, checkpointing=ckpt)
        formula = activation_bytes(setting.spec, device=setting.device, **kw)
        traced = traced_activation_bytes(hf_config, raw, device=setting.device, **kw)
        scale[ckpt] = traced / formula
        rows["on" if ckpt else "off"] = {"formula_bytes": formula, "traced_bytes": traced}
    info = {"micro_batch_size": micro, "checkpointing": rows, "seconds": round(time.perf_counter() - start, 2)}
    return dataclasses.replace(setting, activation_scale=tuple(scale)), info


CPU_MMAP_THRESHOLD = str(2**20)


def _rank_env(device: str, topology: Topology, nproc: int, env: Mapping[str, str]) -> dict[str, str]:
    """What the rank processes start with: the CPU accelerator for DeepSpeed, and one share of the cores per rank
    unless OMP_NUM_THREADS is set (torchrun sets 1 for several ranks; without a share, 2 ranks on 2 cores ran 4
    compute threads). CPU ranks also get glibc's MALLOC_MMAP_THRESHOLD_ (unless set): every block from 1 MiB up is
    its own mapping, returned to the OS when freed. glibc's default threshold rises to the size of each freed block,
    so after the first step activations come from the heap, whose freed holes the process keeps: the peak sat 0.6 GiB
    above the live peak the plan predicts (bart-base, micro-batch 4, 512/128, fp32: 5.05 vs 4.42 GiB, with
    checkpointing 3.36 vs 2.73). 1 MiB, not lower: 64 KiB kept the same 2.73 GiB but made the demo BART's
    steps 19-24% slower (a mapping for every small block); 1 MiB costs them 4% (benchmarks/bench_cpu_rank_peak.py)."""
    ranks = {"OMP_NUM_THREADS": env.get("OMP_NUM_THREADS") or str(max(1, topology.cpu_cores // nproc))}
    if device == "cpu":
        ranks["DS_ACCELERATOR"] = "cpu"
        ranks["MALLOC_MMAP_THRESHOLD_"] = env.get("MALLOC_MMAP_THRESHOLD_") or CPU_MMAP_THRESHOLD
    return ranks


def _explain(s: Setting, par: ParallelConfig, c: Candidate, micro: int, fp: Footprint, per_rank: int) -> dict:
    """One line per decision, naming the numbers that decided it."""
    unit = "GPU" if s.device == "cuda" else "rank"
    fit = f"{gib(fp.total)} of the {gib(s.budget)} budget per {unit}"
    cheaper = [d for d in _candidates(ParallelConfig(deepspeed=par.deepspeed), s.device)
               if d.cost(s.slow_interconnect) < c.cost(s.slow_interconnect)]
    smallest = min((s.footprint(d, 1).total for d in cheaper), default=None)
    if par.zero_stage is not None:
        stage = f"{c.zero_stage}: pinned (parallel.zero_stage)"
    elif par.deepspeed is False:
        stage = "0: parallel.deepspeed=false (plain DDP)"
    elif c.zero_stage == 0:
        stage = "0: model states fit without partitioning"
    else:
        what = {1: "optimizer states", 2: "gradients and optimizer states",
                3: "parameters, gradients and optimizer states"}[c.zero_stage]
        stage = f"{c.zero_stage}: partitions {what} across {s.world} ranks"
        if smallest is not None:
            stage += f"; cheaper settings need >= {gib(smallest)} per {unit}"
    zero3 = Candidate(3)
    if (s.slow_interconnect and c.zero_stage < 3 and c.cost(True) > zero3.cost(False) and par.zero_stage is None
            and s.fits(s.footprint(zero3, par.micro_batch_size or 1))):
        link = "several nodes" if s.nnodes > 1 else "no NVLink between the GPUs"
        stage += (f"; plain ZeRO-3 would fit but is priced above checkpointing/offload here ({link}: its "
                  "parameter all-gathers are slow)")
    if c.offload_optimizer:
        what = "optimizer states and parameters" if c.offload_params else "optimizer states"
        pinned = par.offload_optimizer is not None or par.offload_params is not None
        offload = (f"{what} to CPU: {'pinned' if pinned else 'needed to fit'}; "
                   f"needs {gib(fp.cpu_per_node)} host RAM per node of {gib(s.cpu_budget)}")
    else:
        offload = "none: " + ("pinned" if par.offload_optimizer is False else f"fits in {unit} memory")
    act_off = s.footprint(Candidate(c.zero_stage, c.offload_optimizer, c.offload_params, False), micro)
    if par.gradient_checkpointing is not None:
        ckpt = f"{'on' if c.gradient_checkpointing else 'off'}: pinned (parallel.gradient_checkpointing)"
    elif not s.spec.has_architecture:
        ckpt = "off: activations not modelled for a bare parameter count"
    elif c.gradient_checkpointing:
        ckpt = (f"on: without it activations are {gib(act_off.activations)} at micro-batch {micro}; "
                f"with it {gib(fp.activations)}")
    else:
        ckpt = f"off: activations fit ({gib(fp.activations)} at micro-batch {micro})"
    accum = per_rank // micro
    how = "pinned (parallel.micro_batch_size)" if par.micro_batch_size else (
        f"largest divisor of {per_rank} that fits" if s.spec.has_architecture else
        "activations not modelled for a bare parameter count")
    batch = f"{micro}: x {accum} accumulation x {s.world} ranks = {micro * accum * s.world} global; {how}; {fit}"
    return {"zero_stage": stage, "offload": offload, "gradient_checkpointing": ckpt, "micro_batch_size": batch}


def _memory_table(s: Setting, c: Candidate, micro: int, fp: Footprint) -> dict:
    """Per-stage predictions at the chosen micro-batch and checkpointing (offload as chosen where the stage allows
    it), plus the chosen plan's peak."""
    table: dict = {}
    for stage in range(4):
        d = Candidate(stage, c.offload_optimizer and stage > 0, c.offload_params and stage == 3,
                      c.gradient_checkpointing)
        f = s.footprint(d, micro)
        table[str(stage)] = {"model_state_bytes_per_gpu": f.model_states, "activation_bytes_per_gpu": f.activations,
                             "overhead_bytes_per_gpu": f.overhead, "total": f.total, "fits": s.fits(f),
                             "cpu_bytes_per_node": f.cpu_per_node}
    table.update(params=s.spec.params, trainable_params=s.trainable_params, method=s.method,
                 predicted_peak_bytes_per_gpu=fp.total, correction=s.correction,
                 model_state_bytes_per_gpu=fp.model_states, activation_bytes_per_gpu=fp.activations,
                 overhead_bytes_per_gpu=fp.overhead, cpu_bytes_per_node=fp.cpu_per_node,
                 device_bytes=s.device_bytes, budget_bytes_per_gpu=s.budget)
    return table


# ---------------------------------------------------------------------------------------------------- user DeepSpeed

def plan_user_deepspeed(user: UserDeepSpeed, cfg: DialsumConfig, spec: ModelSpec | None, topology: Topology, *,
                        run_id: str, nnodes: int | None, nproc_per_node: int | None, env: Mapping[str, str],
                        corrections: Mapping[str, tuple[float, str]] | None = None, trace: bool = False) -> Plan:
    """Plan around a DeepSpeed config the user brought: its stage, offload, precision and batch split become pins
    (so the same memory model checks them, and a config that cannot fit fails saying by how much), its "auto" values
    are filled from the plan, and the plan says whose config runs."""
    if cfg.parallel.deepspeed is False:
        raise UserError(f"{user.source}: given with parallel.deepspeed=false; drop one of the two")
    pins = user_pins(user)
    accum = pins.pop("gradient_accumulation_steps", None)
    par = cfg.parallel
    for key, value in pins.items():
        mine = getattr(par, key)
        if mine not in (None, "auto") and mine != value:
            raise UserError(f"{user.source}: sets {key}={value} but parallel.{key}={mine}; keep one of the two")
    if pins.get("precision") == "fp16" and not topology.gpus:
        raise UserError(f"{user.source}: fp16.enabled is true, but DeepSpeed cannot train fp16 on CPU ranks; set "
                        "fp16.enabled to false or \"auto\" (dialsum then plans fp32, or bf16 where pinned)")
    if accum is not None:
        world = (nnodes or topology.nnodes) * (nproc_per_node or par.nproc_per_node or len(topology.gpus) or 1)
        per_rank = cfg.training.global_batch_size // world
        if per_rank % accum or (pins.get("micro_batch_size") not in (None, per_rank // accum)):
            raise UserError(f"{user.source}: gradient_accumulation_steps={accum} does not split "
                            f"training.global_batch_size {cfg.training.global_batch_size} over {world} rank(s) "
                            f"({per_rank} per rank); set it to \"auto\" or to a divisor of {per_rank}")
        pins["micro_batch_size"] = per_rank // accum
    pinned = copy.deepcopy(cfg)
    pinned.parallel.deepspeed = True  # the user's config runs under DeepSpeed whatever its stage
    for key, value in pins.items():
        setattr(pinned.parallel, key, value)
    try:
        plan = plan_for_spec(pinned, spec, topology, run_id=run_id, nnodes=nnodes, nproc_per_node=nproc_per_node,
                             env=env, corrections=corrections, trace=trace)
    except UserError as exc:
        raise UserError(f"{user.source}: {exc}") from None
    values = auto_values(zero_stage=plan.zero_stage, precision=plan.precision, micro_batch_size=plan.micro_batch_size,
                         gradient_accumulation_steps=plan.gradient_accumulation_steps, world_size=plan.world_size,
                         gradient_clipping=cfg.training.max_grad_norm, hidden_size=spec.hidden_size if spec else 0,
                         device=plan.device, offload_optimizer=plan.offload_optimizer,
                         offload_params=plan.offload_params)
    plan.deepspeed_config, filled = resolve_user_deepspeed(user, values, trainer_values(cfg), plan.world_size)
    taken = [k for k in ("zero_stage", "offload_optimizer", "offload_params", "precision", "micro_batch_size")
             if k in pins]
    for key, reason in (("zero_stage", "zero_stage"), ("offload_optimizer", "offload"), ("offload_params", "offload"),
                        ("precision", "precision"), ("micro_batch_size", "micro_batch_size")):
        if key in pins and reason in plan.reasons:
            plan.reasons[reason] = plan.reasons[reason].replace("pinned (parallel.", "from your DeepSpeed config (")
    if "optimizer" in plan.deepspeed_config or "scheduler" in plan.deepspeed_config:
        filled.append("optimizer/scheduler sections are yours (training.optim / lr_scheduler_type unused)")
    plan.reasons["deepspeed_config"] = (f"{user.source}: yours, used as given; decides {', '.join(taken) or 'nothing'}; "
                                        f"filled {'; '.join(user.notes + filled) or 'nothing'}")
    return plan


# ---------------------------------------------------------------------------------------------------- speed
# Choices that change how a run computes, not what it learns (issue 17). Each returns (value, reason).

EVAL_BATCH_CAP = 64  # rows per rank and generation batch; past this, beams wait on ever more finished rows
# On CPU the fastest generation batch measured (2/4/8/16 rows, 4 beams, 1 thread a rank; benchmarks/README.md):
# below it per-token overhead is paid by few rows, above it finished beams keep computing longer.
CPU_EVAL_BATCH = 8
# Batch lengths rounded up to a multiple of this: 1/8 as many shapes a run. On CPU oneDNN compiles and keeps a kernel
# per shape, and a rank's memory grows with them (benchmarks/bench_cpu_rank_peak.py); tensor cores take multiples of 8.
PAD_MULTIPLE = 8


def choose_deepspeed(par: ParallelConfig, c: Candidate) -> tuple[bool, str]:
    """DeepSpeed only when ZeRO > 0 or offload is needed: its ZeRO-0 is data parallelism with its own gradient
    all-reduce (same maths as torch DDP, which overlaps the all-reduce with backward) plus the import and engine
    start-up (~4 s on CPU ranks, benchmarks/README.md)."""
    if par.deepspeed is not None:
        return par.deepspeed, f"{'on' if par.deepspeed else 'off (plain DDP)'}: pinned (parallel.deepspeed)"
    if c.zero_stage or c.offload_optimizer:
        return True, f"on: ZeRO-{c.zero_stage}{' with offload' if c.offload_optimizer else ''} needs it"
    return False, ("off (plain torch DDP): ZeRO-0 needs no partitioning, and DeepSpeed's ZeRO-0 is the same data "
                   "parallelism plus its start-up; pin parallel.deepspeed=true to use it anyway")


@dataclass(frozen=True)
class SpeedChoices:
    group_by_length: bool
    eval_batch_size: int
    optim: str
    dataloader_num_workers: int
    pad_to_multiple_of: int
    find_unused_parameters: bool
    reasons: dict


def _fused_adamw_available() -> bool:
    """transformers defaults to `adamw_torch_fused` from torch 2.8 on (fused CPU and CUDA kernels)."""
    from importlib.metadata import version

    major, minor = (int(x) for x in version("torch").split(".")[:2])
    return (major, minor) >= (2, 8)


def _eval_batch(cfg: DialsumConfig, setting: Setting | None, c: Candidate, micro: int,
                model_states: int) -> tuple[int, str]:
    pinned = cfg.parallel.eval_batch_size
    if pinned:
        return pinned, f"{pinned}: pinned (parallel.eval_batch_size)"
    if setting is None or not setting.spec.has_architecture:
        return micro, f"{micro}: the training micro-batch (activations not modelled for this model)"
    beams, src = cfg.generation.num_beams, cfg.data.max_source_length
    tgt = cfg.generation.max_new_tokens + 1
    overhead = overhead_bytes(setting.spec, device=setting.device, stage=c.zero_stage, precision=setting.precision)
    if setting.device == "cpu":
        ladder = [CPU_EVAL_BATCH >> k for k in range(CPU_EVAL_BATCH.bit_length())]  # 8, 4, 2, 1
    else:
        ladder = sorted({micro, *(micro << k for k in range(8) if micro << k <= EVAL_BATCH_CAP)}, reverse=True)
    for b in ladder:
        need = model_states + overhead + generation_bytes(setting.spec, rows=b * beams, source_length=src,
                                                          target_length=tgt, precision=setting.precision,
                                                          device=setting.device)
        if need > setting.budget:
            continue
        if setting.device == "cpu":
            how = ("the fastest CPU generation batch measured: fewer rows pay the per-token overhead more often, more "
                   "keep finished beams computing" if b == CPU_EVAL_BATCH else "the largest that fits, up to "
                   f"{CPU_EVAL_BATCH}")
            return b, (f"{b}: {how}; {b} x {beams} beams need {gib(need)} of the {gib(setting.budget)} budget; "
                       "batches sorted longest first, summaries restored to dataset order")
        how = "the cap" if b >= EVAL_BATCH_CAP else "the largest power-of-two multiple of the micro-batch that fits"
        return b, (f"{b}: no gradients or backward activations in generation; {b} x {beams} beams need "
                   f"{gib(need)} of the {gib(setting.budget)} budget with the training states kept ({how}); "
                   "batches sorted longest first, summaries restored to dataset order")
    return micro, f"{micro}: the training micro-batch (larger generation batches do not fit)"


def _pad_multiple(cfg: DialsumConfig) -> tuple[int, str]:
    """Never past the lengths the memory plan is for: a multiple that divides both max lengths."""
    d = cfg.data
    lengths = f"data.max_source_length {d.max_source_length} and data.max_target_length {d.max_target_length}"
    if d.pad_to_multiple_of is not None:
        if d.max_source_length % d.pad_to_multiple_of or d.max_target_length % d.pad_to_multiple_of:
            raise UserError(f"data.pad_to_multiple_of: {d.pad_to_multiple_of} does not divide {lengths}; padding "
                            "would pass the lengths memory is planned for (use a divisor of both, or 1 for off)")
        return d.pad_to_multiple_of, f"{d.pad_to_multiple_of}: pinned (data.pad_to_multiple_of)"
    multiple = math.gcd(PAD_MULTIPLE, d.max_source_length, d.max_target_length)
    if multiple == 1:
        return 1, f"1 (off): no multiple of 2 divides both {lengths}, and padding must not pass them"
    fits = "" if multiple == PAD_MULTIPLE else f" (the largest divisor of {PAD_MULTIPLE} that divides {lengths})"
    return multiple, (f"{multiple}{fits}: batch lengths rounded up to a multiple of {multiple}, so a run meets "
                      f"1/{multiple} as many shapes (on CPU oneDNN keeps a kernel per shape and a rank's memory grows "
                      "with them; tensor cores take multiples of 8); pads are masked out of attention and loss")


def _workers(pinned: int | None, device: str, topology: Topology, nproc: int) -> tuple[int, str]:
    if pinned is not None:
        return pinned, f"{pinned}: pinned (training.dataloader_num_workers)"
    threads = max(1, topology.cpu_cores // nproc)  # OMP_NUM_THREADS per rank (_rank_env)
    if device == "cpu":
        return 0, (f"0: every core computes ({nproc} rank(s) x {threads} threads on {topology.cpu_cores} cores) and "
                   "batches are pre-tokenized ids (collation is cheap); a worker would take a core from the maths")
    spare = min(2, max(0, threads - 1))
    return spare, f"{spare}: {threads} cores per rank, one drives the GPU; pre-tokenized ids need few workers"


def speed_choices(cfg: DialsumConfig, topology: Topology, c: Candidate, *, micro: int, nproc: int,
                  setting: Setting | None, model_states: int, world: int, use_deepspeed: bool) -> SpeedChoices:
    """Length-grouped training batches, generation batches sized for inference memory, the fused AdamW, loader
    workers from the cores left per rank, batch lengths padded to a multiple of 8, and DDP's unused-parameter search
    only where the model needs it."""
    t = cfg.training
    device = "cuda" if topology.gpus else "cpu"
    group = t.group_by_length is not False
    causal = setting is not None and setting.spec.task == "causal"
    measured = ("" if causal else "; DialogSum train padding 43% -> 1.8% of encoder tokens")
    group_reason = ("off: pinned (training.group_by_length)" if not group else
                    f"on{': pinned' if t.group_by_length else ''}: training batches of similar "
                    f"{'prompt + summary' if causal else 'source'} length (transformers' LengthGroupedSampler: random "
                    f"megabatches of 50 batches, each sorted), same samples an epoch{measured}")
    eval_batch, eval_reason = _eval_batch(cfg, setting, c, micro, model_states)
    if t.optim != "auto":
        optim, optim_reason = t.optim, f"{t.optim}: pinned (training.optim)"
    elif c.offload_optimizer:
        optim, optim_reason = "adamw_torch", "adamw_torch: optimizer states offloaded (DeepSpeed steps them on the CPU)"
    elif _fused_adamw_available():
        optim, optim_reason = "adamw_torch_fused", "adamw_torch_fused: same AdamW update in fused kernels (torch >= 2.8)"
    else:
        optim, optim_reason = "adamw_torch", "adamw_torch: no fused AdamW before torch 2.8"
    workers, workers_reason = _workers(t.dataloader_num_workers, device, topology, nproc)
    pad, pad_reason = _pad_multiple(cfg)
    unused, unused_reason = _find_unused(setting, use_deepspeed, world)
    return SpeedChoices(group, eval_batch, optim, workers, pad, unused,
                        {"group_by_length": group_reason, "eval_batch_size": eval_reason, "optim": optim_reason,
                         "dataloader_num_workers": workers_reason, "pad_to_multiple_of": pad_reason,
                         "find_unused_parameters": unused_reason})


def loads_partitioned(stage: int, world: int, method: str, device: str) -> bool:
    """Whether the ranks build the model as its ZeRO-3 partitions (zero.Init, engine.modeling.partitioned_loading)
    instead of each loading all of it; the host-RAM estimate and the engine's loading both follow this one answer.
    Not for QLoRA (transformers skips zero.Init for a quantized base), nor for adapters on CPU ranks (PEFT's ZeRO-3
    set-up of trainable token rows, the speaker tags, is CUDA-only)."""
    return stage == 3 and world > 1 and method != "qlora" and (device == "cuda" or method == "full")


def _gather_for_generation(cfg: DialsumConfig, setting: Setting | None, c: Candidate,
                           eval_batch: int) -> tuple[bool, str]:
    """ZeRO-3 evaluation: gather the whole model once per evaluation when it fits one rank beside the training
    states and the generation batch; else every generated token all-gathers every layer again."""
    pinned = cfg.parallel.gather_for_generation
    if pinned is not None:
        return pinned, f"{'on' if pinned else 'off'}: pinned (parallel.gather_for_generation)"
    if setting is None or not setting.spec.has_architecture:
        return False, "off: the model's sizes are not known; parameters are gathered layer by layer for each token"
    if c.offload_params:
        return False, "off: parameters are offloaded to the CPU; they are gathered layer by layer for each token"
    fp = setting.footprint(c, 1)
    rows = eval_batch * cfg.generation.num_beams
    need = (fp.model_states + fp.overhead + setting.weight_bytes()
            + generation_bytes(setting.spec, rows=rows, source_length=cfg.data.max_source_length,
                               target_length=cfg.generation.max_new_tokens + 1, precision=setting.precision,
                               device=setting.device))
    if need <= setting.budget:
        return True, (f"on: the whole model ({gib(setting.weight_bytes())}) is gathered once per evaluation instead "
                      f"of layer by layer for every generated token; with the ZeRO-3 states and {rows} generating rows "
                      f"it needs {gib(need)} of the {gib(setting.budget)} budget")
    return False, (f"off: the whole model with the ZeRO-3 states and {rows} generating rows would need {gib(need)} of "
                   f"the {gib(setting.budget)} budget; parameters are gathered layer by layer for each token")


def _find_unused(setting: Setting | None, use_deepspeed: bool, world: int) -> tuple[bool, str]:
    """DDP's search for parameters without a gradient: a walk of the autograd graph after every forward, and a
    warning each run when there are none. On only where the model has such parameters (or they are unknown)."""
    if use_deepspeed or world == 1:
        return False, f"off: {'DeepSpeed reduces gradients itself' if use_deepspeed else 'one rank, no DDP'}"
    unused = setting.spec.unused_parameters if setting is not None else None
    if unused is None:
        return True, "on: which parameters get gradients is not known for this model (transformers' default)"
    if unused:
        return True, f"on: {len(unused)} trainable parameter(s) get no gradient in a training step (e.g. {unused[0]})"
    return False, ("off: every trainable parameter gets a gradient in a training step (traced on fake tensors), so "
                   "DDP skips its graph walk after every forward")
