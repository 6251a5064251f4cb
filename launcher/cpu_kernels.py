"""What this machine's CPU kernels allocate that fake tensors cannot show, probed once per process with a small real
call: the memory model and the trace count it only where the kernel really does it."""
from __future__ import annotations

import functools

import torch


def profiled_peak_bytes(run) -> int:
    """The peak of live CPU allocations while `run()` executes, from torch's profiler (the c10 allocator's own events:
    what a kernel allocates inside itself included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    for event in sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                        key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


@functools.cache
def bmm_copies_strided_operand(dtype: torch.dtype) -> bool:
    """Whether a CPU bmm in `dtype` copies a non-contiguous operand before it multiplies. A frozen LM head's logits
    run as a bmm over an expanded view of the V x h weight: on a CPU with AVX-512 bf16 the 16-bit kernel made it
    contiguous first (a 742 MiB `aten::clone` under `aten::bmm` for Qwen3-4B LoRA in torch's profiler); on an
    AVX2-only EPYC the same bmm, and fp32 bmm on both, read the strides and allocated the output only."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    rows, inner, columns = 4, 64, 256
    with unset_fake_temporarily(), torch.device("cpu"):   # callers may be tracing on fake tensors
        hidden = torch.randn(1, rows, inner, dtype=dtype)
        weight = torch.randn(columns, inner, dtype=dtype)
        peak = profiled_peak_bytes(lambda: torch.bmm(hidden, weight.t().expand(1, -1, -1)))
    output = rows * columns * weight.element_size()
    return peak >= output + weight.numel() * weight.element_size()
