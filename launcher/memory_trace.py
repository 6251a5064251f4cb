"""Activation memory by tracing: one training step of the exact model class on fake tensors (shapes and kernels are
real, no memory is), counting the bytes of every storage the step creates while it is alive. Deep models are traced
as 2-3 layer copies and scaled per layer."""
from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from engine.tasks import task_of_config
from launcher.cpu_kernels import bmm_copies_strided_operand
from launcher.memory_estimate import AdapterSpec, build_model

TRACE_FULL_LAYERS = 24  # trace the whole model up to this many layers; beyond, trace 2-3 layer copies and scale


class PeakBytes(TorchDispatchMode):
    """The peak of live storage bytes that operators created since entering, ignoring storages known beforehand
    (`known`: weights, gradients, buffers; views of them are not new memory). The same count as
    `torch.distributed._tools.mem_tracker.MemTracker`'s peak (within 0.7% on bart-base, t5-base, mt5-small and 2-layer
    copies of 7B/70B widths) without its per-module statistics, which it updates at every operator for every module it
    has seen: 4-12x faster here (bart-base 1.5 s vs 9.5 s a step, t5-base 1.8 s vs 20 s)."""

    def __init__(self, known: list[torch.Tensor]):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()
        for t in known:
            self._seen[t.untyped_storage()] = 0

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage not in self._seen:   # a new storage, not a view or an in-place result
                    self._seen[storage] = nbytes = storage.nbytes()
                    self.live += nbytes
                    # a storage's Python object lives as long as its memory (PyObject preservation)
                    weakref.finalize(storage, self._freed, nbytes)
        self.peak = max(self.peak, self.live + (_cpu_bmm_copies(args) if func is torch.ops.aten.bmm.default else 0))
        return out


def _cpu_bmm_copies(args) -> int:
    """What a CPU bmm in 16 bits copies besides its output, which fake tensors (no kernel runs) do not show: every
    non-contiguous operand, where this machine's kernel makes it contiguous first (`bmm_copies_strided_operand`)."""
    return sum(a.numel() * a.element_size() for a in args[:2]
               if a.device.type == "cpu" and a.dtype in (torch.bfloat16, torch.float16) and not a.is_contiguous()
               and bmm_copies_strided_operand(a.dtype))


def fake_training_step(hf_config, raw_config: Mapping, *, micro_batch: int, source_length: int, target_length: int,
                       precision: str, checkpointing: bool, device: str, adapters: AdapterSpec | None = None) -> tuple:
    """(model, batch, known tensors) for one training step, built under the caller's FakeTensorMode: the model as
    `from_pretrained` builds it (with `adapters`: wrapped by engine.adapters.adapt, as the engine trains LoRA/DoRA), in
    training mode, with gradients present as after a warm-up step (backward accumulates into them); `known` are the
    tensors that exist before the step (PeakBytes ignores their storages). A causal batch is what CausalCollator makes
    of a `source_length` prompt and a `target_length` summary; `training_loss` computes the step's loss."""
    # explicit at fp32 too: transformers 5 builds a config in its torch_dtype (bf16 for most decoder-only checkpoints)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    model = build_model(hf_config, raw_config, device, dtype)
    if checkpointing:   # the new name from transformers 5.x on; the old one warns
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    if adapters is not None:
        model = adapt(model, adapters, checkpointing)
    model.train()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    b, s, t, vocab = micro_batch, source_length, target_length, hf_config.vocab_size
    if task_of_config(hf_config) == "causal":
        labels = torch.cat([torch.full((b, s), -100), torch.randint(4, vocab, (b, t))], dim=1)
        batch = {"input_ids": torch.randint(4, vocab, (b, s + t)), "attention_mask": torch.ones(b, s + t, dtype=torch.long),
                 "position_ids": torch.arange(s + t).expand(b, -1), "labels": labels, "logits_to_keep": t + 1}
    else:
        batch = {"input_ids": torch.randint(4, vocab, (b, s)), "attention_mask": torch.ones(b, s, dtype=torch.long),
                 "labels": torch.randint(4, vocab, (b, t)),
                 "decoder_input_ids": torch.randint(4, vocab, (b, t))}  # no start-token lookup
    known = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None), *model.buffers(),
             *(v for v in batch.values() if isinstance(v, torch.Tensor))]
    return model, batch, known


