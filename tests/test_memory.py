"""Memory model: parameter counts from configs, DeepSpeed's estimators side by side, the ZeRO paper's numbers and the
Korthikanti activation formula."""
from __future__ import annotations

import time

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import AutoConfig, AutoModelForSeq2SeqLM

from launcher.memory_estimate import (
    ModelSpec, activation_bytes, bare_spec, cpu_bytes_per_node, model_spec, model_state_bytes, zero_paper_bytes,
)

TINY_BART = dict(model_type="bart", d_model=64, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=1000,
                 max_position_embeddings=128)
TINY_T5 = dict(model_type="t5", d_model=64, d_ff=256, num_layers=2, num_decoder_layers=3, num_heads=4, d_kv=16,
               vocab_size=1000, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
BART_7B = dict(model_type="bart", d_model=4096, encoder_layers=16, decoder_layers=16, encoder_attention_heads=32,
               decoder_attention_heads=32, encoder_ffn_dim=16384, decoder_ffn_dim=16384, vocab_size=50265)
T5_70B = dict(model_type="t5", d_model=8192, d_ff=28672, num_layers=40, num_heads=64, d_kv=128, vocab_size=32128,
              feed_forward_proj="gated-gelu")


def _real(sizes: dict):
    kwargs = dict(sizes)
    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))


def test_param_count_from_config_matches_an_instantiated_model(tmp_path):
    model = _real(TINY_BART)
    real = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    spec = model_spec(TINY_BART)
    assert (spec.params, spec.largest_layer_params) == (real, largest)
    model.config.save_pretrained(tmp_path)   # and from a model directory
    assert model_spec(tmp_path).params == real


def test_untied_t5_is_counted_as_from_pretrained_loads_it(tmp_path):
    """A T5 v1.1 / mT5 checkpoint: config.json says tie_word_embeddings=false and the weights hold their own lm_head.
    transformers 5 forces the config object tied, but from_pretrained loads the separate lm_head: count that."""
    import json

    from launcher.memory_estimate import build_model, raw_config

    kwargs = dict(TINY_T5)
    config = AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)
    build_model(config, TINY_T5).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "tie_word_embeddings": False}))  # as the hub's files say
    assert raw_config(tmp_path)["tie_word_embeddings"] is False
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight is not loaded.shared.weight
    real = sum(p.numel() for p in loaded.parameters())
    spec = model_spec(tmp_path)
    assert spec.params == real == model_spec(TINY_T5).params and not spec.tied_lm_head
    tied = AutoModelForSeq2SeqLM.from_config(config)   # the config object alone: one embedding too few
    assert sum(p.numel() for p in tied.parameters()) == real - 1000 * 64


# Published parameter counts (model cards, papers); pegasus-large's 568M leaves out its frozen sinusoidal positions.
PUBLISHED = {"bart-base": 139_420_416, "bart-large": 406_291_456, "t5-base": 222_903_552, "mt5-small": 300_176_768,
             "mt5-base": 582_401_280, "flan-t5-large": 783_150_080, "pegasus-large": 568_699_904,
             "kobart-base-v2": 123_859_968}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_fixture_configs_count_the_published_parameters(name, repo_root):
    spec = model_spec(repo_root / "tests" / "fixtures" / "model_configs" / name)
    assert spec.params == PUBLISHED[name]
    assert spec.tied_lm_head == (name not in ("mt5-small", "mt5-base", "flan-t5-large"))


def test_spec_reads_encoder_decoder_sizes():
    bart, t5 = model_spec(TINY_BART), model_spec(TINY_T5)
    assert (bart.hidden_size, bart.ffn_size, bart.attention_inner, bart.heads) == (64, 128, 64, 4)
    assert (bart.encoder_layers, bart.decoder_layers, bart.vocab_size, bart.gated_ffn) == (2, 3, 1000, False)
    assert (t5.attention_inner, t5.ffn_size, t5.gated_ffn) == (64, 256, True)
    assert (t5.encoder_layers, t5.decoder_layers) == (2, 3)
    assert bart.attn_implementation == "sdpa" and bart.model_type == "bart"


@pytest.mark.parametrize("sizes,billions", [(BART_7B, 7.7), (T5_70B, 88.8)], ids=["bart-7b", "t5-70b"])
def test_big_configs_are_counted_without_memory_quickly(sizes, billions):
    model_spec(sizes)  # warm the model class import
    start = time.perf_counter()
    spec = model_spec(sizes)
    assert time.perf_counter() - start < 5  # loose: the benchmark measures it (about 0.05-0.1 s here)
    assert spec.params / 1e9 == pytest.approx(billions, rel=0.01)


