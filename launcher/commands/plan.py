"""`dialsum plan`: the plan for a config on this (or a described) machine, one reason per decision and the predicted
per-GPU memory of every ZeRO stage; or, with --model-params, the same for a bare parameter count sized as a Llama-3-shaped decoder."""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys

from engine.config import add_config_arguments, config_from_dict
from engine.errors import UserError
from engine.plan import Plan

PLAN_RUN_ID = "plan-only"   # `dialsum plan` launches nothing; `dialsum launch` assigns the real run id
DECISIONS = ("world_size", "method", "precision", "zero_stage", "offload", "gradient_checkpointing", "micro_batch_size",
             "deepspeed", "group_by_length", "eval_batch_size", "optim", "dataloader_num_workers",
             "pad_to_multiple_of", "find_unused_parameters", "gather_for_generation")
_COUNT = re.compile(r"\s*(\d+(?:\.\d+)?(?:[eE]\d+)?)\s*([kKmMbBtT]?)\s*")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plan", help="show the hardware-aware plan (ZeRO stage, offload, batch, precision) and why")
    add_config_arguments(parser, required=False)  # CONFIG is optional with --model-params
    parser.add_argument("--topology-file", default=None, help="plan for a described topology (YAML/JSON) instead of "
                        "this machine")
    parser.add_argument("--nproc", type=int, default=None, help="rank processes per node (default: GPUs, or 1 on CPU)")
    parser.add_argument("--nnodes", type=int, default=None, help="nodes (default: the topology's cluster view)")
    parser.add_argument("--nodes", dest="nnodes", type=int, help=argparse.SUPPRESS)  # deprecated spelling
    parser.add_argument("--model-params", default=None, metavar="N",
                        help="plan for a bare parameter count instead of a config (e.g. 7e9, 350M, 7B)")
    parser.add_argument("--gpus", type=int, default=None, help="with --model-params: GPUs per node")
    parser.add_argument("--gpu-memory", default=None, metavar="SIZE", help="with --model-params: memory of one GPU "
                        "(80GiB binary, 80GB decimal)")
    parser.add_argument("--host-memory", default="1TiB", metavar="SIZE", help="with --model-params: host RAM per node")
    parser.add_argument("--json", action="store_true", help="print the Plan (with per-stage memory) as JSON")
    parser.add_argument("--trace", action="store_true", help="plan with activations traced on fake tensors (one "
                        "training step of the model class, no real memory) next to the formula; "
                        "config: parallel.trace_memory")
    parser.set_defaults(func=run)


def parse_count(text: str) -> int:
    """'7e9', '350M', '7B', '1.5T' -> parameters."""
    match = _COUNT.fullmatch(text)
    if not match:
        raise UserError(f"--model-params: expected a count like 7e9, 350M or 7B, got {text!r}")
    scale = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2).lower()]
    count = int(float(match.group(1)) * scale)
    if count < 1:
        raise UserError(f"--model-params: must be >= 1, got {text!r}")
    return count


def _bare_plan(args: argparse.Namespace) -> Plan:
    from engine.schema import DialsumConfig
    from launcher.memory_estimate import assumed_decoder_spec
    from launcher.planner import plan_for_spec
    from launcher.topology import ClusterInfo, GPUInfo, Topology, parse_size

    if args.config or args.extra_configs or args.overrides or args.topology_file:
        raise UserError("--model-params: plans a bare parameter count; give no CONFIG, --config, --set or "
                        "--topology-file with it")
    if not args.gpus or not args.gpu_memory:
        raise UserError("--model-params: needs --gpus G and --gpu-memory SIZE (e.g. --gpus 8 --gpu-memory 80GB)")
    params, nodes = parse_count(args.model_params), args.nnodes or 1
    memory = parse_size(args.gpu_memory, "--gpu-memory")
    gpus = [GPUInfo(index=i, name="GPU", memory_total_bytes=memory, compute_capability="8.0", bf16=True)
            for i in range(args.gpus)]
    links = [["self" if i == j else "nvlink" for j in range(args.gpus)] for i in range(args.gpus)]
    topology = Topology(hostname="described", cpu_cores=0, ram_bytes=parse_size(args.host_memory, "--host-memory"),
                        cpu_bf16=False, gpus=gpus, links=links, cluster=ClusterInfo(nnodes=nodes), source="args")
    cfg = DialsumConfig()
    cfg.training.global_batch_size = nodes * (args.nproc or args.gpus)  # one sample per rank
    spec = assumed_decoder_spec(params)
    plan = plan_for_spec(cfg, spec, topology, run_id=PLAN_RUN_ID, nnodes=nodes, nproc_per_node=args.nproc)
    plan.reasons = {"model": (f"bare count of {params / 1e9:.2f}B parameters, sized as a Llama-3-shaped decoder "
                              f"(hidden {spec.hidden_size}, {spec.decoder_layers} layers, {spec.heads} heads / "
                              f"{spec.kv_heads} K/V heads, FFN {spec.ffn_size}, vocabulary {spec.vocab_size}) at "
                              f"{cfg.data.max_source_length} + {cfg.data.max_target_length} tokens; GPUs assumed "
                              "bf16-capable and NVLink-connected within a node; plan a CONFIG naming the model's "
                              "config.json for its own shapes"), **plan.reasons}
    return plan


