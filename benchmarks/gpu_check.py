"""The GPU check (issue 27): every part in its own process with its own timeout, one JSON file for all of them.

python benchmarks/gpu_check.py OUT_DIR [--dry-run]     (benchmarks/gpu_check.sh runs it: the log, the wheelhouse)

Random weights of published shapes (tests/fixtures/model_configs, bench_gpu.py's BART sizes), no hub. Each training
case records the planner's predicted peak (without its CUDA-context allowance),
torch.cuda.max_memory_allocated, whether the first try fit, tokens/s and MFU, for dialsum's plan and for the plain
trainer at its defaults (Seq2SeqTrainer, TRL SFTTrainer). A part that fails or runs out of time is recorded as such
and the others still run. --dry-run: the same parts on CPU with tiny shapes (what CI runs).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CONFIGS = REPO_ROOT / "tests" / "fixtures" / "model_configs"
sys.path[:0] = [str(BENCH_DIR), str(REPO_ROOT)]

TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=4096, max_position_embeddings=512)
TINY_BART = dict(d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                 encoder_ffn_dim=64, decoder_ffn_dim=64)


# ---------------------------------------------------------------------------------------------------- shared pieces

PART_OUT: Path | None = None  # the running part's result file (set in its own process)


def save_partial(result: dict) -> None:
    """What the part has measured so far: kept in the report if it then runs out of time."""
    if PART_OUT is not None:
        PART_OUT.write_text(json.dumps({"status": "partial", "result": result}, indent=1, default=str))


def gpu_env() -> dict[str, str]:
    """bench_env() sets DS_ACCELERATOR=cpu for CPU benchmarks; on a GPU DeepSpeed must find CUDA."""
    return {} if os.environ.get("DS_ACCELERATOR") == "cpu" else {"DS_ACCELERATOR": "cuda"}


def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def plan_for(work: Path, model_dir: Path, *, source: int, target: int, global_batch: int, method: str = "full",
             trace: bool = False):
    """dialsum's plan for this machine (launcher.planner.make_plan) of a config that names `model_dir`."""
    import yaml

    cfg = {"experiment": {"name": "gpu-check", "output_root": str(work / "plan-out")},
           "model": {"name_or_path": str(model_dir)},
           "data": {"max_source_length": source, "max_target_length": target},
           "training": {"global_batch_size": global_batch, "method": method}}
    path = work / f"plan-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return plan_of(path, trace=trace)


def plan_of(config: Path, trace: bool = False):
    from engine.config import load_config
    from launcher.planner import make_plan
    from launcher.topology import detect_topology

    return make_plan(load_config([str(config)]), detect_topology(), run_id="gpu-check", trace=trace)


def oom_events(config: Path) -> int:
    """OOM back-offs and restarts recorded in the tracker of the runs of `config` (0: the plan fit first time)."""
    from engine.config import load_config
    from engine.store.db import open_store, store_uri
    from engine.store.tracker import Tracker

    tracker = Tracker(open_store(store_uri(load_config([str(config)]).config)))
    return sum(len(tracker.events_of_kind(kind, status="completed")) for kind in ("oom_backoff", "oom_restart"))


def plan_summary(plan) -> dict:
    return {"precision": plan.precision, "zero_stage": plan.zero_stage, "use_deepspeed": plan.use_deepspeed,
            "offload_optimizer": plan.offload_optimizer, "micro_batch_size": plan.micro_batch_size,
            "gradient_accumulation_steps": plan.gradient_accumulation_steps,
            "gradient_checkpointing": plan.gradient_checkpointing}


def prediction(plan) -> tuple[int | None, str | None]:
    """(the plan's predicted peak per GPU without its CUDA-context allowance: what max_memory_allocated sees, None),
    or (None, why) for a plan without a memory prediction."""
    memory = plan.memory or {}
    if "predicted_peak_bytes_per_gpu" not in memory:
        return None, "the plan has no memory prediction (model sizes unknown)"
    return memory["predicted_peak_bytes_per_gpu"] - memory.get("overhead_bytes_per_gpu", 0), None


def peak_flops() -> float | None:
    from engine.callbacks import peak_flops_for_device

    return peak_flops_for_device()


def mfu(flops_per_token: float, tokens_per_s: float | None) -> float | None:
    peak = peak_flops()
    return round(flops_per_token * tokens_per_s / peak, 4) if peak and tokens_per_s else None


