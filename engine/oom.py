"""Out-of-memory backoff inside a step, agreed by every rank, keeping the global batch; token counting on the side.

When a forward pass runs out of memory on any rank, all ranks learn it through one all-reduce (every rank calls it
after every forward), halve their micro-batch by splitting each batch into twice as many chunks, and
accumulate the chunks' gradients before the optimizer step. The global batch, the learning-rate schedule and the step
count stay as planned; training continues without a restart. The event is recorded on the run.

The check sits between forward and backward: under DeepSpeed ZeRO the backward pass runs collectives, so a rank that
ran out of memory there cannot be rejoined; an OOM in backward still fails the run cleanly (the launcher records it).

Under ZeRO-3 the forward itself all-gathers parameters layer by layer: a rank that ran out of memory partway through
has left its peers inside an all-gather, where no agreement can reach them. There the backoff is refused: the rank
exits with OOM_RESTART_EXIT_CODE and `dialsum launch` restarts the job from its last checkpoint at half the
micro-batch (global batch kept; an `oom_restart` event on the run).

The same all-reduce carries each rank's non-padding source tokens, which keeps `state.num_input_tokens_seen` (tokens/s
and MFU in the Profiler). The Trainer's own `include_num_input_tokens_seen` would add a second collective (a gather)
to every micro-step, so the engine leaves it off.
"""
from __future__ import annotations

import contextlib
import gc
import logging
from typing import Any

import torch
from accelerate.utils import DistributedType
from transformers import Seq2SeqTrainer

from engine.agreement import agree_after_forward
from engine.compat import SequentialEvaluation, sync_gradients
from engine.plan import OOM_RESTART_EXIT_CODE
from engine.recorder import Recorder
from engine.generation import seeded

log = logging.getLogger(__name__)


class ZeRO3OutOfMemory(SystemExit):
    """Leaves the rank with OOM_RESTART_EXIT_CODE (a SystemExit: no collective, no traceback)."""

    def __init__(self, step: int, micro_batch_size: int):
        super().__init__(OOM_RESTART_EXIT_CODE)
        self.step, self.micro_batch_size = step, micro_batch_size


def count_source_tokens(inputs: dict[str, Any], pad_token_id: int | None) -> torch.Tensor | int:
    """Non-padding source tokens of a batch, left on its device (no sync until the all-reduce)."""
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    if pad_token_id is not None:
        return (inputs["input_ids"] != pad_token_id).sum()
    return inputs["input_ids"].numel()


def split_batch(inputs: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """Split every batch-first tensor into `parts` chunks of (nearly) equal rows; fewer when rows run out."""
    rows = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))
    parts = max(1, min(parts, rows))
    bounds = [round(i * rows / parts) for i in range(parts + 1)]
    return [{k: v[a:b] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            for a, b in zip(bounds, bounds[1:])]


def _rows(inputs: dict[str, Any]) -> int:
    return next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))


