"""What every rank must agree on during training, and the collectives it costs.

Each helper is a collective: every rank calls it at the same point, never from rank-0-only code. Per step the engine
adds one synchronous all-reduce after each forward (out-of-memory flag and token count, `agree_after_forward`) and one
asynchronous all-reduce at each step end (preemption, `any_rank_flag_async`); the anomaly detector's stop flag is
reduced only at train logs.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from engine.distributed import is_distributed


def _device() -> str:
    """Where a collective's tensor must live: the rank's GPU under NCCL, else CPU (gloo)."""
    return f"cuda:{torch.cuda.current_device()}" if torch.distributed.get_backend() == "nccl" else "cpu"


def any_rank_flag(flag: bool) -> bool:
    """True on every rank when it is True on any rank (a collective every rank calls)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def any_rank_flag_async(flag: bool) -> Callable[[], bool]:
    """`any_rank_flag` without waiting: returns a function that waits for the answer. A check every step costs no
    synchronisation when its answer is read one step later (the reduction finishes while the next step computes)."""
    if not is_distributed():
        return lambda: flag
    t = torch.tensor([1.0 if flag else 0.0], device=_device())
    work = torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, async_op=True)

    def answer() -> bool:
        work.wait()
        return bool(t.item() > 0)

    return answer


def agree_after_forward(oom: bool, tokens: torch.Tensor | int) -> tuple[bool, int]:
    """(any rank ran out of memory, tokens summed over ranks): one all-reduce that every rank calls after a forward."""
    if not is_distributed():
        return oom, int(tokens)
    device = _device()
    t = torch.stack([torch.tensor(int(oom), dtype=torch.int64, device=device),
                     torch.as_tensor(tokens).to(device=device, dtype=torch.int64)])
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    oom_ranks, total = t.tolist()
    return oom_ranks > 0, total