def write_llama(out: Path, name: str, dry_run: bool) -> Path:
    """The published Llama config (tests/fixtures), or its tiny stand-in under --dry-run."""
    if not dry_run:
        return CONFIGS / name
    raw = json.loads((CONFIGS / name / "config.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({**raw, **TINY_LLAMA}))
    return out


# ---------------------------------------------------------------------------------------------------- causal training

def step_clock():
    """A TrainerCallback noting perf_counter at every optimizer step's end (defined here: transformers is heavy)."""
    from transformers import TrainerCallback

    class StepEnds(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    return StepEnds()


def token_rows(n: int, prompt: int, completion: int, vocab: int) -> list[dict]:
    """Random prompt + completion ids; the loss on the completion only (as the causal task trains)."""
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (n, prompt + completion), generator=g).tolist()
    return [{"input_ids": row, "attention_mask": [1] * len(row), "labels": [-100] * prompt + row[prompt:]}
            for row in ids]


def build_causal(model_dir: Path, dtype, method: str):
    """(model, parameters): a random-weight model of the config on this device, its parameter count before any
    quantization; QLoRA: its linear layers (not the head) as NF4 4-bit."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    device = "cuda" if on_gpu() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir), dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    if method == "qlora":
        import bitsandbytes as bnb

        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.Linear) and name != "lm_head":
                    q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True,
                                          quant_storage=torch.bfloat16, device="meta")
                    q.weight = bnb.nn.Params4bit(child.weight.data.cpu(), requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True, quant_storage=torch.bfloat16).to(device)
                    setattr(parent, name, q)
        model.is_loaded_in_4bit = True
    return model, params


def tokenizer_for():
    """The shipped demo model's tokenizer (4,000 ids: they fit every vocabulary here); it has a pad token."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(REPO_ROOT / "data" / "mini-bart-pretrained")


def train_causal(side: str, model_dir: Path, work: Path, *, method: str, prompt: int, completion: int, steps: int,
                 warmup: int, micro: int | None = None, accum: int = 1, checkpointing: bool = False,
                 precision: str = "bf16") -> dict:
    """A few optimizer steps of one side: "dialsum" at the plan's micro-batch, accumulation, checkpointing and
    precision (adapters by engine.adapters.adapt), "trl" as TRL's SFTTrainer at its defaults (SFTConfig() with
    max_length = the sequence; LoRA by a default peft LoraConfig). Peak allocated, first-try fit, tokens/s, MFU."""
    import torch
    from datasets import Dataset

    from engine.callbacks import estimate_flops_per_token

    import gc

    gpu = on_gpu()
    gc.collect()  # the previous side's model and Trainer (reference cycles): not in this side's peak
    if gpu:
        torch.cuda.empty_cache()
    adapters = method in ("lora", "qlora")
    # a frozen base is held in bf16 (engine.adapters.base_dtype on a bf16 plan); a full fine-tune's weights in fp32
    model, params = build_causal(model_dir, torch.bfloat16 if adapters else None, method)
    tok = tokenizer_for()
    clock = step_clock()
    rows = token_rows(steps * 8 if side == "trl" else steps * micro * accum, prompt, completion,  # SFT's batch: 8
                      model.config.vocab_size)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    if side == "dialsum":
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        from engine.config import load_config

        if adapters:
            import yaml

            cfg_file = work / f"{method}.yaml"
            cfg_file.write_text(yaml.safe_dump({"model": {"name_or_path": str(model_dir)},
                                                "training": {"method": method}}))
            from engine.adapters import adapt

            model = adapt(model, load_config([str(cfg_file)]).config, "causal", tok, checkpointing)
        args = TrainingArguments(output_dir=str(work / f"out-{side}"), max_steps=steps,
                                 per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
                                 gradient_checkpointing=checkpointing, bf16=precision == "bf16", use_cpu=not gpu,
                                 logging_steps=steps, save_strategy="no", report_to=[], learning_rate=1e-4,
                                 gradient_checkpointing_kwargs={"use_reentrant": False}, disable_tqdm=True)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=DataCollatorForSeq2Seq(tok, padding=True), callbacks=[clock])
    else:
        from trl import SFTConfig, SFTTrainer

        peft = None
        if adapters:
            from peft import LoraConfig

            peft = LoraConfig(task_type="CAUSAL_LM")
        # defaults but the length: SFT's max_length (1024) would cut every completion off at 1024/256
        args = SFTConfig(output_dir=str(work / f"out-{side}"), max_steps=steps, report_to=[], save_strategy="no",
                         max_length=prompt + completion, use_cpu=not gpu, disable_tqdm=True,
                         **({} if gpu else {"bf16": False}))
        data = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": [0] * prompt + [1] * completion}
                                  for r in rows])  # tokenized: SFTTrainer trains on the completion only
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, peft_config=peft,
                             callbacks=[clock])
    settings = {k: getattr(trainer.args, k) for k in ("per_device_train_batch_size", "gradient_accumulation_steps",
                                                     "gradient_checkpointing", "bf16")}
    if side == "trl":
        settings["max_length"] = trainer.args.max_length
    out = {"side": side, "settings": settings, "fit_first_try": True}
    try:
        trainer.train()
    except torch.OutOfMemoryError as exc:
        return {**out, "fit_first_try": False, "error": str(exc).splitlines()[0]}
    batch = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    ends = clock.ends
    tps = (batch * (prompt + completion) * (len(ends) - 1 - warmup) / (ends[-1] - ends[warmup])
           if len(ends) > warmup + 1 else None)
    return {**out, "tokens_per_s": round(tps, 1) if tps else None,
            "mfu": mfu(estimate_flops_per_token(params, frozen=adapters), tps),
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if gpu else None}


