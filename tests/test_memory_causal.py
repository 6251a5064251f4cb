"""Decoder-only memory model: ModelSpec of published causal configs (their parameter counts), the activation
formulas of launcher/memory_causal.py against the fake-tensor trace of one training step, and their directions."""
from __future__ import annotations

from dataclasses import replace

import pytest

from launcher.memory_estimate import AdapterSpec, activation_bytes, generation_bytes, load_configs, model_spec

FIXTURES = "tests/fixtures/model_configs"
PUBLISHED = {"llama-3-8b": 8_030_261_248, "llama-3.2-1b": 1_235_814_400, "llama-3.1-70b": 70_553_706_496,
             "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512, "qwen3-4b": 4_022_468_096,
             "solar-10.7b": 10_731_524_096, "gemma-2-2b": 2_614_341_888}
UNTIED = {"llama-3-8b", "llama-3.1-70b", "qwen2.5-7b", "solar-10.7b", "polyglot-ko-5.8b"}
LORA = AdapterSpec("lora", 16, ("all-linear",), dropout=0.05)


def _spec(repo_root, name):
    return model_spec(repo_root / FIXTURES / name)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_causal_fixtures_count_the_published_parameters(name, repo_root):
    spec = _spec(repo_root, name)
    assert spec.params == PUBLISHED[name]
    assert spec.tied_lm_head == (name not in UNTIED)
    assert spec.task == "causal" and spec.has_architecture and spec.encoder_layers == 0


def test_polyglot_ko_counts_its_config(repo_root):
    """GPT-NeoX: per layer a fused QKV (with bias), dense, two MLP projections (with bias) and two LayerNorms;
    untied embedding and output head, a final LayerNorm."""
    spec = _spec(repo_root, "polyglot-ko-5.8b")
    h, f, v, n = 4096, 16384, 30080, 28
    layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h) + 4 * h
    assert spec.params == n * layer + 2 * v * h + 2 * h
    assert (spec.gated_ffn, spec.rotary_fraction, spec.kv_heads) == (False, 0.5, 16)


def test_causal_spec_reads_decoder_sizes(repo_root):
    llama = _spec(repo_root, "llama-3-8b")
    assert (llama.decoder_layers, llama.hidden_size, llama.ffn_size, llama.heads, llama.kv_heads) == (32, 4096, 14336,
                                                                                                        32, 8)
    assert (llama.attention_inner, llama.gated_ffn, llama.vocab_size, llama.rotary_fraction) == (4096, True, 128256,
                                                                                                 1.0)
    qwen3, gemma = _spec(repo_root, "qwen3-4b"), _spec(repo_root, "gemma-2-2b")
    assert qwen3.attention_inner == 32 * 128 and gemma.attention_inner == 8 * 256   # head_dim from the config
    assert gemma.gated_ffn and gemma.attn_implementation == "eager"


# 2-layer copies, small enough to trace in about a second each
SHAPES = [("qwen2.5-0.5b", "bf16", False, None), ("llama-3.2-1b", "fp32", True, LORA),
          ("gemma-2-2b", "bf16", False, LORA), ("qwen3-4b", "fp32", True, LORA),
          ("polyglot-ko-5.8b", "bf16", False, None), ("polyglot-ko-5.8b", "bf16", True, LORA)]


@pytest.mark.parametrize("name,precision,checkpointing,adapters", SHAPES)
def test_formula_within_10_percent_of_the_trace(name, precision, checkpointing, adapters, repo_root):
    from launcher.memory_estimate import spec_from_hf_config
    from launcher.memory_trace import traced_activation_bytes, with_layers

    hf_config, raw = load_configs(repo_root / FIXTURES / name)
    small = with_layers(hf_config, 2)
    kw = dict(micro_batch=1, source_length=512, target_length=128, precision=precision, checkpointing=checkpointing,
              adapters=adapters)
    traced = traced_activation_bytes(small, raw, **kw)
    assert activation_bytes(spec_from_hf_config(small, raw), device="cpu", **kw) == pytest.approx(traced, rel=0.10)


