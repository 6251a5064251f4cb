"""Memory model: parameters from a config alone, model-state bytes per GPU for ZeRO 0-3 (± CPU offload), activation
bytes for encoder-decoder training, framework overhead, and the CPU RAM an offloaded plan needs.

Model states follow DeepSpeed's own estimators (`estimate_zero2_model_states_mem_needs`,
`estimate_zero3_model_states_mem_needs`), which count 18 bytes of gradients + fp32 master weights + Adam moments per
parameter besides the 16-bit weights; `zero_paper_bytes` is the ZeRO paper's 16-bytes-per-parameter accounting.
Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
generalised to the model's FFN and attention widths and to cross-attention.
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
CPU_RANK_OVERHEAD = GiB       # a rank's resident python + torch + transformers + deepspeed before any tensor
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
    encoder_layers: int = 0
    decoder_layers: int = 0
    vocab_size: int = 0
    gated_ffn: bool = False       # T5 v1.1 / mT5 gated-gelu: two input projections
    sdpa: bool = False            # attention through torch SDPA (transformers' default): no s x s matrix kept on GPU

    @property
    def has_architecture(self) -> bool:
        return self.hidden_size > 0 and self.encoder_layers + self.decoder_layers > 0


def _first(cfg, *names: str, default=0):
    for name in names:
        value = getattr(cfg, name, None)
        if value:
            return value
    return default


def spec_from_hf_config(hf_config) -> ModelSpec:
    """Instantiate the model on the meta device (no memory, no init) and count. `torch.device("meta")` rather than
    accelerate's `init_empty_weights`: under transformers 5 the latter leaves tied embeddings untied (BART counted
    555k instead of 363k parameters); the meta device keeps them tied and is faster."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(hf_config)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    c = hf_config
    hidden = _first(c, "d_model", "hidden_size")
    heads = _first(c, "encoder_attention_heads", "num_heads", "num_attention_heads")
    d_kv = _first(c, "d_kv")
    return ModelSpec(
        model_type=c.model_type, params=params, largest_layer_params=largest, hidden_size=hidden,
        ffn_size=_first(c, "encoder_ffn_dim", "d_ff", "intermediate_size", default=4 * hidden),
        attention_inner=d_kv * heads if d_kv else hidden, heads=heads,
        encoder_layers=_first(c, "encoder_layers", "num_layers"),
        decoder_layers=_first(c, "decoder_layers", "num_decoder_layers", "num_layers"),
        vocab_size=_first(c, "vocab_size"),
        gated_ffn=bool(getattr(c, "is_gated_act", False)) or "gated" in str(getattr(c, "feed_forward_proj", "")),
        sdpa=model.config._attn_implementation != "eager")


def model_spec(source: str | os.PathLike | Mapping) -> ModelSpec:
    """From a local model directory, a hub id (AutoConfig; needs the hub cache or network), or a dict of sizes
    with `model_type` (e.g. {"model_type": "bart", "d_model": 1024, ...}). Raises OSError/ValueError when the
    config cannot be found or read."""
    from transformers import AutoConfig

    if isinstance(source, Mapping):
        kwargs = dict(source)
        return spec_from_hf_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs))
    source = str(source)
    if Path(source).is_dir():
        return _cached_spec(Path(source), lambda: spec_from_hf_config(AutoConfig.from_pretrained(source)))
    if source.startswith(("/", ".", "~")) or source.count("/") > 1:
        raise OSError(f"no such model directory: {source}")
    try:  # the hub cache first: no network round trip when the id was downloaded before
        return spec_from_hf_config(AutoConfig.from_pretrained(source, local_files_only=True))
    except OSError:
        if not _hub_reachable():  # without this, huggingface_hub retries for ~25 s before failing
            raise OSError(f"{source} is not in the local Hugging Face cache and the hub is unreachable") from None
        return spec_from_hf_config(AutoConfig.from_pretrained(source))


