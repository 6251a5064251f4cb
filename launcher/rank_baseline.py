"""Measures what a CPU rank holds besides its model's states and activations: a fresh interpreter with rank 0's
imports (torch, transformers, DeepSpeed, the engine, W&B, the store, ROUGE), a one-process gloo group, and the first
training step and beam search of a 1-layer BART whose own tensors are a few hundred KB. Prints the peak RSS in bytes.

`launcher.memory_estimate.cpu_baseline_bytes` runs it in a subprocess once per set of library versions: the
interpreter, libraries, thread pools and allocator arenas a rank pays for before its model counts are measured on the
machine that runs it, not assumed."""
from __future__ import annotations

import os
import resource
import tempfile


def main() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed  # noqa: F401  (a rank's imports, then rank 0's tracking and scoring)
    import psutil
    import torch
    import torch.distributed as dist
    import wandb  # noqa: F401
    from transformers import BartConfig, BartForConditionalGeneration, Seq2SeqTrainer  # noqa: F401

    import engine.trainer  # noqa: F401
    from engine.rouge import score_summaries
    from engine.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1)
        open_store(f"sqlite:///{tmp}/probe.db")
        config = BartConfig(vocab_size=128, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                            max_position_embeddings=64)
        model = BartForConditionalGeneration(config)
        optimizer = torch.optim.AdamW(model.parameters(), fused=True)
        ids, labels = torch.randint(4, 128, (2, 32)), torch.randint(4, 128, (2, 8))
        for _ in range(2):
            model(input_ids=ids, labels=labels).loss.backward()
            dist.all_reduce(torch.zeros(1))
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            model.generate(ids, num_beams=4, min_new_tokens=8, max_new_tokens=8)
        score_summaries(["a probe summary"], [["a probe reference"]])
        dist.destroy_process_group()
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    print(max(peak_kib * 1024, psutil.Process().memory_info().rss))


if __name__ == "__main__":
    main()