def test_deep_causal_models_are_traced_as_scaled_layer_copies(repo_root):
    """Llama-3.1-70B's 80 layers: traced as 2- and 3-layer copies, in seconds."""
    import time

    from launcher.memory_trace import traced_activation_bytes

    hf_config, raw = load_configs(repo_root / FIXTURES / "llama-3.1-70b")
    kw = dict(micro_batch=1, source_length=256, target_length=64, precision="bf16", checkpointing=True)
    start = time.perf_counter()
    traced = traced_activation_bytes(hf_config, raw, **kw)
    assert time.perf_counter() - start < 30   # loose: about 8 s on an idle 2-core machine, 26 s beside a benchmark
    formula = activation_bytes(_spec(repo_root, "llama-3.1-70b"), device="cpu", **kw)
    assert formula == pytest.approx(traced, rel=0.10)


def test_causal_predictions_move_the_right_way(repo_root):
    spec = _spec(repo_root, "llama-3-8b")
    kw = dict(micro_batch=1, target_length=256, precision="bf16", device="cpu")
    full = activation_bytes(spec, source_length=1024, checkpointing=False, **kw)
    assert activation_bytes(spec, source_length=1024, checkpointing=True, **kw) < full / 3
    assert activation_bytes(spec, source_length=2048, checkpointing=False, **kw) > full
    lora = activation_bytes(spec, source_length=1024, checkpointing=False, adapters=LORA, **kw)
    no_dropout = activation_bytes(spec, source_length=1024, checkpointing=False, adapters=replace(LORA, dropout=0.0),
                                  **kw)
    assert lora > no_dropout   # each adapted layer keeps a dropped-out copy of its input and the noise
    qlora = activation_bytes(spec, source_length=1024, checkpointing=False, adapters=replace(LORA, method="qlora"),
                             **kw)
    assert qlora - lora == 2 * 4096 * 14336   # one dequantized bf16 MLP weight
    assert generation_bytes(spec, rows=4, source_length=1024, target_length=256, precision="bf16", device="cpu") > 0


def test_the_trace_counts_what_this_machines_16_bit_bmm_allocates_for_an_expanded_operand(repo_root):
    """The logits of a frozen LM head (adapters): torch's matmul runs a bmm over the weight expanded to the batch. On
    some CPUs (AVX-512 bf16) the 16-bit kernel first copies that non-contiguous view (torch's profiler: the step's
    largest allocation for Qwen3-4B LoRA), on others (AVX2) it reads the strides; fake tensors cannot show which. The
    trace's peak must equal the real one at a size the probe did not use, for the expanded and a contiguous operand,
    and the formula's head copy must follow the same answer."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from launcher.cpu_kernels import bmm_copies_strided_operand, profiled_peak_bytes
    from launcher.memory_causal import cpu_head_copy
    from launcher.memory_trace import PeakBytes

    def real_peak(weight_view) -> int:
        hidden = torch.randn(1, 16, 1024, dtype=torch.bfloat16)
        return profiled_peak_bytes(lambda: torch.bmm(hidden, weight_view))

    def traced_peak(expanded: bool) -> int:
        with FakeTensorMode():
            hidden = torch.randn(1, 16, 1024, dtype=torch.bfloat16)
            weight = torch.randn(4096, 1024, dtype=torch.bfloat16)
            operand = weight.t().expand(1, -1, -1) if expanded else weight.t().contiguous()[None]
            with PeakBytes([hidden, operand]) as counter:
                torch.bmm(hidden, operand)
        return counter.peak

    weight = torch.randn(4096, 1024, dtype=torch.bfloat16)            # V x h
    output, copy = 16 * 4096 * 2, 4096 * 1024 * 2
    copies = bmm_copies_strided_operand(torch.bfloat16)
    assert real_peak(weight.t().expand(1, -1, -1)) == output + (copy if copies else 0)
    assert traced_peak(expanded=True) == output + (copy if copies else 0)
    assert real_peak(weight.t().contiguous()[None]) == output == traced_peak(expanded=False)
    spec = _spec(repo_root, "llama-3.2-1b")
    assert cpu_head_copy(spec, "bf16", "cpu", frozen=True) == (spec.vocab_size * spec.hidden_size * 2 if copies else 0)
    assert cpu_head_copy(spec, "bf16", "cuda", frozen=True) == cpu_head_copy(spec, "fp32", "cpu", frozen=True) == 0
