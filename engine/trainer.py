"""The per-rank training entry: data in, Seq2SeqTrainer under DeepSpeed, ROUGE, best model out, run recorded.

Reads top to bottom: `create_trainer` (config -> plan) -> `prepare_data` (dialogues -> cached token ids) -> `train`
(Trainer built from the plan, evaluation by generation, best checkpoint exported, rank-0 recorder told what happened).
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import DataCollatorForSeq2Seq, EarlyStoppingCallback, Seq2SeqTrainingArguments, TrainerCallback

from engine.agreement import any_rank_flag, any_rank_flag_async
from engine.atomic import atomic_write_text
from engine.best import BestTracker
from engine.callbacks import AnomalyDetector, MemoryTracker, Profiler, load_custom_callbacks
from engine.callbacks.pruning import sweep_callbacks_from_env
from engine.checkpointing import (MARKER, CheckpointCommitter, deepspeed_weights_only_resume, latest_checkpoint,
                                  read_marker, safe_deepspeed_checkpoints)
from engine.config import config_from_dict
from engine.data import (LengthSorted, SummarizationDataset, find_placeholder_tokens, read_dialogues,
                         tokenize_split)
from engine.distributed import global_rank, is_distributed
from engine.environment import collect_environment, git_commit
from engine.errors import UserError
from engine.modeling import decode_summaries, generation_kwargs, load_model_and_tokenizer
from engine.oom import OOMBackoffTrainer
from engine.recorder import make_recorder
from engine.plan import PREEMPTED_EXIT_CODE, Plan, run_dir
from engine.redact import redact
from engine.rouge import score_summaries
from engine.signals import PreemptionCallback

log = logging.getLogger(__name__)

# Files of a Trainer checkpoint that make up the model; DeepSpeed/optimizer state (pickles) is never exported.
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


@dataclass
class Datasets:
    train: SummarizationDataset
    eval: SummarizationDataset


@dataclass
class TrainResult:
    run_id: str
    best_metrics: dict = field(default_factory=dict)
    final_metrics: dict = field(default_factory=dict)
    best_step: int | None = None
    model_path: str | None = None
    model_version: int | None = None
    predictions_path: str | None = None
    submission_path: str | None = None  # data.test_file summarized by the best model (fname,summary)
    preempted_at: int | None = None  # the step a preemption checkpoint was written at; the run is not finished


class RecorderCallback(TrainerCallback):
    """Forwards the Trainer's logs to the recorder under `train/` and `eval/` names."""

    def __init__(self, recorder):
        self.recorder = recorder

    def on_log(self, args, state, control, logs=None, **kwargs):
        metrics = {}
        for key, value in (logs or {}).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if key.startswith("eval_"):
                metrics[f"eval/{key[5:]}"] = float(value)
            elif key == "train_loss":  # the end-of-training average over all steps, not the last step's loss
                metrics["train/loss_mean"] = float(value)
            else:
                metrics[f"train/{key.removeprefix('train_')}"] = float(value)
        if metrics:
            self.recorder.log_metrics(state.global_step, metrics)


class RecorderFlush(TrainerCallback):
    """Last in the callback list: writes the metrics every callback logged at this log as one record."""

    def __init__(self, recorder):
        self.recorder = recorder

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.recorder.flush()

    def on_save(self, args, state, control, **kwargs):
        self.recorder.flush()  # a checkpoint hands every pending record to the writer