SPEC_CACHE_FORMAT = 1  # bump when spec_from_hf_config changes what it derives


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
        return ModelSpec(**json.loads(path.read_text()))
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
    """A parameter count with no architecture: activations are not modelled. The largest layer is taken as 10% of
    the parameters (BART-large's tied embedding is 13%, a 7B model's ~2%)."""
    return ModelSpec(model_type="unknown", params=params, largest_layer_params=params // 10)


# ---------------------------------------------------------------------------------------------------- model states

def zero_paper_bytes(params: int, stage: int, world_size: int, k: int = 12) -> float:
    """ZeRO paper (Rajbhandari et al. 2020), mixed-precision Adam, K=12: 16Ψ, 4Ψ+KΨ/N, 2Ψ+(2+K)Ψ/N, (4+K)Ψ/N."""
    psi, n = params, world_size
    return {0: (4 + k) * psi, 1: 4 * psi + k * psi / n, 2: 2 * psi + (2 + k) * psi / n, 3: (4 + k) * psi / n}[stage]


def model_state_bytes(spec: ModelSpec, *, stage: int, world_size: int, precision: str,
                      offload_optimizer: bool = False, offload_params: bool = False) -> int:
    """Per-GPU bytes of weights, gradients and optimizer states, as DeepSpeed estimates them.

    w = bytes of a working weight/gradient (2 at bf16/fp16, 4 at fp32). DeepSpeed keeps 16 more bytes per
    parameter for the optimizer partition: fp32 gradients, fp32 master weights, Adam's two moments. At 16 bits:
    ZeRO-2 = 2Ψ + 18Ψ/N, ZeRO-3 = 4·largest_layer + 18Ψ/N, exactly DeepSpeed's estimators; ZeRO-1 keeps full
    gradients (4Ψ + 16Ψ/N). ZeRO-0 under fp32 holds no master copy (16Ψ: weights, grads, two moments).
    Parameter offload (ZeRO-3 only) implies optimizer offload, as in DeepSpeed's estimator."""
    psi, n, w = spec.params, world_size, 2 if precision in ("bf16", "fp16") else 4
    gathered = 2 * w * spec.largest_layer_params
    if stage == 0:
        return (2 * w + (16 if w == 2 else 8)) * psi
    if stage in (1, 2):
        if offload_optimizer:
            return w * psi if stage == 2 else 2 * w * psi
        return 2 * w * psi + 16 * psi // n if stage == 1 else w * psi + (w + 16) * psi // n
    if stage == 3:
        if offload_params:
            return gathered
        return gathered + (w * psi // n if offload_optimizer else (w + 16) * psi // n)
    raise ValueError(f"ZeRO stage {stage}")


def cpu_bytes_per_node(spec: ModelSpec, *, stage: int, gpus_per_node: int, nnodes: int,
                       offload_optimizer: bool = False, offload_params: bool = False) -> int:
    """Host RAM per node for a GPU plan, DeepSpeed's `cpu_mem` estimate (zero_init off: every rank first loads the
    full fp32 model on the CPU, from_pretrained without zero.Init)."""
    psi, total = spec.params, gpus_per_node * nnodes
    if stage in (1, 2) and offload_optimizer:
        return int(psi * max(4 * total, 16) * DS_BUFFER_FACTOR)
    if stage == 3 and offload_optimizer:
        per_node = (18 if offload_params else 16) / nnodes
        return int(psi * max(4 * gpus_per_node, per_node) * DS_BUFFER_FACTOR)
    return int(psi * 4 * gpus_per_node * DS_BUFFER_FACTOR)


# ---------------------------------------------------------------------------------------------------- activations

def _scores(a: int, b: int, q: int, k: int, fused: bool) -> int:
    """Attention-score bytes kept for backward: softmax output, dropout mask and dropped-out probabilities
    (5·a·q·k·b), or with a fused kernel only the fp32 log-sum-exp per query (4·a·q·b)."""
    return 4 * a * q * b if fused else 5 * a * q * k * b


def _encoder_layer(spec: ModelSpec, s: int, b: int, fused: bool) -> int:
    """16-bit bytes one encoder layer keeps for backward (Korthikanti: 34sbh + 5as²b when ffn=4h, inner=h):
    attention 3sbh + 8sb·inner + scores, FFN 3sbh + 4sb·ffn (6 when gated), two layer norms 4sbh."""
    h, i, f = spec.hidden_size, spec.attention_inner, spec.ffn_size
    ffn = 3 * h + (6 if spec.gated_ffn else 4) * f
    return s * b * (3 * h + 8 * i + ffn + 4 * h) + _scores(spec.heads, b, s, s, fused)


def _decoder_layer(spec: ModelSpec, t: int, s: int, b: int, fused: bool) -> int:
    """Self-attention at the target length t, cross-attention (queries at t, keys/values at the source length s),
    FFN, three layer norms."""
    h, i, f, a = spec.hidden_size, spec.attention_inner, spec.ffn_size, spec.heads
    ffn = 3 * h + (6 if spec.gated_ffn else 4) * f
    per_target_token = (3 * h + 8 * i) + (3 * h + 4 * i) + ffn + 6 * h
    return t * b * per_target_token + s * b * 4 * i + _scores(a, b, t, t, fused) + _scores(a, b, t, s, fused)


def activation_bytes(spec: ModelSpec, *, micro_batch: int, source_length: int, target_length: int,
                     precision: str, checkpointing: bool, fused_attention: bool = False) -> int:
    """Activation bytes per rank for one micro-batch. Full recomputation keeps each layer's input (2sbh) plus one
    layer's activations while it is recomputed. The logits (b·t·V) are held in the working precision, upcast to
    fp32 for the loss, and get an fp32 gradient. fp32 training doubles every 16-bit activation. `fused_attention`:
    SDPA on CUDA (flash / memory-efficient kernels); on CPU, SDPA with attention dropout runs the math path."""
    if not spec.has_architecture:
        return 0
    b, s, t, h = micro_batch, source_length, target_length, spec.hidden_size
    enc, dec = _encoder_layer(spec, s, b, fused_attention), _decoder_layer(spec, t, s, b, fused_attention)
    embeddings = 3 * (s + t) * b * h + 2 * s * b * h   # embedding outputs + dropout masks; encoder output (cross-attn)
    if checkpointing:
        layers = 2 * b * h * (s * spec.encoder_layers + t * spec.decoder_layers) + max(enc, dec)
    else:
        layers = enc * spec.encoder_layers + dec * spec.decoder_layers
    w = 2 if precision in ("bf16", "fp16") else 4
    logits = b * t * spec.vocab_size * (w + 4 + 4)
    return (embeddings + layers) * (w // 2) + logits


def overhead_bytes(spec: ModelSpec, *, device: str, stage: int, precision: str) -> int:
    """Per-rank bytes besides model states and activations: CUDA context (GPU) or the process's baseline RSS (CPU),
    plus DeepSpeed's double-buffered gradient bucket (h² by the rendered config; ZeRO-3 adds a 0.9h² prefetch)."""
    w = 2 if precision in ("bf16", "fp16") else 4
    h2 = spec.hidden_size ** 2
    buckets = 0 if stage == 0 else int((2 * h2 + (0.9 * h2 if stage == 3 else 0)) * w)
    return (CUDA_OVERHEAD if device == "cuda" else CPU_RANK_OVERHEAD) + buckets
