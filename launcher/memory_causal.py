"""Activation memory of decoder-only training and generation (the causal task), counted tensor by tensor as autograd
keeps them, for the layer families engine/tasks/causal.py trains: Llama-style (RMSNorm, rotary, grouped-query
attention, SwiGLU: Llama, Mistral, SOLAR, Qwen2/3, Gemma 2) and GPT-NeoX (LayerNorm, fused query_key_value, partial
rotary, GELU MLP in parallel with attention). The sequence is the prompt (`source_length`) plus the summary
(`target_length`); logits exist for the last target_length + 1 positions only (`logits_to_keep`) and the loss upcasts
them to fp32. Measured against real CPU training steps: benchmarks/bench_causal_activation_memory.py."""
from __future__ import annotations

from launcher.memory_estimate import AdapterSpec, ModelSpec, element_bytes
from launcher.memory_seq2seq import fused_attention

NEOX = ("gpt_neox",)
FP32_NORM = ("gemma", "gemma2", "gemma3", "gemma3_text")  # RMSNorm that multiplies its weight in fp32


def _linears(spec: ModelSpec) -> dict[str, tuple[int, int]]:
    """(input, output) width of each linear layer of one decoder layer, by the short names lora.target_modules use."""
    h, f, i = spec.hidden_size, spec.ffn_size, spec.attention_inner
    if spec.model_type in NEOX:
        return {"query_key_value": (h, 3 * i), "dense": (i, h), "dense_h_to_4h": (h, f), "dense_4h_to_h": (f, h)}
    kv = i // spec.heads * (spec.kv_heads or spec.heads)
    return {"q_proj": (h, i), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (i, h), "gate_proj": (h, f),
            "up_proj": (h, f), "down_proj": (f, h)}


def _adapted(spec: ModelSpec, adapters: AdapterSpec) -> dict[str, tuple[int, int]]:
    linears = _linears(spec)
    return linears if "all-linear" in adapters.targets else {k: v for k, v in linears.items() if k in adapters.targets}


def _norm(spec: ModelSpec, w: int, frozen: bool) -> int:
    """Bytes a token keeps in one normalisation. LayerNorm: its input. RMSNorm: its input as fp32 (a copy under 16
    bits) and, for its weight's gradient, the normalised value (in the working dtype; Gemma's in fp32)."""
    h = spec.hidden_size
    if spec.model_type in NEOX:
        return w * h
    return 4 * h + (0 if frozen else (4 if spec.model_type in FP32_NORM else w) * h)


def _lora(spec: ModelSpec, w: int, adapters: AdapterSpec) -> int:
    """Bytes a token keeps in one layer's adapters (fp32, as PEFT keeps them): A's input, which is a dropped-out fp32
    copy and its noise per adapted layer with dropout (CPU dropout multiplies by a kept noise tensor), else the fp32
    cast of the layer's input (under 16 bits; at fp32 the base's input itself, once per distinct input); B's r-wide
    input. DoRA also keeps the base and adapter outputs its magnitude scales."""
    adapted = _adapted(spec, adapters)
    if adapters.dropout > 0:
        inputs = sum(8 * d_in for d_in, _ in adapted.values())
    elif w == 2:
        inputs = sum(4 * d_in for d_in, _ in adapted.values())
    else:
        inputs = 4 * sum(set(d_in for d_in, _ in adapted.values()))
    dora = sum((w + 4) * d_out for _, d_out in adapted.values()) if adapters.method == "dora" else 0
    return inputs + 4 * adapters.r * len(adapted) + dora


def _attention(spec: ModelSpec, w: int, device: str, frozen: bool, seq: int) -> int:
    """Bytes a token keeps in attention besides the norm: rotated Q and K, V (GPT-NeoX: the fused QKV output, which V
    is a view of), the output and its re-laid-out copy (o_proj's input: full fine-tuning only), Qwen3's Q/K norms;
    then either the fused kernel's fp32 log-sum-exp, or (eager, or SDPA's math path) the seq-long probabilities per
    head: softmax in fp32, its cast back, and Gemma 2's tanh soft-capped scores, with K and V repeated to every head."""
    i, a = spec.attention_inner, spec.heads
    kv = i // a * (spec.kv_heads or a)
    fused = fused_attention(spec, device)
    qkv = 3 * i + 2 * i if spec.model_type in NEOX else i + (2 * kv if fused else 2 * i)
    kept = (qkv + i + (0 if frozen else i)) * w
    if spec.model_type == "qwen3":   # per-head RMSNorm of Q and K: fp32 input copy, normalised value
        kept += 4 * (i + kv) + (0 if frozen else w * (i + kv))
    if fused:
        return kept + 4 * a
    scores = 4 + (w if w == 2 else 0) + (w if spec.model_type in FP32_NORM else 0)
    return kept + a * seq * scores


def _ffn(spec: ModelSpec, w: int, frozen: bool) -> int:
    """Bytes a token keeps in the MLP besides the norm: SwiGLU's gate output (the activation's input), the activation,
    the up projection, and their product (down_proj's input); GPT-NeoX's GELU input and output."""
    f = spec.ffn_size
    n = 4 if spec.gated_ffn else 2
    return (n - (1 if frozen else 0)) * f * w


def _layer(spec: ModelSpec, w: int, device: str, seq: int, adapters: AdapterSpec | None) -> int:
    """Bytes one token keeps in one decoder layer (sequence length `seq` for the attention probabilities): two norms
    (Gemma 2: four; GPT-NeoX's parallel block: one input for both), the norm outputs the frozen-or-not linear layers
    keep, attention, MLP and adapters."""
    frozen = adapters is not None
    h = spec.hidden_size
    norms = 1 if spec.model_type in NEOX else 4 if spec.model_type == "gemma2" else 2
    linear_inputs = 0 if frozen else 2 * h * w
    return (norms * _norm(spec, w, frozen) + linear_inputs + _attention(spec, w, device, frozen, seq)
            + _ffn(spec, w, frozen) + (_lora(spec, w, adapters) if frozen else 0))