def _config_plan(args: argparse.Namespace) -> Plan:
    import os

    from engine.config import load_config
    from engine.quiet import quiet_libraries
    from launcher.planner import make_plan
    from launcher.topology import detect_topology, load_topology

    if not args.config:
        raise UserError("plan: give a CONFIG file, or --model-params N --gpus G --gpu-memory SIZE")
    quiet_libraries()  # model configs are read (and traced) with the engine's libraries
    env = dict(os.environ)  # the one read of the environment: config layer, accelerate, threads
    loaded = load_config([*args.config, *args.extra_configs], overrides=args.overrides, env=env)
    topology = load_topology(args.topology_file) if args.topology_file else detect_topology(env)
    return make_plan(loaded, topology, env=env, run_id=PLAN_RUN_ID, nnodes=args.nnodes, nproc_per_node=args.nproc,
                     trace=args.trace)


def run(args: argparse.Namespace) -> int:
    from launcher.plan_history import past_predictions

    with contextlib.redirect_stdout(sys.stderr):  # library chatter (DeepSpeed logs to stdout) must not mix with --json
        plan = _bare_plan(args) if args.model_params else _config_plan(args)
    history = [] if args.model_params else past_predictions(config_from_dict(plan.config))
    if args.json:
        print(json.dumps({**json.loads(plan.to_json()), "past_predictions": history}, indent=2, sort_keys=True))
    else:
        print_plan(plan)
        print_history(history)
    return 0


def print_history(rows: list[dict]) -> None:
    """Predicted vs measured peak memory of past runs of the same model (positive error: the plan over-predicted)."""
    if not rows:
        return
    from launcher.display import console as make_console
    from rich.table import Table

    table = Table(title="Past runs of this model: predicted vs measured peak memory per rank")
    for column in ("run", "ranks", "ZeRO", "micro", "device", "predicted", "measured", "error"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(r["run_id"], str(r["world_size"]), str(r["zero_stage"]), str(r["micro_batch_size"]), r["device"],
                      _gib(r["predicted_bytes"]), _gib(r["measured_bytes"]), f"{r['prediction_error']:+.0%}")
    make_console().print(table)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def print_plan(plan: Plan) -> None:
    """The decision table (decision | value | reason) and the per-stage memory table."""
    from launcher.display import console as make_console
    from rich.table import Table

    console = make_console()
    if "model" in plan.reasons:
        console.print(f"[bold]Model:[/bold] {plan.reasons['model']}")
    if "memory" in plan.reasons:
        console.print(f"[bold]Memory:[/bold] {plan.reasons['memory']}")
    offload = "optimizer+params" if plan.offload_params else ("optimizer" if plan.offload_optimizer else "none")
    values = {
        "world_size": f"{plan.world_size} ({plan.nnodes}x{plan.nproc_per_node}, {plan.device}/{plan.backend})",
        "method": plan.method,
        "precision": plan.precision,
        "zero_stage": f"{plan.zero_stage} ({'DeepSpeed' if plan.use_deepspeed else 'DDP'})",
        "offload": offload,
        "gradient_checkpointing": "on" if plan.gradient_checkpointing else "off",
        "micro_batch_size": f"{plan.micro_batch_size} (x{plan.gradient_accumulation_steps} accumulation, "
                            f"global {plan.global_batch_size})",
        "deepspeed": "on" if plan.use_deepspeed else "off",
        "group_by_length": "on" if plan.group_by_length else "off",
        "eval_batch_size": str(plan.eval_batch_size or plan.micro_batch_size),
        "optim": plan.optim,
        "dataloader_num_workers": str(plan.dataloader_num_workers),
        "pad_to_multiple_of": str(plan.pad_to_multiple_of),
        "find_unused_parameters": "on" if plan.find_unused_parameters else "off",
        "gather_for_generation": "on" if plan.gather_for_generation else "off",
    }
    table = Table(title="Plan", show_lines=False)
    for column in ("decision", "value", "reason"):
        table.add_column(column, overflow="fold")
    for key in DECISIONS:
        if key not in plan.reasons:  # a plan saved before the decision existed
            continue
        reason = plan.reasons[key]
        table.add_row(key, values[key], reason.split(": ", 1)[1] if ": " in reason else reason)
    if "deepspeed_config" in plan.reasons:  # whose DeepSpeed config runs: dialsum's or the user's file, and what was filled
        whose, _, why = plan.reasons["deepspeed_config"].partition(": ")
        table.add_row("deepspeed_config", whose, why)
    console.print(table)
    if not plan.memory:
        return
    unit = "GPU" if plan.device == "cuda" else "rank"
    mem = Table(title=f"Predicted memory per {unit} (at the chosen micro-batch and checkpointing)")
    for column in ("ZeRO stage", "model states", "activations", "overhead", "total", "fits"):
        mem.add_column(column, justify="right")
    for stage in "0123":
        row = plan.memory[stage]
        chosen = " *" if int(stage) == plan.zero_stage else ""
        mem.add_row(stage + chosen, _gib(row["model_state_bytes_per_gpu"]), _gib(row["activation_bytes_per_gpu"]),
                    _gib(row["overhead_bytes_per_gpu"]), _gib(row["total"]), "yes" if row["fits"] else "no")
    console.print(mem)
    m = plan.memory
    device = "GPU memory" if plan.device == "cuda" else f"RAM / {plan.nproc_per_node} rank(s)"
    host = f"; host RAM per node {_gib(m['cpu_bytes_per_node'])}" if plan.device == "cuda" else ""
    console.print(f"Predicted peak {_gib(m['predicted_peak_bytes_per_gpu'])} per {unit} of a "
                  f"{_gib(m['budget_bytes_per_gpu'])} budget ({_gib(m['device_bytes'])} {device}){host}")
    if "trace" in m:
        t = m["trace"]
        rows = "; ".join(f"checkpointing {k}: formula {_gib(r['formula_bytes'])}, trace {_gib(r['traced_bytes'])}"
                         for k, r in t["checkpointing"].items())
        console.print(f"Activations at micro-batch {t['micro_batch_size']} (planned with the trace, "
                      f"{t['seconds']:.1f} s): {rows}")