def test_unreachable_hub_id_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(OSError):
        model_spec("facebook/bart-base")
    assert time.perf_counter() - start < 10
    with pytest.raises(OSError, match="no such model directory"):
        model_spec(str(tmp_path / "missing-model"))


def test_zero_paper_example_7_5b_on_64_gpus():
    got = [zero_paper_bytes(7.5e9, stage, 64) / 1e9 for stage in range(4)]
    assert got == pytest.approx([120, 31.4, 16.6, 1.9], abs=0.06)


@pytest.mark.parametrize("params,gpus_per_node,nodes", [(7.5e9, 8, 8), (406e6, 1, 1), (2.85e9, 4, 1), (70e9, 8, 2)])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_matches_deepspeed_estimator(params, gpus_per_node, nodes, offload):
    spec = bare_spec(int(params))
    cpu, gpu = estimate_zero2_model_states_mem_needs(int(params), gpus_per_node, nodes, cpu_offload=offload)
    ours = model_state_bytes(spec, stage=2, world_size=gpus_per_node * nodes, precision="bf16",
                             offload_optimizer=offload)
    assert ours == pytest.approx(gpu, rel=0.01)
    ours_cpu = cpu_bytes_per_node(spec, stage=2, gpus_per_node=gpus_per_node, nnodes=nodes, offload_optimizer=offload)
    assert ours_cpu == pytest.approx(cpu, rel=0.01)


@pytest.mark.parametrize("params,largest,gpus_per_node,nodes", [
    (7.5e9, 131e6, 8, 8), (406e6, 51.5e6, 1, 1), (2.85e9, 32.9e6, 4, 1), (88.8e9, 263e6, 8, 2)])
@pytest.mark.parametrize("offload_optimizer,offload_params", [(False, False), (True, False), (True, True)])
@pytest.mark.parametrize("zero_init", [False, True])
def test_zero3_matches_deepspeed_estimator(params, largest, gpus_per_node, nodes, offload_optimizer, offload_params,
                                           zero_init):
    spec = ModelSpec(model_type="x", params=int(params), largest_layer_params=int(largest))
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        int(params), int(largest), gpus_per_node, nodes, cpu_offload=offload_optimizer,
        cpu_offload_params=offload_params, zero_init=zero_init)
    ours = model_state_bytes(spec, stage=3, world_size=gpus_per_node * nodes, precision="bf16",
                             offload_optimizer=offload_optimizer, offload_params=offload_params)
    assert ours == pytest.approx(gpu, rel=0.01)
    ours_cpu = cpu_bytes_per_node(spec, stage=3, gpus_per_node=gpus_per_node, nnodes=nodes,
                                  offload_optimizer=offload_optimizer, offload_params=offload_params,
                                  zero_init=zero_init)
    assert ours_cpu == pytest.approx(cpu, rel=0.01)


def test_stage_ordering_and_precision():
    spec = bare_spec(10**9)
    per_stage = [model_state_bytes(spec, stage=s, world_size=8, precision="bf16") for s in range(4)]
    assert per_stage == sorted(per_stage, reverse=True)
    assert per_stage[0] == 20 * 10**9                       # 2 weights + 2 grads + 16 optimizer partition
    assert model_state_bytes(spec, stage=0, world_size=1, precision="fp32") == 16 * 10**9  # no master copy
    assert model_state_bytes(spec, stage=1, world_size=8, precision="bf16", offload_optimizer=True) == 4 * 10**9


def _korthikanti_spec(h=1024, a=16, layers=(12, 12), vocab=50000, **kw) -> ModelSpec:
    return ModelSpec(model_type="bart", params=1, largest_layer_params=1, hidden_size=h, ffn_size=4 * h,
                     attention_inner=h, heads=a, encoder_layers=layers[0], decoder_layers=layers[1], vocab_size=vocab,
                     **{"attn_implementation": "eager", "attention_dropout": 0.1, "dropout": 0.1, **kw})


