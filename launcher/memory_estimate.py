"""Memory model: parameters from a config alone, model-state bytes per GPU for ZeRO 0-3 (± CPU offload), activation
bytes (the task's formulas: `ACTIVATIONS`, e.g. launcher/memory_seq2seq.py), framework overhead, and the CPU RAM an
offloaded plan needs.

Model states follow DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`), which count 18 bytes of gradients + fp32 master weights + Adam moments per
parameter besides the 16-bit weights; `zero_paper_bytes` is the ZeRO paper's 16-bytes-per-parameter accounting.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GiB = 2**30
DS_BUFFER_FACTOR = 1.5        # DeepSpeed's `additional_buffer_factor` for CPU memory
CUDA_OVERHEAD = GiB           # CUDA context, cuBLAS workspace, NCCL buffers: outside the caching allocator
T5_FAMILY = ("t5", "mt5", "umt5", "longt5")


@dataclass(frozen=True)
class ModelSpec:
    """Sizes the memory model needs. Architecture fields are 0 for a bare parameter count."""
    model_type: str
    params: int
    largest_layer_params: int     # largest module's own parameters (ZeRO-3 gathers one at a time)
    hidden_size: int = 0
    ffn_size: int = 0
    attention_inner: int = 0      # heads x head dim (T5: num_heads x d_kv; BART: d_model)
    heads: int = 0
    kv_heads: int = 0             # key/value heads (grouped-query attention: fewer than heads); 0: as many as heads
    encoder_layers: int = 0
    decoder_layers: int = 0
    vocab_size: int = 0
    gated_ffn: bool = False       # T5 v1.1 / mT5 gated-gelu, SwiGLU (Llama, Qwen, Gemma): two input projections
    rotary_fraction: float = 0.0  # share of each head's dimensions rotated (GPT-NeoX rotary_pct); 0: no rotary
    attn_implementation: str = "sdpa"   # transformers' default; "eager" always keeps the s x s probabilities
    attention_dropout: float = 0.0      # > 0 sends SDPA on CPU down the math path (probabilities kept)
    dropout: float = 0.0                # hidden-state dropout: a mask per layer output
    activation_dropout: float = 0.0     # dropout inside the FFN (T5: dropout_rate)
    tied_lm_head: bool = True           # lm_head shares the input embedding (its gradient joins the embedding's)
    task: str = "seq2seq"               # engine/tasks: which activation formulas (ACTIVATIONS) and model class
    # trainable ones a training step gives no gradient (launcher/unused_parameters.py); None: unknown
    unused_parameters: tuple[str, ...] | None = None
    linear_layers: tuple[str, ...] = ()  # short names of the linear layers (what lora.target_modules name)
    # (short name, in features, out features, how many) of every linear layer but the output head: adapter sizes and
    # what QLoRA quantizes
    linear_shapes: tuple[tuple[str, int, int, int], ...] = ()

    @property
    def has_architecture(self) -> bool:
        return self.hidden_size > 0 and self.encoder_layers + self.decoder_layers > 0


@dataclass(frozen=True)
class AdapterSpec:
    """What training.method and the lora section train (None in the memory model: full fine-tuning)."""
    method: str                   # lora | dora | qlora
    r: int
    targets: tuple[str, ...]      # short linear-layer names; ("all-linear",): every linear layer but the output head
    dropout: float = 0.0          # > 0: each adapted layer keeps a dropped-out copy of its input
    modules_to_save: tuple[str, ...] = ()


def element_bytes(precision: str) -> int:
    """Bytes of one working weight, gradient or activation element: 2 at bf16/fp16, 4 at fp32."""
    return 2 if precision in ("bf16", "fp16") else 4


def _first(cfg, *names: str, default=0):
    for name in names:
        value = getattr(cfg, name, None)
        if value:
            return value
    return default


def untie_output_embeddings(model, raw_config: Mapping) -> None:
    """Give `model` its own lm_head where the checkpoint's raw config.json says the embeddings are not tied.
    transformers 5 forces `tie_word_embeddings=True` on T5Config/MT5Config objects, so a config-built T5 v1.1, mT5 or
    Flan-T5 shares its embedding with the lm_head; `from_pretrained` unties it again when the checkpoint holds a
    separate `lm_head.weight` (mt5-small: 172M tied, 300M as loaded)."""
    import torch

    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if raw_config.get("tie_word_embeddings", True) is False and out is not None and out.weight is inp.weight:
        out.weight = torch.nn.Parameter(torch.empty_like(inp.weight))
        if out.weight.device.type != "meta":  # random weights at the config's initialisation scale
            torch.nn.init.normal_(out.weight, std=getattr(model.config, "initializer_factor", None) or 0.02)


def build_model(hf_config, raw_config: Mapping, device: str = "cpu", dtype=None):
    """The model as `from_pretrained` builds it (its task's Auto class; random weights; untied where the checkpoint
    is), on `device`."""
    import torch

    from engine.tasks import get_task, task_of_config

    model_class = get_task(task_of_config(hf_config)).model_class()
    with torch.device(device):
        model = model_class.from_config(hf_config, **({"dtype": dtype} if dtype else {}))
        untie_output_embeddings(model, raw_config)
    return model


def spec_from_hf_config(hf_config, raw_config: Mapping | None = None) -> ModelSpec:
    """Instantiate the model on the meta device (no memory, no init) and count. `torch.device("meta")` rather than
    accelerate's `init_empty_weights`: under transformers 5 the latter leaves tied embeddings untied (BART counted
    555k instead of 363k parameters); the meta device keeps them tied and is faster. `raw_config`: the config.json
    as written (default: the config's own dict), read for `tie_word_embeddings`."""
    from engine.adapters import linear_layer_names
    from engine.compat import attn_implementation
    from engine.tasks import task_of_config
    from launcher.unused_parameters import unused_trainable_parameters

    model = build_model(hf_config, raw_config if raw_config is not None else hf_config.to_dict(), device="meta")
    # parameters() yields a tied weight once; frozen ones (Pegasus' sinusoidal positions) get no gradient or optimizer
    # state, and the published counts leave them out
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    c = hf_config
    common = dict(
        model_type=c.model_type, params=params, largest_layer_params=largest, vocab_size=_first(c, "vocab_size"),
        attn_implementation=attn_implementation(model.config), task=task_of_config(hf_config),
        unused_parameters=unused_trainable_parameters(hf_config, raw_config if raw_config is not None else {}),
        linear_layers=tuple(linear_layer_names(model)), linear_shapes=linear_shapes(model),
        attention_dropout=_rate(c, "attention_dropout", "dropout_rate"),
        tied_lm_head=model.get_output_embeddings().weight is model.get_input_embeddings().weight)
    if common["task"] == "causal":
        return ModelSpec(**common, **_causal_sizes(c, model))
    hidden = _first(c, "d_model", "hidden_size")
    heads = _first(c, "encoder_attention_heads", "num_heads", "num_attention_heads")
    d_kv = _first(c, "d_kv")
    return ModelSpec(
        **common, hidden_size=hidden,
        ffn_size=_first(c, "encoder_ffn_dim", "d_ff", "intermediate_size", default=4 * hidden),
        attention_inner=d_kv * heads if d_kv else hidden, heads=heads,
        encoder_layers=_first(c, "encoder_layers", "num_layers"),
        decoder_layers=_first(c, "decoder_layers", "num_decoder_layers", "num_layers"),
        gated_ffn=bool(getattr(c, "is_gated_act", False)) or "gated" in str(getattr(c, "feed_forward_proj", "")),
        dropout=_rate(c, "dropout", "dropout_rate"), activation_dropout=_rate(c, "activation_dropout", "dropout_rate"))


def _causal_sizes(c, model) -> dict:
    """A decoder-only model's sizes: one stack of num_hidden_layers; SwiGLU families have a gate projection
    (GPT-NeoX: one up projection); grouped-query K/V from num_key_value_heads; the rotated share of each head from
    the rope parameters' partial_rotary_factor (transformers 5 keeps GPT-NeoX's rotary_pct there; 1 elsewhere)."""
    hidden, heads = c.hidden_size, c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    gated = any(name.endswith("gate_proj") for name, _ in model.named_modules())
    return dict(hidden_size=hidden, ffn_size=_first(c, "intermediate_size", default=4 * hidden), heads=heads,
                kv_heads=_first(c, "num_key_value_heads", default=heads), attention_inner=heads * head_dim,
                decoder_layers=c.num_hidden_layers, gated_ffn=gated,
                rotary_fraction=float((getattr(c, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)),
                dropout=_rate(c, "hidden_dropout", "resid_pdrop"))


def linear_shapes(model) -> tuple[tuple[str, int, int, int], ...]:
    """(short name, in, out, count) of the model's linear layers, the output head left out (as PEFT's all-linear)."""
    import collections

    import torch

    head = model.get_output_embeddings()
    counts = collections.Counter((name.rsplit(".", 1)[-1], m.in_features, m.out_features)
                                 for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head)
    return tuple(sorted((*key, n) for key, n in counts.items()))


def _rate(cfg, *names: str) -> float:
    """The first of `names` the config has (0.0 counts, unlike `_first`)."""
    return next((float(getattr(cfg, n)) for n in names if getattr(cfg, n, None) is not None), 0.0)


def model_spec(source: str | os.PathLike | Mapping) -> ModelSpec:
    """From a local model directory, a hub id (AutoConfig; needs the hub cache or network), or a dict of sizes
    with `model_type` (e.g. {"model_type": "bart", "d_model": 1024, ...}). Raises OSError/ValueError when the
    config cannot be found or read."""
    if not isinstance(source, Mapping) and Path(source).is_dir():
        return _cached_spec(Path(source), lambda: spec_from_hf_config(*load_configs(source)))
    return spec_from_hf_config(*load_configs(source))


def load_configs(source: str | os.PathLike | Mapping) -> tuple:
    """(transformers config, raw config.json dict) of a model directory, hub id or dict of sizes (see model_spec)."""
    from transformers import AutoConfig

    from engine.modeling import looks_like_path

    if isinstance(source, Mapping):
        kwargs = dict(source)
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs), dict(source)
    source = str(source)
    if Path(source).is_dir():
        return AutoConfig.from_pretrained(source), raw_config(source)
    if looks_like_path(source):
        raise OSError(f"no such model directory: {source}")
    try:  # the hub cache first: no network round trip when the id was downloaded before
        return AutoConfig.from_pretrained(source, local_files_only=True), raw_config(source, local_files_only=True)
    except OSError:
        if not _hub_reachable():  # without this, huggingface_hub retries for ~25 s before failing
            raise OSError(f"{source} is not in the local Hugging Face cache and the hub is unreachable") from None
        return AutoConfig.from_pretrained(source), raw_config(source)


def raw_config(source: str | os.PathLike, **kwargs) -> dict:
    """config.json as written (a directory or a hub id), before the config class rewrites any of it."""
    from transformers import PretrainedConfig

    return PretrainedConfig.get_config_dict(str(source), **kwargs)[0]


SPEC_CACHE_FORMAT = 7  # bump when spec_from_hf_config changes what it derives


def spec_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dialsum" / "model-specs"


def _cached_spec(model_dir: Path, build) -> ModelSpec:
    """A local model's spec, cached by the hash of its config.json: building it imports transformers' model classes
    (~2.7 s, most of `dialsum launch`'s start-up); the cached spec reads in milliseconds."""
    import hashlib
    import json
    from dataclasses import asdict

    from engine.atomic import atomic_write_text

    config = model_dir / "config.json"
    if not config.is_file():
        return build()
    key = hashlib.sha256(f"{SPEC_CACHE_FORMAT}\n".encode() + config.read_bytes()).hexdigest()[:32]
    path = spec_cache_dir() / f"{key}.json"
    try:
        data = json.loads(path.read_text())
        unused = data["unused_parameters"]
        return ModelSpec(**{**data, "unused_parameters": None if unused is None else tuple(unused),
                            "linear_layers": tuple(data["linear_layers"]),
                            "linear_shapes": tuple(tuple(row) for row in data["linear_shapes"])})
    except (OSError, ValueError, TypeError):
        spec = build()
        atomic_write_text(path, json.dumps(asdict(spec)))
        return spec


def _hub_reachable(timeout: float = 3.0) -> bool:
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def bare_spec(params: int) -> ModelSpec:
    """A parameter count with no architecture: model states only (DeepSpeed's estimators take no more). The largest
    layer is taken as 10% of the parameters (BART-large's tied embedding is 13%, a 7B model's ~2%)."""
    return ModelSpec(model_type="unknown", params=params, largest_layer_params=params // 10)


ASSUMED_VOCAB = 128256   # Llama-3's vocabulary, the largest of the families in common use but Qwen's and Gemma's


def assumed_decoder_spec(params: int) -> ModelSpec:
    """A bare parameter count sized as a Llama-3-shaped decoder, so its plan counts activations instead of claiming a
    fit it cannot know: head dim 128, four query heads per K/V head, a SwiGLU FFN 3.5x as wide, an untied 128k
    vocabulary, and the depth Llama-3 has at its width (layers ~ hidden / 128: 8B is 4096 x 32) for the count."""
    def per_layer(hidden: int) -> int:
        return 2 * hidden * hidden + 2 * hidden * (hidden // 4) + 3 * hidden * _ffn(hidden) + 2 * hidden

    def layers_at(hidden: int) -> int:
        return round((params - 2 * ASSUMED_VOCAB * hidden - hidden) / per_layer(hidden))

    widths = [h for h in range(512, 16385, 256) if layers_at(h) >= 1] or [512]
    hidden = min(widths, key=lambda h: abs(layers_at(h) - h / 128))
    layers, ffn, heads = max(1, layers_at(hidden)), _ffn(hidden), hidden // 128
    shapes = (("down_proj", ffn, hidden, layers), ("gate_proj", hidden, ffn, layers), ("k_proj", hidden, hidden // 4, layers),
              ("o_proj", hidden, hidden, layers), ("q_proj", hidden, hidden, layers), ("up_proj", hidden, ffn, layers),
              ("v_proj", hidden, hidden // 4, layers))
    return ModelSpec(model_type="llama", params=params, largest_layer_params=ASSUMED_VOCAB * hidden, hidden_size=hidden,
                     ffn_size=ffn, attention_inner=hidden, heads=heads, kv_heads=heads // 4, decoder_layers=layers,
                     vocab_size=ASSUMED_VOCAB, gated_ffn=True, rotary_fraction=1.0, tied_lm_head=False, task="causal",
                     unused_parameters=(), linear_layers=tuple(name for name, *_ in shapes), linear_shapes=shapes)


def _ffn(hidden: int) -> int:
    return round(3.5 * hidden / 256) * 256


# ---------------------------------------------------------------------------------------------------- model states

def zero_paper_bytes(params: int, stage: int, world_size: int, k: int = 12) -> float:
    """ZeRO paper (Rajbhandari et al. 2020), mixed-precision Adam, K=12: 16Ψ, 4Ψ+KΨ/N, 2Ψ+(2+K)Ψ/N, (4+K)Ψ/N."""
    psi, n = params, world_size
    return {0: (4 + k) * psi, 1: 4 * psi + k * psi / n, 2: 2 * psi + (2 + k) * psi / n, 3: (4 + k) * psi / n}[stage]


def model_state_bytes(spec: ModelSpec, *, stage: int, world_size: int, precision: str,
                      offload_optimizer: bool = False, offload_params: bool = False,
                      adapters: AdapterSpec | None = None) -> int:
    """Per-GPU bytes of weights, gradients and optimizer states, as DeepSpeed estimates them.

    w = bytes of a working weight/gradient (2 at bf16/fp16, 4 at fp32). DeepSpeed keeps 16 more bytes per
    trained parameter for the optimizer partition: fp32 gradients, fp32 master weights, Adam's two moments. At 16
    bits: ZeRO-2 = 2Ψ + 18Ψ/N, ZeRO-3 = 4·largest_layer + 18Ψ/N, exactly DeepSpeed's estimators; ZeRO-1 keeps full
    gradients (4Ψ + 16Ψ/N). ZeRO-0 under fp32 holds no master copy (16Ψ: weights, grads, two moments).
    Parameter offload (ZeRO-3 only) implies optimizer offload, as in DeepSpeed's estimator.

    With adapters only they are trained (Ψ: `adapter_params`); the frozen base (`frozen_base_bytes`) has no gradient
    or optimizer state: ZeRO-1/2 keep it whole on every rank, ZeRO-3 partitions it (offloaded: on the CPU)."""
    n, w = world_size, element_bytes(precision)
    psi = spec.params if adapters is None else adapter_params(spec, adapters)
    frozen = 0 if adapters is None else frozen_base_bytes(spec, adapters, precision)
    gathered = 2 * w * spec.largest_layer_params
    if stage == 0:
        return (2 * w + (16 if w == 2 else 8)) * psi + frozen
    if stage in (1, 2):
        if offload_optimizer:
            return (w * psi if stage == 2 else 2 * w * psi) + frozen
        return (2 * w * psi + 16 * psi // n if stage == 1 else w * psi + (w + 16) * psi // n) + frozen
    if stage == 3:
        if offload_params:
            return gathered
        return gathered + frozen // n + (w * psi // n if offload_optimizer else (w + 16) * psi // n)
    raise ValueError(f"ZeRO stage {stage}")


# QLoRA's base: 4-bit NF4 codes, an 8-bit absmax per block of 64 (double quantization), and an fp32 absmax per 256 of
# those blocks (bitsandbytes' defaults; tests/test_memory.py measures a quantized layer's storage against it)
NF4_BYTES_PER_PARAM = 0.5 + 1 / 64 + 4 / (64 * 256)
EMBEDDING_NAMES = ("lm_head", "embed_tokens", "embed_in", "embed_out", "wte", "shared", "word_embeddings")


def adapter_params(spec: ModelSpec, adapters: AdapterSpec) -> int:
    """Parameters the adapters train: r·(in + out) per adapted linear layer (DoRA adds its magnitude, one per output
    feature), and a trainable copy of each of `modules_to_save` (PEFT keeps the original frozen beside it)."""
    every = "all-linear" in adapters.targets
    trained = sum(count * (adapters.r * (fan_in + fan_out) + (fan_out if adapters.method == "dora" else 0))
                  for name, fan_in, fan_out, count in spec.linear_shapes if every or name in adapters.targets)
    for module in adapters.modules_to_save:
        linear = [fan_in * fan_out * count for name, fan_in, fan_out, count in spec.linear_shapes if name == module]
        trained += sum(linear) if linear else (spec.vocab_size * spec.hidden_size if module in EMBEDDING_NAMES else 0)
    return trained


def frozen_base_bytes(spec: ModelSpec, adapters: AdapterSpec, precision: str) -> int:
    """The frozen base in memory: held in the compute precision (engine.adapters.base_dtype); QLoRA's linear layers
    in NF4 (`NF4_BYTES_PER_PARAM`), its embeddings, output head and norms in the compute precision."""
    w = element_bytes(precision)
    if adapters.method != "qlora":
        return w * spec.params
    quantized = sum(fan_in * fan_out * count for _, fan_in, fan_out, count in spec.linear_shapes)
    return int(NF4_BYTES_PER_PARAM * quantized) + w * (spec.params - quantized)


def cpu_bytes_per_node(spec: ModelSpec, *, stage: int, gpus_per_node: int, nnodes: int,
                       offload_optimizer: bool = False, offload_params: bool = False,
                       adapters: AdapterSpec | None = None, precision: str = "fp32", zero_init: bool = False) -> int:
    """Host RAM per node for a GPU plan, DeepSpeed's `cpu_mem` estimate. Without `zero_init` every rank first loads
    the full fp32 model on the CPU (from_pretrained outside zero.Init); with it (ZeRO-3 on several ranks: the engine
    loads inside zero.Init, engine.modeling.partitioned_loading) a rank materialises one layer at a time, DeepSpeed's
    `zero_init=True` case, and only offloaded states stay on the host (transformers maps the checkpoint files on rank
    0: page cache, not counted). With adapters every rank loads the frozen base in its compute precision (or, under
    zero.Init, its largest layer), and only the adapters' optimizer states (16 bytes each) can be offloaded, besides
    the frozen base itself under ZeRO-3 parameter offload."""
    zero_init = zero_init and stage == 3
    if adapters is not None:
        frozen = frozen_base_bytes(spec, adapters, precision)
        offloaded = (16 * adapter_params(spec, adapters) if offload_optimizer else 0) + (
            frozen // nnodes if offload_params else 0)
        loading = spec.largest_layer_params * element_bytes(precision) if zero_init else frozen
        return int(max(loading * gpus_per_node, offloaded) * DS_BUFFER_FACTOR)
    psi, total = spec.params, gpus_per_node * nnodes
    if stage in (1, 2) and offload_optimizer:
        return int(psi * max(4 * total, 16) * DS_BUFFER_FACTOR)
    if stage == 3 and offload_optimizer:
        per_node = (18 if offload_params else 16) / nnodes
        return int(psi * (per_node if zero_init else max(4 * gpus_per_node, per_node)) * DS_BUFFER_FACTOR)
    if zero_init:
        return int(spec.largest_layer_params * 4 * gpus_per_node * DS_BUFFER_FACTOR)
    return int(psi * 4 * gpus_per_node * DS_BUFFER_FACTOR)


# ---------------------------------------------------------------------------------------------------- activations
# One module of formulas per task (engine/tasks), chosen by the spec's task.

ACTIVATIONS = {"seq2seq": "launcher.memory_seq2seq", "causal": "launcher.memory_causal"}


def _formulas(spec: ModelSpec):
    import importlib

    return importlib.import_module(ACTIVATIONS[spec.task])


def activation_bytes(spec: ModelSpec, *, micro_batch: int, source_length: int, target_length: int,
                     precision: str, checkpointing: bool, device: str, adapters: AdapterSpec | None = None) -> int:
    """Peak activation bytes per rank of one training micro-batch (0 for a bare parameter count); `adapters`: what
    LoRA/DoRA/QLoRA train (None: full fine-tuning), for the task's formulas that model it."""
    if not spec.has_architecture:
        return 0
    return _formulas(spec).activation_bytes(spec, micro_batch=micro_batch, source_length=source_length,
                                            target_length=target_length, precision=precision,
                                            checkpointing=checkpointing, device=device, adapters=adapters)


def generation_bytes(spec: ModelSpec, *, rows: int, source_length: int, target_length: int, precision: str,
                     device: str) -> int:
    """Activation bytes of generating for `rows` sequences (batch x beams)."""
    return _formulas(spec).generation_bytes(spec, rows=rows, source_length=source_length, target_length=target_length,
                                            precision=precision, device=device)


def overhead_bytes(spec: ModelSpec, *, device: str, stage: int, precision: str) -> int:
    """Per-rank bytes besides model states and activations: CUDA context (GPU) or the process's baseline RSS (CPU),
    plus DeepSpeed's double-buffered gradient bucket (h² by the rendered config; ZeRO-3 adds a 0.9h² prefetch)."""
    w = element_bytes(precision)
    h2 = spec.hidden_size ** 2
    buckets = 0 if stage == 0 else int((2 * h2 + (0.9 * h2 if stage == 3 else 0)) * w)
    return (CUDA_OVERHEAD if device == "cuda" else cpu_baseline_bytes()) + buckets


def cpu_baseline_bytes() -> int:
    """Peak RSS of a CPU rank besides its model: rank 0's imports, a gloo group, the first training step and beam
    search of a 1-layer BART (launcher/rank_baseline.py; 0.42 GiB here). Measured once per set of library versions
    (~10 s) and cached next to the model specs."""
    import hashlib
    import json
    import subprocess
    import sys
    from importlib.metadata import version

    from engine.atomic import atomic_write_text

    versions = [sys.version, *(version(p) for p in ("torch", "transformers", "deepspeed", "wandb"))]
    key = hashlib.sha256(repr(versions).encode()).hexdigest()[:16]
    path = spec_cache_dir().parent / f"cpu-rank-baseline-{key}.json"
    try:
        return int(json.loads(path.read_text())["rss_bytes"])
    except (OSError, ValueError, KeyError):
        pass
    proc = subprocess.run([sys.executable, "-m", "launcher.rank_baseline"], capture_output=True, text=True,
                          timeout=300, cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"measuring a CPU rank's baseline memory (python -m launcher.rank_baseline) failed: {tail}")
    rss = int(proc.stdout.split()[-1])
    atomic_write_text(path, json.dumps({"rss_bytes": rss, "versions": versions}))
    return rss
