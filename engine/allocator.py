"""glibc's mmap threshold, set in a running process: what `MALLOC_MMAP_THRESHOLD_` does for a process started with it.

`dialsum launch` starts CPU ranks with the variable (launcher/planner.py says why: freed activations go back to the
OS instead of staying in the heap, so a rank's peak is the one the plan predicts). Ranks someone else started (srun,
torchrun, accelerate launch) were already running when the plan reached them, and glibc reads the variable at start-up
only; `mallopt(M_MMAP_THRESHOLD)` sets the same fixed threshold from then on.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def set_mmap_threshold(nbytes: int) -> bool:
    """Fix glibc's mmap threshold at `nbytes` (it no longer rises to each freed block's size). False where the C
    library has no mallopt (musl, macOS): the process keeps its allocator's own behaviour."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, nbytes) == 1
