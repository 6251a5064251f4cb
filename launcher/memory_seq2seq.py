"""Activation memory of encoder-decoder training and generation (the seq2seq task), counted tensor by tensor as
autograd keeps them: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
generalised to the model's FFN and attention widths, to cross-attention, and to what each kernel keeps on CPU and
CUDA. Measured against one real training step on CPU: benchmarks/bench_activation_memory.py."""
from __future__ import annotations

from dataclasses import dataclass

from launcher.memory_estimate import T5_FAMILY, AdapterSpec, ModelSpec, element_bytes


def fused_attention(spec: ModelSpec, device: str) -> bool:
    """Whether training attention keeps only per-query statistics instead of the s x s probabilities. Eager attention
    always keeps them. SDPA on CUDA runs flash / memory-efficient kernels (dropout included); on CPU, SDPA's fused
    kernel only runs without attention dropout, with dropout it takes the math path (probabilities kept)."""
    if spec.attn_implementation != "sdpa":
        return False
    return device == "cuda" or spec.attention_dropout == 0


@dataclass(frozen=True)
class _Widths:
    """Bytes of one kept element: w for activations; a dropout mask is a bool under CUDA's fused dropout, while CPU's
    `input * noise` keeps the noise in the working dtype (0 where that dropout is off)."""
    w: int
    hidden_mask: int
    ffn_mask: int
    fused: bool
    scores: int   # per attention-probability element: softmax output (+ noise and dropped-out copy with dropout);
                  # fp32 under SDPA's CPU math path, which upcasts 16-bit inputs


def _widths(spec: ModelSpec, precision: str, device: str) -> _Widths:
    w = element_bytes(precision)
    mask = 1 if device == "cuda" else w
    if device == "cpu" and spec.attn_implementation == "sdpa":   # SDPA's CPU math path computes in fp32
        scores = 4 + (4 + 4 if spec.attention_dropout > 0 else 0)
    else:
        scores = w + (mask + w if spec.attention_dropout > 0 else 0)
    return _Widths(w, mask if spec.dropout > 0 else 0, mask if spec.activation_dropout > 0 else 0,
                   fused_attention(spec, device), scores)


def _attention(spec: ModelSpec, x: _Widths, b: int, q: int, k: int, cross: bool) -> int:
    """One attention block: its input and norm (2h), Q/K/V and the re-laid-out output (4·inner; cross-attention's K
    and V are per source token), the output dropout mask, and the probabilities (or the fused kernel's output and
    fp32 log-sum-exp)."""
    h, i, a = spec.hidden_size, spec.attention_inner, spec.heads
    per_query = (2 * h + (2 if cross else 4) * i) * x.w + h * x.hidden_mask
    kv = 2 * i * x.w * k * b if cross else 0
    probs = (i * x.w + 4 * a) * q * b if x.fused else a * q * k * b * x.scores
    return per_query * q * b + kv + probs


def _ffn(spec: ModelSpec, x: _Widths, tokens: int) -> int:
    """Input and norm (2h), the intermediate (2f: activation input and output; 4f gated: both projections, the
    activation and the product), the activation-dropout mask and the output dropout mask."""
    h, f = spec.hidden_size, spec.ffn_size
    return tokens * ((2 * h + (4 if spec.gated_ffn else 2) * f) * x.w + f * x.ffn_mask + h * x.hidden_mask)


def _norm_upcast(spec: ModelSpec, x: _Widths, tokens: int) -> int:
    """T5's RMSNorm squares an fp32 copy of its input when the model runs in 16 bits."""
    return 4 * spec.hidden_size * tokens if spec.model_type in T5_FAMILY and x.w == 2 else 0


def _encoder_layer(spec: ModelSpec, x: _Widths, s: int, b: int) -> int:
    return _attention(spec, x, b, s, s, cross=False) + _ffn(spec, x, s * b) + 2 * _norm_upcast(spec, x, s * b)


def _decoder_layer(spec: ModelSpec, x: _Widths, t: int, s: int, b: int) -> int:
    return (_attention(spec, x, b, t, t, cross=False) + _attention(spec, x, b, t, s, cross=True)
            + _ffn(spec, x, t * b) + 3 * _norm_upcast(spec, x, t * b))


def activation_bytes(spec: ModelSpec, *, micro_batch: int, source_length: int, target_length: int,
                     precision: str, checkpointing: bool, device: str, adapters: AdapterSpec | None = None) -> int:
    """Peak activation bytes per rank for one micro-batch, counted tensor by tensor as autograd keeps them (after
    Korthikanti et al. 2022, with this model's widths, device and precision; see `_Widths`). Full recomputation keeps
    each layer's input plus one layer's activations while it is recomputed.

    The peak is the largest of these moments: the start of backward (everything kept, plus the loss's log-softmax
    output and two gradients of the logits, in the working dtype); with checkpointing, a layer's recomputation (the layer
    inputs, one layer's activations and the lm_head's V·h gradient); and when backward reaches the shared embedding,
    which sums its gradients (V·h each: from the decoder input and the tied lm_head, then their sum; from the encoder
    input at the very end) while the encoder's kept activations are still there. Untied (mT5, T5 v1.1), the lm_head's
    gradient is not in that sum: two V·h at most (measured 0.96-1.08 GiB for mt5-small fp32 at micro-batch 1).

    `adapters` are not modelled for encoder-decoders: the count is full fine-tuning's, an upper bound (a frozen
    linear keeps no input for its own weight gradient)."""
    b, s, t, h = micro_batch, source_length, target_length, spec.hidden_size
    x = _widths(spec, precision, device)
    enc, dec = _encoder_layer(spec, x, s, b), _decoder_layer(spec, x, t, s, b)
    embeddings = (s + t) * b * (2 * h * x.w + h * x.hidden_mask) + 2 * s * b * h * x.w  # + encoder output, final norm
    embedding_grad = spec.vocab_size * h * x.w
    logits = 3 * b * t * spec.vocab_size * x.w   # cross-entropy in the working dtype (BART, T5 call it directly)
    if checkpointing:
        encoder, decoder = b * h * x.w * s * spec.encoder_layers, b * h * x.w * t * spec.decoder_layers
        recompute = embeddings + encoder + decoder + max(enc, dec) + embedding_grad
    else:
        encoder, decoder, recompute = enc * spec.encoder_layers, dec * spec.decoder_layers, 0
    tied = spec.tied_lm_head
    embedding_sum = embeddings + max(encoder + (3 if tied else 1) * embedding_grad, (3 if tied else 2) * embedding_grad)
    lm_head = embeddings + encoder + decoder + b * t * spec.vocab_size * x.w + embedding_grad  # its V·h gradient
    return max(embeddings + encoder + decoder + logits, recompute, embedding_sum, lm_head)


def generation_bytes(spec: ModelSpec, *, rows: int, source_length: int, target_length: int, precision: str,
                     device: str) -> int:
    """Activation bytes of generating for `rows` sequences (batch x beams): no backward, so the layer inputs and one
    layer at a time, as under full recomputation, plus the decoder's cross-attention cache (2·rows·s·h a layer).
    An over-estimate: generation keeps the logits of the last position only."""
    w = element_bytes(precision)
    kv = 2 * rows * source_length * spec.hidden_size * spec.decoder_layers * w
    return activation_bytes(spec, micro_batch=rows, source_length=source_length, target_length=target_length,
                            precision=precision, checkpointing=True, device=device) + kv