def adapt(model, adapters: AdapterSpec, checkpointing: bool):
    """engine.adapters.adapt with the lora section `adapters` describes (no speaker tags). On fake tensors PEFT's move
    of each new adapter to its base layer's device and dtype swaps parameters, which fake ones refuse ("has weakref
    associated"): there the adapters are made on the meta device, which PEFT leaves in place, then put on the base's
    device (fp32, as PEFT keeps adapters)."""
    from torch._subclasses.fake_tensor import FakeTensor

    from engine.adapters import adapt as engine_adapt
    from engine.schema import DialsumConfig, LoraConfig, TrainingConfig

    cfg = DialsumConfig(training=TrainingConfig(method=adapters.method),
                        lora=LoraConfig(r=adapters.r, dropout=adapters.dropout, target_modules=list(adapters.targets),
                                        modules_to_save=list(adapters.modules_to_save)))
    weight = next(model.parameters())
    if not isinstance(weight, FakeTensor):
        return engine_adapt(model, cfg, task_of_config(model.config), SimpleNamespace(all_special_tokens=[]),
                            checkpointing)
    with torch.device("meta"):
        model = engine_adapt(model, cfg, task_of_config(model.config), SimpleNamespace(all_special_tokens=[]),
                             checkpointing)
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.device.type == "meta":
                setattr(module, name, torch.nn.Parameter(torch.empty_like(p, device=weight.device),
                                                         requires_grad=p.requires_grad))
    return model


def training_loss(model, batch: Mapping) -> torch.Tensor:
    """The loss of one training step as the engine computes it: a causal batch (it has `logits_to_keep`) through
    CausalTrainer.compute_loss (logits of the label positions only, fp32 cross-entropy); a seq2seq batch is the model's
    own loss, as the Trainer takes it."""
    if "logits_to_keep" not in batch:
        return model(**batch).loss
    from engine.tasks.causal import CausalTrainer

    trainer = SimpleNamespace(_keeps_logits=True, args=SimpleNamespace(label_smoothing_factor=0.0))
    return CausalTrainer.compute_loss(trainer, model, batch)


def _trace_once(hf_config, raw_config: Mapping, **step) -> int:
    """Peak bytes one training step allocates beyond the weights and the gradients that a warm-up step left, traced
    on fake tensors: SDPA picks its fused or math path as it would on `step["device"]`; fake CUDA tensors need a CUDA
    build of torch. The model is called as the engine calls it (T5's decoder then keeps its cache without
    checkpointing)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # "use_cache=True is incompatible with gradient checkpointing": the ranks' concern
    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.device(step["device"]):
            model, batch, known = fake_training_step(hf_config, raw_config, **step)
            with PeakBytes(known) as counter:
                training_loss(model, batch).backward()
    finally:
        hf_logging.set_verbosity(verbosity)
    return counter.peak


def layer_keys(hf_config) -> tuple[str, ...]:
    """The config keys of its layer stacks: (encoder, decoder) or a decoder-only model's one."""
    if task_of_config(hf_config) == "causal":
        return ("num_hidden_layers",)
    if hasattr(hf_config, "encoder_layers"):
        return "encoder_layers", "decoder_layers"
    return "num_layers", "num_decoder_layers"


def with_layers(hf_config, *layers: int):
    """A copy of the config with these many layers per stack (`layer_keys` order); per-layer lists (transformers 5's
    `layer_types`: Gemma 2's sliding/full alternation) cut to length."""
    small = copy.deepcopy(hf_config)
    for key, n in zip(layer_keys(hf_config), layers):
        setattr(small, key, n)
    if hasattr(small, "num_hidden_layers") and task_of_config(hf_config) != "causal":
        small.num_hidden_layers = layers[0]
    if isinstance(getattr(small, "layer_types", None), list):
        small.layer_types = small.layer_types[:small.num_hidden_layers]
    return small


def traced_activation_bytes(hf_config, raw_config: Mapping, *, micro_batch: int, source_length: int,
                            target_length: int, precision: str, checkpointing: bool, device: str = "cpu",
                            adapters: AdapterSpec | None = None) -> int:
    """Activation bytes of one training step of the exact model class, traced on fake tensors. Models deeper than
    TRACE_FULL_LAYERS are traced as 2-layer copies (2+2 for encoder-decoders) with one more layer in a stack and
    scaled per layer, which keeps a 70B config to seconds. Not from 1-layer copies: a first layer is unlike the others
    (T5's relative position bias lives in it) and a 1-layer model peaks elsewhere; T5-70B widths with checkpointing
    scaled from 1-layer copies to 3.53 GiB, from 2-layer copies to 2.05 GiB, against 1.97 GiB traced whole (393 s)."""
    keys = layer_keys(hf_config)
    depths = [getattr(hf_config, k, None) for k in keys]
    depths = [d or depths[0] for d in depths]
    kw = dict(micro_batch=micro_batch, source_length=source_length, target_length=target_length, precision=precision,
              checkpointing=checkpointing, device=device, adapters=adapters)
    if sum(depths) <= TRACE_FULL_LAYERS:
        return _trace_once(hf_config, raw_config, **kw)
    two = [2] * len(keys)
    base = _trace_once(with_layers(hf_config, *two), raw_config, **kw)
    total = base
    for i, depth in enumerate(depths):   # each stack's per-layer bytes: one more layer in it
        deeper = _trace_once(with_layers(hf_config, *two[:i], 3, *two[i + 1:]), raw_config, **kw)
        total += (depth - 2) * (deeper - base)
    return total