def causal_case(work: Path, model_dir: Path, *, method: str, prompt: int, completion: int, global_batch: int,
                steps: int, warmup: int) -> dict:
    plan = plan_for(work, model_dir, source=prompt, target=completion, global_batch=global_batch, method=method)
    predicted, reason = prediction(plan)
    case = {"model": model_dir.name, "method": method, "lengths": [prompt, completion], "plan": plan_summary(plan),
            "predicted_peak_bytes": predicted, "predicted_null_reason": reason}
    common = dict(method=method, prompt=prompt, completion=completion, steps=steps, warmup=warmup)
    case["dialsum"] = train_causal("dialsum", model_dir, work, micro=plan.micro_batch_size,
                                   accum=plan.gradient_accumulation_steps, checkpointing=plan.gradient_checkpointing,
                                   precision=plan.precision, **common)
    case["trl_defaults"] = train_causal("trl", model_dir, work, **common)
    return case


# ---------------------------------------------------------------------------------------------------- the parts

def part_bart(work: Path, dry_run: bool) -> dict:
    """BART-base- and BART-large-sized at 512/128: `dialsum launch` at its plan vs the plain Seq2SeqTrainer at its
    defaults (bench_gpu.py's two sides)."""
    import yaml

    from bench_engine_vs_trainer import engine_config
    from bench_gpu import SIZES, sized_model
    from common import MINI_DIR, bench_env, build_bench_model
    from engine.callbacks import estimate_flops_per_token
    from step_timer import steady_tokens_per_s

    sizes = {"BART-base (tiny)": TINY_BART} if dry_run else SIZES
    source, target, steps, warmup = (64, 16, 4, 1) if dry_run else (512, 128, 15, 4)
    tok_dir = build_bench_model(work / "tokenizer")
    cases = []
    for name, shape in sizes.items():
        model = sized_model(tok_dir, shape, work / name.split()[0])
        settings = argparse.Namespace(seed=42, rows=200, max_source=source, max_target=target, steps=steps, lr=1e-4,
                                      batch=8 if dry_run else 32, logging_steps=steps, deepspeed=True)
        ours = work / f"timer-dialsum-{name.split()[0]}.json"
        config = engine_config(work, model, settings, 1, ours)
        cfg = yaml.safe_load(config.read_text())
        cfg["parallel"]["zero_stage"] = None  # the planner chooses
        config.write_text(yaml.safe_dump(cfg))
        plan = plan_of(config)
        predicted, reason = prediction(plan)
        case = {"model": name, "lengths": [source, target], "plan": plan_summary(plan),
                "predicted_peak_bytes": predicted, "predicted_null_reason": reason}
        launch = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", str(config), "--nproc", "1"],
                                cwd=REPO_ROOT, env=bench_env(gpu_env()), capture_output=True, text=True)
        if launch.returncode:
            raise RuntimeError(f"dialsum launch ({name}) failed ({launch.returncode}):\n{launch.stdout[-2000:]}\n"
                               f"{launch.stderr[-3000:]}")
        plain = work / f"timer-plain-{name.split()[0]}.json"
        proc = subprocess.run(
            [sys.executable, str(BENCH_DIR / "plain_trainer.py"), "--model", str(model), "--train",
             str(MINI_DIR / "train.csv"), "--rows", "200", "--out", str(work / f"plain-{name.split()[0]}"),
             "--timer-out", str(plain), "--steps", str(steps), "--global-batch", "8", "--lr", "1e-4", "--seed", "42",
             "--logging-steps", str(steps), "--max-source", str(source), "--max-target", str(target),
             "--count-tokens", *(["--cuda"] if on_gpu() else [])], cwd=REPO_ROOT, env=bench_env(gpu_env()),
            capture_output=True, text=True)
        if proc.returncode and "OutOfMemoryError" not in proc.stderr:
            raise RuntimeError(f"plain Seq2SeqTrainer ({name}) failed:\n{proc.stderr[-3000:]}")
        flops = estimate_flops_per_token(plan.memory.get("params", 0), target_to_source=target / source)
        sides = [("dialsum", json.loads(ours.read_text()), oom_events(config) == 0),
                 ("seq2seq_defaults", json.loads(plain.read_text()) if proc.returncode == 0 else None, not proc.returncode)]
        for side, timing, fit in sides:
            tps = steady_tokens_per_s(timing, warmup) if timing else None
            case[side] = {"source_tokens_per_s": round(tps, 1) if tps else None, "mfu": mfu(flops, tps),
                          "fit_first_try": fit, "max_memory_allocated_bytes": timing and timing["peak_memory_bytes"]}
        cases.append(case)
        save_partial({"cases": cases})
    return {"cases": cases}


