"""Which trainable parameters a training step leaves without a gradient, traced on fake tensors (no memory, no
weights): what DDP's `find_unused_parameters` must know. With it on, DDP walks the autograd graph after every forward
to find them (and warns when there are none); off, a parameter that gets no gradient stalls the gradient all-reduce.
Layers repeat, so a copy with at most two of each kind of layer answers for the whole model in a second or two."""
from __future__ import annotations

import copy
from collections.abc import Mapping

LAYER_KEYS = ("encoder_layers", "decoder_layers", "num_layers", "num_decoder_layers", "num_hidden_layers")


def unused_trainable_parameters(hf_config, raw_config: Mapping) -> tuple[str, ...] | None:
    """Names (in a copy of at most two layers per stack) of trainable parameters that one forward + backward of a
    tiny batch, as the Trainer calls the model, leaves without a gradient; None when the model cannot be traced on
    fake tensors (its forward reads tensor values, as LED's attention does), i.e. unknown."""
    import torch
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    from launcher.memory_estimate import build_model

    small = copy.deepcopy(hf_config)
    for key in LAYER_KEYS:
        if isinstance(getattr(small, key, None), int):
            setattr(small, key, min(getattr(small, key), 2))
    with FakeTensorMode(allow_non_fake_inputs=True), torch.device("cpu"):
        model = build_model(small, raw_config, device="cpu")
        model.train()
        ids = torch.randint(4, 64, (1, 8))
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
        if getattr(small, "is_encoder_decoder", False):  # decoder inputs given: no start-token lookup
            batch.update(labels=torch.randint(4, 64, (1, 4)), decoder_input_ids=torch.randint(4, 64, (1, 4)))
        try:
            model(**batch).loss.backward()
        except DataDependentOutputException:
            return None
        return tuple(name for name, p in model.named_parameters() if p.requires_grad and p.grad is None)