class DialogueSummarizationTrainer:
    def __init__(self, plan: Plan):
        self.plan = plan
        self.cfg = config_from_dict(plan.config)
        self.rank = global_rank()
        self.run_dir = run_dir(self.cfg.experiment.output_root, plan.run_id)
        self.model = None
        self.tokenizer = None

    # -- data ---------------------------------------------------------------------------------------------------
    def prepare_data(self) -> Datasets:
        d = self.cfg.data
        train_rows = read_dialogues(d.train_file, require_summary=True, limit=d.max_train_samples, key="data.train_file")
        eval_rows = read_dialogues(d.eval_file, require_summary=True, limit=d.max_eval_samples, key="data.eval_file")
        tags = find_placeholder_tokens(train_rows + eval_rows) if d.speaker_tokens else []
        self.model, self.tokenizer = load_model_and_tokenizer(self.cfg.model, tags)
        cache_dir = Path(d.cache_dir or Path(self.cfg.experiment.output_root) / "cache")
        common = dict(max_source_length=d.max_source_length, max_target_length=d.max_target_length,
                      source_prefix=d.source_prefix, with_labels=True, cache_dir=cache_dir)
        return Datasets(train=tokenize_split(train_rows, self.tokenizer, **common),
                        eval=tokenize_split(eval_rows, self.tokenizer, **common))

    # -- training -----------------------------------------------------------------------------------------------
    def _training_arguments(self, eval_rows: int = 0):
        cfg, plan, t = self.cfg, self.plan, self.cfg.training
        evaluate = t.eval_strategy != "no"
        return Seq2SeqTrainingArguments(
            output_dir=str(self.run_dir / "checkpoints"),
            seed=cfg.experiment.seed,
            use_cpu=plan.device == "cpu",
            deepspeed=plan.deepspeed_config if plan.use_deepspeed else None,
            per_device_train_batch_size=plan.micro_batch_size,
            per_device_eval_batch_size=balanced_eval_batch(plan.eval_batch_size or plan.micro_batch_size, eval_rows,
                                                           plan.world_size),
            gradient_accumulation_steps=plan.gradient_accumulation_steps,
            gradient_checkpointing=plan.gradient_checkpointing,
            bf16=plan.precision == "bf16",
            fp16=plan.precision == "fp16",
            learning_rate=t.learning_rate,
            weight_decay=t.weight_decay,
            warmup_steps=t.warmup_steps if t.warmup_steps > 0 else warmup_steps(t.warmup_ratio),
            lr_scheduler_type=t.lr_scheduler_type,
            optim=plan.optim,
            max_grad_norm=t.max_grad_norm,
            label_smoothing_factor=t.label_smoothing_factor,
            num_train_epochs=t.num_train_epochs,
            max_steps=t.max_steps,
            logging_steps=t.logging_steps,
            logging_first_step=True,
            eval_strategy=t.eval_strategy,
            eval_steps=t.eval_steps,
            save_strategy=t.eval_strategy if evaluate else "no",
            save_steps=t.eval_steps,
            save_total_limit=None,  # CheckpointCommitter rotates, after marking a checkpoint complete
            metric_for_best_model=t.metric_for_best_model if evaluate else None,
            greater_is_better=t.greater_is_better,
            load_best_model_at_end=False,  # best weights are exported from their safetensors checkpoint instead
            predict_with_generate=True,
            generation_max_length=self.cfg.generation.max_new_tokens + 1,
            generation_num_beams=self.cfg.generation.num_beams,
            report_to="none",
            include_num_input_tokens_seen="no",  # counted in OOMBackoffTrainer's per-forward all-reduce instead
            logging_nan_inf_filter=False,  # the anomaly detector must see a NaN loss, not a filtered one
            dataloader_num_workers=plan.dataloader_num_workers,
            train_sampling_strategy="group_by_length" if plan.group_by_length else "random",
            # BART's forward takes **kwargs, so the Trainer would rescale the loss by world size (13.85 vs 6.92 on 2 ranks).
            average_tokens_across_devices=False,
            disable_tqdm=self.rank != 0,
            save_only_model=False,
        )

    def _data_collator(self) -> DataCollatorForSeq2Seq:
        """Pads a batch to its longest row rounded up to the plan's multiple; labels pad with -100 (no loss)."""
        return DataCollatorForSeq2Seq(self.tokenizer, model=self.model, label_pad_token_id=-100,
                                      pad_to_multiple_of=self.plan.pad_to_multiple_of)

    def train(self, datasets: Datasets) -> TrainResult:
        cfg, plan = self.cfg, self.plan
        result = TrainResult(run_id=plan.run_id)
        preemption = PreemptionCallback(start_flag_reduce=any_rank_flag_async)  # handlers first: a signal now is not fatal
        recorder = make_recorder(plan, cfg, collect_environment(plan.topology))
        if self.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(redact(plan.config), sort_keys=False))
            plan.save(self.run_dir / "plan.json")
        recorder.start()
        trainer = None
        try:
            # evaluation generates with the configured settings (the Seq2SeqTrainer reads model.generation_config)
            self.model.generation_config.update(**generation_kwargs(cfg.generation))
            best = BestTracker(cfg.training.metric_for_best_model, cfg.training.greater_is_better,
                               self.run_dir / "predictions.csv", datasets.eval.fnames)

            # generation longest first (little padding per batch); summaries go back to dataset order
            eval_set = LengthSorted(datasets.eval) if cfg.evaluation.sort_by_length else datasets.eval

            def compute_metrics(pred) -> dict[str, float]:
                summaries = evaluation_summaries(pred, eval_set, self.tokenizer)
                best.latest_predictions = summaries
                return score_summaries(summaries, datasets.eval.references, lang=cfg.evaluation.lang,
                                       tokenizer=cfg.evaluation.tokenizer)

            callbacks = [
                RecorderCallback(recorder), best,
                AnomalyDetector.from_config(cfg.monitoring, recorder, all_reduce_flag=any_rank_flag),
                MemoryTracker(recorder, plan.memory),
                Profiler.from_config(cfg.monitoring, recorder, num_params=self.model.num_parameters(),
                                     target_to_source=cfg.data.max_target_length / cfg.data.max_source_length,
                                     trace_dir=self.run_dir / "traces"),
                *load_custom_callbacks(cfg.callbacks, recorder=recorder),
                *sweep_callbacks_from_env(),
                CheckpointCommitter(self.rank, plan.world_size, keep=cfg.training.save_total_limit),
                preemption,  # after the callbacks that act at a step end; only early stopping (at evaluate) and the flush follow
            ]
            if cfg.training.early_stopping_patience:
                callbacks.append(EarlyStoppingCallback(cfg.training.early_stopping_patience,
                                                       cfg.training.early_stopping_threshold))
            callbacks.append(RecorderFlush(recorder))  # after every callback that logs at a train or eval log
            trainer = OOMBackoffTrainer(
                model=self.model, args=self._training_arguments(len(datasets.eval)), train_dataset=datasets.train,
                eval_dataset=eval_set, processing_class=self.tokenizer,
                data_collator=self._data_collator(),
                compute_metrics=compute_metrics, callbacks=callbacks, recorder=recorder,
            )
            self._train_or_resume(trainer, recorder)
            if preemption.preempted_at is not None:
                result.preempted_at = preemption.preempted_at
                trainer = None
                _teardown()  # peers leave now: rank 0's writes below may wait on a busy store
                recorder.log_event(preemption.preempted_at, "preempted", {"signal": preemption.signal_name or "peer"})
                recorder.finish("preempted", exit_code=PREEMPTED_EXIT_CODE)
                return result
            if not best.last_metrics and cfg.training.eval_strategy != "no":
                trainer.evaluate()
            result.best_metrics, result.best_step = best.best_metrics, best.best_step
            result.final_metrics = best.last_metrics
            model_dir = self._export_model(trainer)
            result.model_path = str(model_dir)
            if (self.run_dir / "predictions.csv").exists():
                result.predictions_path = str(self.run_dir / "predictions.csv")
            final_step = trainer.state.global_step
            trainer = None
            _teardown()  # peers leave now: rank 0's registration, prediction and closing writes wait on nobody
            if cfg.tracking.register_model:  # before anything optional that can fail
                result.model_version = recorder.register_model(model_dir, result.best_metrics or result.final_metrics,
                                                               self._model_metadata(datasets, result))
            if cfg.data.test_file and self.rank == 0:
                result.submission_path = self._write_submission(model_dir, recorder, final_step)
            summary = {f"best/{k}": v for k, v in result.best_metrics.items()}
            summary.update({f"final/{k}": v for k, v in result.final_metrics.items()})
            recorder.finish("completed", summary=summary)
        except BaseException as exc:
            # No teardown collective here: a peer may be dead or inside another collective; the process just exits.
            preemption.leave()  # the watchdog stops: a peer that exits first must not cut the closing writes
            status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"  # Ctrl-C is the user's decision
            recorder.finish(status, error=f"{type(exc).__name__}: {exc}", failing_rank=self.rank, exit_code=1)
            raise
        return result

    def _train_or_resume(self, trainer, recorder) -> None:
        """Resume from this run's newest complete checkpoint when there is one (a restarted, requeued or `--resume`d
        job keeps its run id, so its run dir already holds them); at another world size, weights only."""
        checkpoint = latest_checkpoint(self.run_dir / "checkpoints")
        if checkpoint is None:
            with safe_deepspeed_checkpoints() if self.plan.use_deepspeed else contextlib.nullcontext():
                trainer.train()
            return
        marker = read_marker(checkpoint)
        same_world = marker.get("world_size") == self.plan.world_size
        data = {"checkpoint": checkpoint.name, "world_size": self.plan.world_size,
                "saved_world_size": marker.get("world_size"),
                "gradient_accumulation_steps": self.plan.gradient_accumulation_steps}
        recorder.log_event(marker["step"], "resumed", data)
        log.info("resuming from %s (saved on %s ranks, now %d)", checkpoint, marker.get("world_size"),
                 self.plan.world_size)
        with contextlib.ExitStack() as stack:
            if self.plan.use_deepspeed:
                stack.enter_context(safe_deepspeed_checkpoints())
                if not same_world:
                    recorder.log_event(marker["step"], "resume_optimizer_reset",
                                       {**data, "reason": "ZeRO optimizer shards do not load at another world size"})
                    stack.enter_context(deepspeed_weights_only_resume())
            trainer.train(resume_from_checkpoint=str(checkpoint))

    def _export_model(self, trainer) -> Path:
        """Copy the best checkpoint's model files (safetensors, configs, tokenizer) to <run>/model, atomically."""
        target = self.run_dir / "model"
        best_dir = trainer.state.best_model_checkpoint
        if best_dir and read_marker(Path(best_dir)) is None:
            raise RuntimeError(f"best checkpoint {best_dir} is incomplete (no {MARKER})")
        if self.rank == 0:
            tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=self.run_dir))
            if best_dir:
                for f in Path(best_dir).iterdir():
                    if f.is_file() and f.name.endswith(MODEL_FILE_SUFFIXES) and f.name != "trainer_state.json":
                        shutil.copy2(f, tmp / f.name)
        if not best_dir:  # no evaluation: the final weights are the model (save_model gathers ZeRO-3 shards)
            trainer.save_model(str(tmp) if self.rank == 0 else None)
        if self.rank == 0:
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        return target

    def _write_submission(self, model_dir: Path, recorder, step: int) -> str | None:
        """Rank 0: `data.test_file` summarized by the exported (best) model into <run>/submission.csv, beside
        predictions.csv, with the generation settings evaluation used; a `submission` event records it on the run.
        The model is trained and registered by now: a submission that fails is a warning and a `submission_failed`
        event (rerun it with `dialsum predict`), not a failed run."""
        from engine.predict import summarize_file

        device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if self.plan.device == "cuda"
                  else torch.device("cpu"))
        try:
            path, rows = summarize_file(self.cfg, model_dir, self.cfg.data.test_file, self.run_dir / "submission.csv",
                                        batch_size=self.plan.eval_batch_size, device=device, key="data.test_file")
        except Exception as exc:
            log.warning("submission of %s failed (the model is saved at %s; `dialsum predict` writes it): %s: %s",
                        self.cfg.data.test_file, model_dir, type(exc).__name__, exc)
            recorder.log_event(step, "submission_failed", {"test_file": self.cfg.data.test_file,
                                                           "error": f"{type(exc).__name__}: {exc}"})
            return None
        recorder.log_event(step, "submission", {"path": str(path), "rows": rows, "test_file": self.cfg.data.test_file})
        return str(path)

    def _model_metadata(self, datasets: Datasets, result: TrainResult) -> dict:
        return {
            "base_model": self.cfg.model.name_or_path,
            "data_hashes": {"train": datasets.train.content_hash, "eval": datasets.eval.content_hash},
            "best_step": result.best_step,
            "max_source_length": self.cfg.data.max_source_length,
            "max_target_length": self.cfg.data.max_target_length,
            "git_commit": git_commit(),
        }