class OOMBackoffTrainer(SequentialEvaluation, Seq2SeqTrainer):
    """Seq2SeqTrainer whose training step survives forward-pass OOM by splitting the micro-batch and counts source
    tokens in the same all-reduce (see the module doc)."""

    def __init__(self, *args, recorder: Recorder, gather_for_generation: bool = False, sample_seed: int | None = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.recorder = recorder
        self.splits = 1  # chunks per micro-batch; doubles at each agreed OOM
        self.gather_for_generation, self.sample_seed = gather_for_generation, sample_seed
        self._gathered = None  # the whole model while an evaluation holds it (evaluation_loop)

    # -- evaluation by generation (every task) --------------------------------------------------------------------
    @contextlib.contextmanager
    def generation_model(self):
        """The model a batch of an evaluation generates with: the whole model the evaluation gathered (see
        `evaluation_loop`), else the model as trained. Sampling draws from `sample_seed` (generation.do_sample), the
        training's random state kept."""
        with seeded(self.sample_seed):
            yield self._gathered if self._gathered is not None else self.model

    def evaluation_loop(self, *args, **kwargs):
        """Under ZeRO-3 every generated token would all-gather every layer again; where the plan found the whole model
        fits one rank for inference (`plan.gather_for_generation`), it is gathered once for the whole evaluation
        (TRL's `unwrap_model_for_generation`: DeepSpeed's hooks off meanwhile), not once per batch: at 128 dev rows of
        a mini Llama on 2 CPU ranks, 1.13x plain DDP's evaluation time, against 1.68x gathering for each of a rank's 8
        batches (benchmarks/bench_zero3_eval.py)."""
        if not (self.gather_for_generation and self._zero3()):
            return super().evaluation_loop(*args, **kwargs)
        from trl.models import unwrap_model_for_generation

        with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as model:
            self._gathered = model
            try:
                return super().evaluation_loop(*args, **kwargs)
            finally:
                self._gathered = None

    def synced_generation(self) -> dict[str, bool]:
        """Under ZeRO-3 with per-layer gathers, a rank whose rows have finished keeps stepping so that its peers'
        all-gathers meet it (`synced_gpus`); with the model gathered, or without ZeRO-3, no rank waits for another."""
        return {"synced_gpus": self._zero3() and not self.gather_for_generation and self.args.world_size > 1}

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None, **gen_kwargs):
        if prediction_loss_only or not self.args.predict_with_generate:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)
        with self.generation_model():  # Seq2SeqTrainer generates with self.model: gathered inside, when planned
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys,
                                           **self.synced_generation())

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        model.train()
        inputs = self._prepare_inputs(inputs)
        total_rows = _rows(inputs)
        pending = split_batch(inputs, self.splits)
        sync_at_end = self.accelerator.sync_gradients
        total_loss = torch.zeros((), device=self.args.device)
        tokens = count_source_tokens(inputs, getattr(self.processing_class, "pad_token_id", None))
        while pending:
            chunk = pending.pop(0)
            loss, oom = None, False
            try:
                with self.compute_loss_context_manager():
                    loss = self.compute_loss(model, chunk, num_items_in_batch=num_items_in_batch)
            except torch.OutOfMemoryError:
                if self._zero3():  # peers are inside the forward's all-gathers: no agreement can reach them
                    log.error("out of memory in a ZeRO-3 forward at step %d (micro-batch %d): exiting for a restart "
                              "from the last checkpoint at a smaller micro-batch", self.state.global_step,
                              self.args.per_device_train_batch_size)
                    raise ZeRO3OutOfMemory(self.state.global_step, self.args.per_device_train_batch_size) from None
                oom = True
            any_oom, all_tokens = agree_after_forward(oom, tokens)
            self.state.num_input_tokens_seen += all_tokens
            tokens = 0  # a micro-batch counts once, however often it is split
            if any_oom:
                loss = None
                self._back_off(chunk_rows=_rows(chunk))
                pending = [part for c in [chunk, *pending] for part in split_batch(c, 2)]
                continue
            loss = self._scaled(loss, _rows(chunk) / total_rows, num_items_in_batch)
            kwargs = {"scale_wrt_gas": False} if self.accelerator.distributed_type == DistributedType.DEEPSPEED else {}
            with sync_gradients(self.accelerator, sync_at_end and not pending):  # only the last chunk syncs
                self.accelerator.backward(loss, **kwargs)
            total_loss = total_loss + loss.detach()
        return total_loss

    def _zero3(self) -> bool:
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        return self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3

    def _scaled(self, loss: torch.Tensor, fraction: float, num_items_in_batch) -> torch.Tensor:
        """The chunk's loss as its share of the step's loss. A model that normalises by `num_items_in_batch` already
        returns sum/num_items (chunks add up); otherwise a chunk's mean is weighted by its rows and divided by the
        accumulation steps, as the base Trainer does."""
        if self.args.n_gpu > 1:
            loss = loss.mean()
        if self.model_accepts_loss_kwargs and num_items_in_batch is not None:
            return loss
        return loss * fraction / self.current_gradient_accumulation_steps

    def _back_off(self, chunk_rows: int) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if chunk_rows <= 1:
            raise torch.OutOfMemoryError("out of memory with a micro-batch of 1 row: the plan does not fit")
        self.splits *= 2
        micro = self.args.per_device_train_batch_size
        data = {"micro_batch_size": max(1, micro // self.splits), "chunks_per_batch": self.splits,
                "gradient_accumulation_steps": self.args.gradient_accumulation_steps * self.splits,
                "global_batch_size": micro * self.args.gradient_accumulation_steps * self.args.world_size}
        log.warning("out of memory on a rank: every rank now splits each batch into %d chunks (%s)", self.splits, data)
        self.recorder.log_event(self.state.global_step, "oom_backoff", data)
