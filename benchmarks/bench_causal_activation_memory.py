"""Causal activation memory: the planner's formula (launcher/memory_causal.py) and the fake-tensor trace next to what
one real CPU training step of a decoder-only model allocates.

Per case (model x method x precision x prompt/summary lengths x checkpointing), a fresh subprocess builds the fixture
config trimmed to LAYERS decoder layers (random weights, in the case's precision), wraps it in LoRA as the engine does
(engine.adapters.adapt) for the lora cases, runs one warm-up step so gradients exist, then measures the RSS rise of a
second step (benchmarks/common.rss_rise; MALLOC_MMAP_THRESHOLD_ pinned so freed tensors go back to the OS). A step is
a causal batch (prompt + summary, labels -100 on the prompt, logits_to_keep) through the engine's
CausalTrainer.compute_loss. The formula and the trace are of the same trimmed model, so the comparison needs no scaling.

    python benchmarks/bench_causal_activation_memory.py --save      # the default grid (fp32, see GRID)
    python benchmarks/bench_causal_activation_memory.py --quick     # 2 cases
    python benchmarks/bench_causal_activation_memory.py --report    # the table of the saved results, no measuring
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import REPO_ROOT, add_measurement_arguments, markdown_table, measure_cases, measure_in_child, rss_rise

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "model_configs"
RESULTS = Path(__file__).resolve().parent / "results" / "causal_activation_memory_cpu.json"
LAYERS = 2
LORA = {"method": "lora", "r": 16, "targets": ["all-linear"], "dropout": 0.05}
# (model, method, precision, prompt/summary, checkpointing). Full fine-tuning of Gemma-2-2B / Qwen3-4B in fp32 left
# out: three fp32 V x h embedding gradients (tied) beside the weights pass what a shared 24 GiB machine spares. A bf16
# case takes 30-60 s on an AVX-512-bf16 CPU.
GRID = [
    *[(m, meth, "fp32", "1024/256", False) for m in ("qwen2.5-0.5b", "llama-3.2-1b", "gemma-2-2b", "qwen3-4b",
                                                      "polyglot-ko-5.8b")
      for meth in ("full", "lora") if not (meth == "full" and m in ("gemma-2-2b", "qwen3-4b"))],
    ("qwen2.5-0.5b", "lora", "fp32", "2048/256", False), ("polyglot-ko-5.8b", "lora", "fp32", "2048/256", True),
    ("polyglot-ko-5.8b", "full", "fp32", "1024/256", True),
    ("qwen2.5-0.5b", "full", "bf16", "1024/256", False), ("qwen2.5-0.5b", "lora", "bf16", "1024/256", False),
    ("llama-3.2-1b", "lora", "bf16", "1024/256", False), ("llama-3.2-1b", "full", "bf16", "2048/256", True),
    ("gemma-2-2b", "lora", "bf16", "1024/256", False), ("polyglot-ko-5.8b", "lora", "bf16", "2048/256", True),
    ("qwen3-4b", "lora", "bf16", "1024/256", True),
]
QUICK = [("qwen2.5-0.5b", "lora", "fp32", "256/64", False), ("qwen2.5-0.5b", "full", "fp32", "256/64", True)]


def _adapters(method: str):
    from launcher.memory_estimate import AdapterSpec

    return None if method == "full" else AdapterSpec(LORA["method"], LORA["r"], tuple(LORA["targets"]), LORA["dropout"])


def _trimmed(model: str):
    from launcher.memory_estimate import load_configs
    from launcher.memory_trace import with_layers

    hf_config, raw = load_configs(FIXTURES / model)
    return with_layers(hf_config, LAYERS), raw


def measure(model: str, method: str, precision: str, lengths: str, ckpt: bool) -> dict:
    """Runs in the child: the RSS rise of one training step after a warm-up step."""
    import torch

    from launcher.memory_estimate import build_model
    from launcher.memory_trace import adapt, training_loss

    torch.manual_seed(0)
    hf_config, raw = _trimmed(model)
    net = build_model(hf_config, raw, dtype={"bf16": torch.bfloat16}.get(precision, torch.float32))
    if ckpt:
        net.gradient_checkpointing_enable()
    if method != "full":
        net = adapt(net, _adapters(method), ckpt)
    net.train()
    s, t = map(int, lengths.split("/"))
    vocab = hf_config.vocab_size
    batch = {"input_ids": torch.randint(4, vocab, (1, s + t)), "attention_mask": torch.ones(1, s + t, dtype=torch.long),
             "position_ids": torch.arange(s + t)[None], "logits_to_keep": t + 1,
             "labels": torch.cat([torch.full((1, s), -100), torch.randint(4, vocab, (1, t))], dim=1)}

    def step():
        training_loss(net, batch).backward()

    step()  # warm-up: gradients exist from here on, as in training
    return rss_rise(step)


def predict(model: str, method: str, precision: str, lengths: str, ckpt: bool) -> tuple[int, int]:
    """(formula, trace) of the trimmed model."""
    from launcher.memory_estimate import activation_bytes, spec_from_hf_config
    from launcher.memory_trace import traced_activation_bytes

    hf_config, raw = _trimmed(model)
    s, t = map(int, lengths.split("/"))
    kw = dict(micro_batch=1, source_length=s, target_length=t, precision=precision, checkpointing=ckpt,
              adapters=_adapters(method))
    return (activation_bytes(spec_from_hf_config(hf_config, raw), device="cpu", **kw),
            traced_activation_bytes(hf_config, raw, **kw))


def key(model: str, method: str, precision: str, lengths: str, ckpt: bool) -> str:
    return f"{model}|{method}|{precision}|{lengths}|ckpt {'on' if ckpt else 'off'}"


def table(results: dict) -> tuple[str, float]:
    """The markdown table and the largest |error| of the formula."""
    rows, worst = [], 0.0
    for name, r in results.items():
        model, method, precision, lengths, ckpt = name.split("|")
        case = (model, method, precision, lengths, ckpt.endswith("on"))
        predicted, traced = predict(*case)
        measured = r["measured_bytes"]
        error = predicted / measured - 1
        worst = max(worst, abs(error))
        rows.append([f"{model} {method} {precision} {lengths} ckpt {ckpt.split()[1]}", f"{predicted / 2**30:.3f}",
                     f"{traced / 2**30:.3f}", f"{measured / 2**30:.3f}", f"{error:+.1%}"])
    return markdown_table(["case", "predicted GiB", "traced GiB", "measured GiB", "error"], rows), worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="only these fixtures' cases of the grid")
    add_measurement_arguments(parser, RESULTS, quick="2 small cases (smoke test)", timeout=600)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*json.loads(args.child))))
        return
    saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    if args.report:
        print(table(saved)[0])
        return
    cases = QUICK if args.quick else [c for c in GRID if not args.models or c[0] in args.models]

    def run(case: tuple) -> dict:
        return measure_in_child(__file__, case, key(*case), timeout=args.timeout, threads=2)

    results = measure_cases(cases, key, run, RESULTS if args.save and not args.quick else None)
    text, worst = table(results)
    print(text)
    print(f"\nlargest |error| of the formula: {worst:.1%} (target 10%)")


if __name__ == "__main__":
    main()