def warmup_steps(ratio: float) -> float:
    """The Trainer's `warmup_steps` for a warm-up ratio. transformers 5 reads a float below 1 as a ratio of the total
    steps and anything from 1 up as a step count, so a ratio of 1.0 would warm up for one step; the largest float below
    1 gives ceil(total * (1 - 2**-53)) = total steps for any real step count."""
    return min(ratio, math.nextafter(1.0, 0.0))


def aligned_predictions(pred, dataset: SummarizationDataset | LengthSorted, pad_token_id: int):
    """Generated ids in the order of `dataset` (the evaluated one: LengthSorted when sorted). Distributed evaluation
    pads the last round with repeated samples (seen with DeepSpeed on CPU: 16 predictions for 10 rows), so keep the
    first len(dataset) and prove the order by the labels (which the Seq2SeqTrainer pads with -100 or the pad token)."""
    n = len(dataset)
    if len(pred.predictions) < n:
        raise RuntimeError(f"evaluation returned {len(pred.predictions)} predictions for {n} rows")
    for i in sorted({0, n // 2, n - 1}):
        expected = [t for t in dataset[i]["labels"] if t != pad_token_id]
        got = [t for t in pred.label_ids[i].tolist() if t not in (-100, pad_token_id)]
        if got != expected:
            raise RuntimeError(f"evaluation order mismatch at row {i}: predictions do not line up with the dataset")
    return pred.predictions[:n]


def balanced_eval_batch(largest: int, rows: int, world: int) -> int:
    """The generation batch per rank: as few rounds as `largest` allows, with the rows shared evenly across ranks and
    rounds (ranks take turns by batch; at 64 a rank, 100 rows on 2 ranks would be 64 on one and 36 on the other)."""
    if rows <= 0:
        return largest
    rounds = -(-rows // (largest * world))
    return max(1, -(-rows // (rounds * world)))


def evaluation_summaries(pred, eval_set: SummarizationDataset | LengthSorted, tokenizer) -> list[str]:
    """The evaluation's generated summaries, decoded, in dataset order (generation ran in `eval_set`'s order)."""
    summaries = decode_summaries(tokenizer, aligned_predictions(pred, eval_set, tokenizer.pad_token_id))
    return eval_set.restore(summaries) if isinstance(eval_set, LengthSorted) else summaries


def _teardown() -> None:
    """Free the engine and close the process group cleanly (without the barrier, about 1 in 10-30 runs aborted in gloo
    teardown). transformers keeps the Trainer's DeepSpeed config as a process-wide setting that `from_pretrained`
    obeys: under ZeRO-3 a model loaded after training (the submission, the Python API's next call) would be built
    inside `deepspeed.zero.Init` with the finished world's batch sizes, so the setting ends with the engine."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    gc.collect()
    if is_distributed():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def create_trainer(config_path: str, sweep_mode: bool = False) -> DialogueSummarizationTrainer:
    """Public API from the seed: config file -> trainer. In sweep mode (inside `wandb.agent`, after `wandb.init()`)
    the W&B run's config is the sweep layer, named nested or flat through `engine.config_aliases`, and the run keeps
    the W&B run's id, so the engine logs into that same W&B run (and leaves it open for the caller)."""
    from engine.distributed import plan_for_this_process

    sweep_params = None
    if sweep_mode:
        import wandb

        from engine.config import load_config
        from engine.config_aliases import to_config_params

        if wandb.run is None:
            raise UserError("create_trainer(sweep_mode=True): no active W&B run; call wandb.init() first "
                            "(wandb.agent starts the function that does)")
        base = load_config([config_path]).config
        sweep_params, notes = to_config_params(dict(wandb.config), "wandb.config",
                                               world=int(os.environ.get("WORLD_SIZE", "1")),
                                               base_global=base.training.global_batch_size)
        for note in notes:
            log.info("sweep parameter: %s", note)
        os.environ["DIALSUM_RUN_ID"] = wandb.run.id  # the tracked run and the W&B run are one
    return DialogueSummarizationTrainer(plan_for_this_process([config_path], sweep_params=sweep_params))