def part_llama_1b_full(work: Path, dry_run: bool) -> dict:
    """Llama-3.2-1B-shaped, full fine-tuning at 1024/256 (bf16 where the plan says so)."""
    model = write_llama(work / "llama-3.2-1b", "llama-3.2-1b", dry_run)
    prompt, completion = (48, 16) if dry_run else (1024, 256)
    return {"cases": [causal_case(work, model, method="full", prompt=prompt, completion=completion, global_batch=8,
                                  steps=3 if dry_run else 6, warmup=1 if dry_run else 2)]}


def part_llama_8b(method: str):
    def part(work: Path, dry_run: bool) -> dict:
        if method == "qlora":
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                return {"skipped": "bitsandbytes is not importable here (pip install 'dialsum[qlora]')"}
        model = write_llama(work / "llama-3-8b", "llama-3-8b", dry_run)
        lengths = [(48, 16)] if dry_run else [(1024, 256), (2048, 256)]
        cases = []
        for p, c in lengths:
            cases.append(causal_case(work, model, method=method, prompt=p, completion=c, global_batch=8,
                                     steps=3 if dry_run else 5, warmup=1 if dry_run else 2))
            save_partial({"cases": cases})
        return {"cases": cases}
    part.__doc__ = f"Llama-3-8B-shaped with {method.upper()} (PEFT) at 1024/256 and 2048/256."
    return part


def part_trace(work: Path, dry_run: bool) -> dict:
    """The planner's formula vs its fake-tensor trace (launcher/memory_trace.py) of bart-base and bart-large at the
    planned micro-batch, on this device's kernels."""
    source, target, batch = (64, 16, 4) if dry_run else (512, 128, 32)
    rows = []
    for name in ("bart-base", "bart-large"):
        plan = plan_for(work, CONFIGS / name, source=source, target=target, global_batch=batch, trace=True)
        trace = plan.memory["trace"]
        rows.append({"model": name, "device": plan.device, "micro_batch_size": trace["micro_batch_size"],
                     "seconds": trace["seconds"], "checkpointing": trace["checkpointing"]})
    return {"cases": rows}


