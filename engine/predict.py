"""`dialsum predict`: a registered checkpoint summarizes a dialogue file into a submission CSV (`fname,summary`).

Generation uses the config's `generation` and `data` settings, so a submission is produced the way evaluation produced
the scores the registry recorded. Dialogues are batched longest first (little padding, and an out-of-memory batch shows
up at once, not at the end) while the output keeps the input order.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.data import SummarizationDataset, LengthSorted, read_dialogues, tokenize_split
from engine.errors import UserError
from engine.schema import DialsumConfig, GenerationConfig, ModelConfig


@dataclass
class PredictResult:
    out_path: Path
    num_rows: int
    model_ref: str  # NAME:VERSION the reference resolved to
    checkpoint_dir: str
    device: str
    seconds: float


def resolve_model(cfg: DialsumConfig, model_ref: str) -> dict[str, Any]:
    """The registry version `model_ref` (NAME, NAME:VERSION, NAME@ALIAS) names in the config's store; its checkpoint
    directory must still exist."""
    from engine.store import store_uri
    from engine.store import Registry, open_store, parse_model_ref

    name, ref = parse_model_ref(model_ref)
    with open_store(store_uri(cfg), create=False) as store:
        version = Registry(store).get(name, ref)
    checkpoint = Path(version["checkpoint_dir"])
    if not any((checkpoint / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise UserError(f"model {version['ref']}: checkpoint directory {checkpoint} is missing or has no config.json")
    return version


def summarize(model, tokenizer, dataset: SummarizationDataset, generation: GenerationConfig, *, batch_size: int,
              task=None, seed: int | None = None, progress: bool = True) -> list[str]:
    """Generated summaries for every dialogue of `dataset`, in dataset order (batches sorted longest first). `task`:
    the model's (engine/tasks), which pads the batch, sets the generation arguments and takes the prompt off; `seed`
    (sampling): the random state every batch's generation starts from."""
    from tqdm import tqdm

    from engine.generation import seeded
    from engine.modeling import decode_summaries
    from engine.tasks import get_task, task_of_config

    task = task or get_task(task_of_config(model.config))
    device = next(model.parameters()).device
    kwargs = task.generation_kwargs(generation)
    ordered = LengthSorted(dataset)
    summaries: list[str] = []
    with torch.inference_mode(), tqdm(total=len(ordered), unit="dialogue", file=sys.stderr, disable=not progress) as bar:
        for start in range(0, len(ordered), batch_size):
            rows = [ordered[k] for k in range(start, min(start + batch_size, len(ordered)))]
            batch = task.generation_batch(tokenizer, rows).to(device)
            with seeded(seed if generation.do_sample else None):
                generated = model.generate(**batch, **kwargs)
            summaries += decode_summaries(tokenizer, task.summary_ids(generated, batch))
            bar.update(len(rows))
    return ordered.restore(summaries)


def summarize_file(cfg: DialsumConfig, model_dir: str | Path, input_path: str | Path, out_path: str | Path, *,
                   batch_size: int, device: torch.device, key: str = "--input") -> tuple[Path, int]:
    """The model saved in `model_dir` summarizes `input_path` (CSV/JSONL with fname, dialogue); `fname,summary` is
    written to `out_path` atomically. Returns (out_path, rows)."""
    from engine.best import write_predictions_csv
    from engine.modeling import load_model_and_tokenizer, saved_model_task

    dialogues = read_dialogues(input_path, require_summary=False, key=key)
    saved = ModelConfig(name_or_path=str(model_dir), trust_remote_code=cfg.model.trust_remote_code)
    task = saved_model_task(saved)
    model, tokenizer = load_model_and_tokenizer(saved, [], task)
    model.to(device).eval()
    dataset = tokenize_split(dialogues, tokenizer, task.encoder(cfg, tokenizer), with_labels=False, cache_dir=None)
    summaries = summarize(model, tokenizer, dataset, cfg.generation, batch_size=batch_size, task=task,
                          seed=cfg.experiment.seed)
    return write_predictions_csv(Path(out_path), [x.fname for x in dialogues], summaries), len(summaries)


def predict(cfg: DialsumConfig, model_ref: str, input_path: str | Path, out_path: str | Path, *,
            batch_size: int = 16) -> PredictResult:
    """Load the registered checkpoint, summarize `input_path` (CSV/JSONL with fname, dialogue) and write
    `fname,summary` to `out_path` atomically."""
    if batch_size < 1:
        raise UserError(f"--batch-size: expected a positive integer, got {batch_size}")
    started = time.perf_counter()
    read_dialogues(input_path, require_summary=False, key="--input")  # a bad file fails before the model loads
    version = resolve_model(cfg, model_ref)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out, rows = summarize_file(cfg, version["checkpoint_dir"], input_path, out_path, batch_size=batch_size,
                               device=device)
    return PredictResult(out_path=out, num_rows=rows, model_ref=version["ref"],
                         checkpoint_dir=version["checkpoint_dir"], device=str(device),
                         seconds=time.perf_counter() - started)