def _backward_transient(spec: ModelSpec, w: int, tokens: int, frozen: bool) -> int:
    """Gradients alive at once while a layer's backward runs: the MLP's (SwiGLU: gate, up and their product's;
    GPT-NeoX's GELU MLP: its input's and output's); under full fine-tuning one more f-wide gradient while the weight
    gradients form; with adapters under 16 bits, the fp32 gradient of the widest adapter's input (PEFT keeps the
    adapters in fp32). Fitted to Polyglot-Ko-5.8B: LoRA fp32 measured 2 f-wide gradients, full with checkpointing 3."""
    f = spec.ffn_size
    gradients = ((3 if spec.gated_ffn else 2) + (0 if frozen else 1)) * f * w
    return (gradients + (4 * f if frozen and w == 2 else 0)) * tokens


def cpu_head_copy(spec: ModelSpec, precision: str, device: str, frozen: bool) -> int:
    """Bytes of the copy of the LM head's V x h weight that the logits' matmul makes on CPU in 16 bits when the head
    is frozen (adapters) and this machine's bmm copies a strided operand (`bmm_copies_strided_operand`): torch's
    matmul then runs a bmm over an expanded view of the weight (launcher/memory_trace.py counts the same copy in the
    trace). Measured on an AVX-512 bf16 CPU: Llama-3.2-1B, Gemma-2-2B and Qwen3-4B LoRA in bf16 were -13.7%, -15.4%
    and -35.1% without it."""
    w = element_bytes(precision)
    if device != "cpu" or w != 2 or not frozen:
        return 0
    import torch

    from launcher.cpu_kernels import bmm_copies_strided_operand
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return spec.vocab_size * spec.hidden_size * w if bmm_copies_strided_operand(dtype) else 0


def activation_bytes(spec: ModelSpec, *, micro_batch: int, source_length: int, target_length: int, precision: str,
                     checkpointing: bool, device: str, adapters: AdapterSpec | None = None) -> int:
    """Peak activation bytes per rank of one training micro-batch of prompt + summary tokens.

    Kept: every layer's tensors (`_layer`), or with checkpointing (non-reentrant, as transformers runs it) each layer's
    input plus one layer recomputed; the final norm and its output (the lm_head's input, full fine-tuning only); the
    loss: logits of target_length + 1 positions, their fp32 copy, the log-softmax output and two fp32 gradients.
    The peak is the larger of the loss moment and the layers' backward (their gradients, plus under full fine-tuning
    the lm_head's V x h weight gradient; a tied embedding holds it until the embedding's own arrives at the end).
    Adapters (LoRA, DoRA, QLoRA): the frozen base's linear layers keep no input for their weight gradient, the
    adapters keep theirs (`_lora`); QLoRA dequantizes one weight at a time (its largest bf16 copy counted). On CPU
    in 16 bits a frozen LM head's matmul runs as a bmm that copies the whole V x h weight (`cpu_head_copy`)."""
    b, s, t, h, v = micro_batch, source_length, target_length, spec.hidden_size, spec.vocab_size
    w = element_bytes(precision)
    tokens, keep = b * (s + t), b * (t + 1)
    frozen = adapters is not None
    layer = _layer(spec, w, device, s + t, adapters) * tokens
    kept = spec.decoder_layers * (h * w * tokens if checkpointing else layer)
    recomputed = layer if checkpointing else 0
    head = (_norm(spec, w, frozen) + (0 if frozen else h * w)) * tokens
    if spec.model_type == "gemma2":   # final logit soft-capping: tanh keeps its output
        head += keep * v * w
    loss = 3 * 4 * b * t * v   # the log-softmax output and, in its backward, two fp32 gradients
    if frozen:   # no V x h weight gradients: the loss, or a layer's backward
        embedding = lm_head = held = 0
    else:   # the lm_head's weight gradient beside its logits' gradient; the embedding's at the end (+ the sum, tied)
        lm_head = keep * v * w + v * h * w
        held = v * h * w if spec.tied_lm_head else 0
        embedding = (3 if spec.tied_lm_head else 1) * v * h * w
    moments = (kept + head + max(loss, lm_head),
               kept + recomputed + head + held + _backward_transient(spec, w, tokens, frozen), embedding,
               kept + head + cpu_head_copy(spec, precision, device, frozen) + keep * v * w)
    qlora = frozen and adapters.method == "qlora"
    dequantized = 2 * max(i * o for i, o in _linears(spec).values()) if qlora else 0
    return max(moments) + dequantized


def generation_bytes(spec: ModelSpec, *, rows: int, source_length: int, target_length: int, precision: str,
                     device: str) -> int:
    """Activation bytes of generating for `rows` sequences (batch x beams): the K/V cache of prompt + summary in every
    layer (kv_heads wide), one layer's tensors over the prompt at a time (prefill; no backward, so an over-estimate
    of what it keeps), and the last position's logits with their fp32 copy."""
    w = element_bytes(precision)
    s, t = source_length, target_length
    kv = 2 * spec.attention_inner // spec.heads * (spec.kv_heads or spec.heads)
    cache = rows * (s + t) * kv * w * spec.decoder_layers
    return cache + rows * s * _layer(spec, w, device, s, None) + rows * spec.vocab_size * (w + 4)