def test_encoder_layer_follows_korthikanti():
    """One encoder layer, no decoder, no vocabulary, 16 bits on CUDA (bool dropout masks), eager attention, no FFN
    dropout: s·b·h·(34 + 5·a·s/h) plus the embedding terms (9sbh)."""
    s, b, h, a = 512, 4, 1024, 16
    spec = _korthikanti_spec(h, a, layers=(1, 0), vocab=0)
    kw = dict(micro_batch=b, source_length=s, target_length=0, precision="bf16", checkpointing=False, device="cuda")
    embeddings = 9 * s * b * h
    assert activation_bytes(spec, **kw) - embeddings == s * b * h * (34 + 5 * a * s / h)
    sdpa = ModelSpec(**{**spec.__dict__, "attn_implementation": "sdpa"})   # flash: output + fp32 log-sum-exp
    assert activation_bytes(sdpa, **kw) - embeddings == s * b * h * (34 + 2) + 4 * a * s * b
    on_cpu = activation_bytes(spec, **{**kw, "device": "cpu"})   # CPU dropout keeps its noise in bf16, not bools
    assert on_cpu - activation_bytes(spec, **kw) == s * b * h * (1 + 1 + 1) + a * s * s * b


def test_attention_path_follows_implementation_device_and_dropout():
    from launcher.memory_seq2seq import fused_attention

    bart = _korthikanti_spec(attn_implementation="sdpa", attention_dropout=0.1)
    kobart = ModelSpec(**{**bart.__dict__, "attention_dropout": 0.0})
    eager = ModelSpec(**{**kobart.__dict__, "attn_implementation": "eager"})
    assert [fused_attention(m, "cpu") for m in (bart, kobart, eager)] == [False, True, False]
    assert [fused_attention(m, "cuda") for m in (bart, kobart, eager)] == [True, True, False]
    kw = dict(micro_batch=4, source_length=512, target_length=128, precision="fp32", checkpointing=False, device="cpu")
    assert activation_bytes(kobart, **kw) < 0.6 * activation_bytes(bart, **kw)   # no s x s probabilities kept


def test_activations_scale_with_checkpointing_precision_and_logits():
    spec = _korthikanti_spec()
    kw = dict(source_length=512, target_length=128, device="cpu")
    one = activation_bytes(spec, micro_batch=1, precision="bf16", checkpointing=False, **kw)
    four = activation_bytes(spec, micro_batch=4, precision="bf16", checkpointing=False, **kw)
    eight = activation_bytes(spec, micro_batch=8, precision="bf16", checkpointing=False, **kw)
    assert eight == 2 * four      # the start of backward dominates: linear in the batch
    assert one > four / 4         # at one sample the embedding gradients (batch-independent) set the peak
    assert activation_bytes(spec, micro_batch=8, precision="bf16", checkpointing=True, **kw) < eight / 3
    fp32 = activation_bytes(spec, micro_batch=4, precision="fp32", checkpointing=False, **kw)
    assert fp32 == 2 * four   # eager attention, loss in the working dtype: fp32 doubles everything
    bigger_vocab = ModelSpec(**{**spec.__dict__, "vocab_size": 250112})
    bigger = activation_bytes(bigger_vocab, micro_batch=4, precision="bf16", checkpointing=False, **kw)
    assert bigger - four >= 3 * 2 * 128 * 4 * (250112 - spec.vocab_size)   # log-softmax output and two gradients
    assert bigger > 3 * 250112 * 1024 * 2   # mT5-sized vocabularies: the embedding's summed V x h gradients
    assert activation_bytes(bare_spec(10**9), micro_batch=8, precision="bf16", checkpointing=False, **kw) == 0


def test_local_model_spec_is_cached_by_config_hash(tmp_path, monkeypatch, tiny_model_dir):
    import shutil

    from launcher.memory_estimate import model_spec, spec_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    first = model_spec(model)
    assert [p.name for p in spec_cache_dir().iterdir()] != []
    assert model_spec(model) == first
    config = model / "config.json"
    config.write_text(config.read_text().replace('"d_model": 64', '"d_model": 128'))
    bigger = model_spec(model)
    assert bigger.hidden_size == 128 and bigger.params > first.params  # a changed config is a new key, not stale
    assert len(list(spec_cache_dir().iterdir())) == 2


