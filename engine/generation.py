"""Generation settings every task shares: beam search, repetition controls and sampling, from `generation:`.

Sampling draws from torch's generator; `seeded` gives every generation pass the same stream (`experiment.seed`)
without touching the training's, so a rerun writes the same summaries and a resumed run the same steps."""
from __future__ import annotations

import contextlib
from typing import Any

from engine.schema import GenerationConfig


def search_and_sampling(g: GenerationConfig) -> dict[str, Any]:
    sampling = g.do_sample
    return {
        "num_beams": g.num_beams,
        "length_penalty": g.length_penalty,
        "no_repeat_ngram_size": g.no_repeat_ngram_size,
        "repetition_penalty": g.repetition_penalty,
        "early_stopping": g.early_stopping if g.num_beams > 1 else False,  # a beam-search flag greedy search rejects
        "do_sample": sampling,
        "temperature": g.temperature if sampling else None,
        "top_p": g.top_p if sampling else None,
        "top_k": g.top_k if sampling else None,
    }


@contextlib.contextmanager
def seeded(seed: int | None):
    """Generation from a fixed random state (None: as it is), the caller's state restored afterwards."""
    if seed is None:
        yield
        return
    import torch

    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        torch.manual_seed(seed)
        yield