def part_zero3(work: Path, dry_run: bool) -> dict:
    """One DeepSpeed ZeRO-3 step on one device (the rendered config, torch AdamW as the client optimizer)."""
    import socket

    import deepspeed
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    from bench_gpu import SIZES
    from launcher.ds_config import render_deepspeed_config

    gpu = on_gpu()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    shape = TINY_BART if dry_run else SIZES["BART-base"]
    precision = "bf16" if gpu else "fp32"
    config = render_deepspeed_config(zero_stage=3, precision=precision, micro_batch_size=2,
                                     gradient_accumulation_steps=1, world_size=1, gradient_clipping=1.0,
                                     hidden_size=shape["d_model"], device="cuda" if gpu else "cpu")
    torch.manual_seed(0)
    model = BartForConditionalGeneration(BartConfig(vocab_size=1024, **shape))
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-4),
                                      config=config)
    ids = torch.randint(4, 1024, (2, 64), device=engine.device)
    labels = torch.randint(4, 1024, (2, 16), device=engine.device)
    start = time.perf_counter()
    loss = engine(input_ids=ids, labels=labels).loss
    engine.backward(loss)
    engine.step()
    return {"deepspeed": deepspeed.__version__, "accelerator": deepspeed.get_accelerator().device_name(),
            "device": str(engine.device), "zero_stage": engine.zero_optimization_stage(), "loss": float(loss),
            "step_seconds": round(time.perf_counter() - start, 3),
            "max_memory_allocated_bytes": torch.cuda.max_memory_allocated() if gpu else None}


# name: (function, timeout on a GPU, timeout under --dry-run); about 450 s in all on a GPU. The dry run checks code
# paths on CPU, often on a shared machine: its timeouts only catch a hang.
PARTS = {
    "bart": (part_bart, 170, 240),
    "llama-3.2-1b-full": (part_llama_1b_full, 60, 120),
    "llama-3-8b-lora": (part_llama_8b("lora"), 80, 120),
    "llama-3-8b-qlora": (part_llama_8b("qlora"), 60, 120),
    "trace": (part_trace, 40, 120),
    "zero3": (part_zero3, 40, 240),  # on CPU DeepSpeed JIT-builds its shm op once: ~100 s on 2 busy cores
}


def run_part(name: str, out: Path, dry_run: bool) -> int:
    """In the part's own process: run it, write its result (or its error) to `out`."""
    global PART_OUT
    PART_OUT = out
    with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as tmp:
        try:
            result = {"status": "ok", "result": PARTS[name][0](Path(tmp), dry_run)}
        except BaseException as exc:  # SystemExit from a failed sub-run included: recorded, the next part runs
            result = {"status": "failed", "error": "".join(traceback.format_exception(exc))[-4000:]}
    out.write_text(json.dumps(result, indent=1, default=str))
    return 0 if result["status"] == "ok" else 1


def machine() -> dict:
    import platform

    import torch

    gpu = on_gpu()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "gpu": torch.cuda.get_device_name() if gpu else None,
            "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if gpu else None,
            "peak_bf16_flops": peak_flops()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--dry-run", action="store_true", help="every part on CPU with tiny shapes")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)  # the child process: one part
    p.add_argument("--only", help="comma-separated parts to run (default: all)")
    a = p.parse_args(argv)
    if a.part:
        return run_part(a.part, a.out_dir, a.dry_run)
    names = a.only.split(",") if a.only else list(PARTS)
    if unknown := [n for n in names if n not in PARTS]:
        p.error(f"--only: unknown part(s) {', '.join(unknown)}; parts: {', '.join(PARTS)}")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": "", "DS_ACCELERATOR": "cpu"} if a.dry_run else {})}
    report = {"dry_run": a.dry_run, "machine": machine(), "parts": {}}
    start = time.perf_counter()
    for name in names:
        timeout = PARTS[name][2 if a.dry_run else 1]
        part_json = a.out_dir / f"part-{name}.json"
        part_json.unlink(missing_ok=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, str(part_json), "--part", name, *(["--dry-run"] if a.dry_run else [])]
        proc = subprocess.Popen(cmd, env=env, cwd=REPO_ROOT, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
            entry = (json.loads(part_json.read_text()) if part_json.is_file()
                     else {"status": "failed", "error": f"exited {proc.returncode} without a result"})
        except subprocess.TimeoutExpired:
            entry = {"status": "timed out", "error": f"still running after its {timeout} s"}
            if part_json.is_file():  # the cases it finished
                entry["result"] = json.loads(part_json.read_text())["result"]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        report["parts"][name] = entry
        part_json.unlink(missing_ok=True)
        print(f"gpu_check: {name}: {entry['status']} in {entry['seconds']} s", flush=True)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    (a.out_dir / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    failed = [n for n, e in report["parts"].items() if e["status"] != "ok"]
    print(f"gpu_check: {len(names) - len(failed)}/{len(names)} parts ok in {report['total_seconds']} s"
          f"{'; not ok: ' + ', '.join(failed) if failed else ''}; {a.out_dir / 'gpu_check.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