def test_formula_matches_the_recorded_cpu_measurements(repo_root):
    """Every activation measurement `benchmarks/bench_activation_memory.py --save` recorded on CPU (fixture configs,
    random weights, one step after a warm-up): the formula within 15%."""
    import json

    results = json.loads((repo_root / "benchmarks" / "results" / "activation_memory_cpu.json").read_text())
    grid = {f"{m}|512/128|mb{b}|ckpt {c}|{p}" for m in ("bart-base", "bart-large", "t5-base", "mt5-small", "pegasus-large",
                                                        "kobart-base-v2")
            for b in (1, 4) for c in ("off", "on") for p in ("fp32", "bf16")}
    assert grid <= set(results), sorted(grid - set(results))  # issue 14's whole grid was measured
    errors = {}
    for case, row in results.items():
        model, lengths, micro, ckpt, precision = case.split("|")
        source, target = map(int, lengths.split("/"))
        spec = model_spec(repo_root / "tests" / "fixtures" / "model_configs" / model)
        predicted = activation_bytes(spec, micro_batch=int(micro.removeprefix("mb")), source_length=source,
                                     target_length=target, precision=precision, checkpointing=ckpt.endswith("on"),
                                     device="cpu")
        errors[case] = predicted / row["measured_bytes"] - 1
    assert all(abs(e) <= 0.15 for e in errors.values()), {k: f"{e:+.1%}" for k, e in errors.items()}


def test_trace_agrees_with_the_recorded_measurement_of_bart_base(repo_root):
    """One training step of BartForConditionalGeneration traced on fake tensors (no memory allocated): within 15% of
    the activation memory the benchmark measured on this CPU for the same case."""
    import json

    from launcher.memory_estimate import load_configs
    from launcher.memory_trace import traced_activation_bytes

    measured = json.loads((repo_root / "benchmarks" / "results" / "activation_memory_cpu.json").read_text())
    measured = measured["bart-base|512/128|mb4|ckpt off|fp32"]["measured_bytes"]
    hf_config, raw = load_configs(repo_root / "tests" / "fixtures" / "model_configs" / "bart-base")
    traced = traced_activation_bytes(hf_config, raw, micro_batch=4, source_length=512, target_length=128,
                                     precision="fp32", checkpointing=False)
    assert traced == pytest.approx(measured, rel=0.15)


def test_deep_models_are_traced_as_scaled_layer_copies():
    """Beyond TRACE_FULL_LAYERS the trace runs 2-3 layer copies (seconds for a 7B config) and scales per layer."""
    from launcher.memory_estimate import load_configs
    from launcher.memory_trace import TRACE_FULL_LAYERS, traced_activation_bytes

    hf_config, raw = load_configs(BART_7B)
    assert BART_7B["encoder_layers"] + BART_7B["decoder_layers"] > TRACE_FULL_LAYERS
    kw = dict(micro_batch=1, source_length=128, target_length=32, precision="bf16", checkpointing=False)
    traced = traced_activation_bytes(hf_config, raw, **kw)
    formula = activation_bytes(model_spec(BART_7B), device="cpu", **kw)
    assert traced == pytest.approx(formula, rel=0.25)


@pytest.mark.parametrize("model_type", ["bart", "t5"])
def test_peak_counter_agrees_with_torch_mem_tracker(model_type):
    """PeakBytes counts the peak that torch's MemTracker counts, without the per-module statistics MemTracker updates
    at every operator: one fake training step of a small model, counted by both, with and without checkpointing."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    from launcher.memory_estimate import load_configs
    from launcher.memory_trace import PeakBytes, fake_training_step

    sizes = (dict(model_type="bart", d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                  decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512, vocab_size=1000)
             if model_type == "bart" else
             dict(model_type="t5", d_model=128, d_ff=512, num_layers=2, num_heads=4, d_kv=32, vocab_size=1000,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    hf_config, raw = load_configs(sizes)
    for checkpointing in (False, True):
        peaks = []
        for counter in ("PeakBytes", "MemTracker"):
            with FakeTensorMode(), torch.device("cpu"):
                model, batch, known = fake_training_step(hf_config, raw, micro_batch=2, source_length=64,
                                                         target_length=16, precision="fp32",
                                                         checkpointing=checkpointing, device="cpu")
                if counter == "PeakBytes":
                    with PeakBytes(known) as peak:
                        model(**batch).loss.backward()
                    peaks.append(peak.peak)
                else:
                    tracker = MemTracker()
                    tracker.track_external(model)
                    with tracker:
                        start = sum(s["Total"] for s in tracker.get_tracker_snapshot().values())
                        model(**batch).loss.backward()
                        peaks.append(sum(s["Total"] for s in tracker.get_tracker_snapshot("peak").values()) - start)
        assert peaks[0] == pytest.approx(peaks[1], rel=0.01), (checkpointing, peaks)
        assert peaks[0] > 2 * 64 * 128 * 4 * 4   # at least the encoder's layer inputs were counted
