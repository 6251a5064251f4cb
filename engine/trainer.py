"""The per-rank training entry: a Plan in, a trained, evaluated, exported and registered model out.

`DialogueSummarizationTrainer(plan, world)` runs one run of the plan on this rank. `prepare_data()` reads the
dialogues and turns them into cached token ids with the task's tokenizer (engine/tasks); `train(datasets)` goes
through the phases in order, each a method below:

1. start recording (rank 0: the run in the tracker, config.yaml and plan.json; the preemption handlers first);
2. load the model for the task;
3. build the Trainer: the task's Trainer class, collator and generation settings, the callbacks in their order;
4. train, or resume from the run's newest complete checkpoint (engine/checkpointing.py);
5. preempted: checkpointed, the run ends `preempted`;
6. evaluate once more if no evaluation ran;
7. export the best checkpoint's model (engine/best.py says which is best);
8. leave the process group: what follows is rank 0's alone and waits on no peer;
9. register the model version, then summarize `data.test_file` (optional: a failure there is an event);
10. finish the run `completed` with its best and final metrics.

Any exception ends the run `failed` (Ctrl-C: `killed`) with this rank and its error, and propagates.
"""
from __future__ import annotations

import gc
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml
from transformers import Seq2SeqTrainingArguments, TrainerCallback

from engine.adapters import (adapt, base_dtype, parameter_counts, quantization_config, uses_adapters,
                             write_model_card)
from engine.agreement import any_rank_flag, any_rank_flag_async
from engine.atomic import atomic_write_text
from engine.callbacks import AnomalyDetector, MemoryTracker, Profiler, load_custom_callbacks
from engine.callbacks.best import BestTracker
from engine.callbacks.pruning import sweep_callbacks
from engine.checkpointing import MARKER, CheckpointCommitter, read_marker, train_or_resume
from engine.config import config_from_dict
from engine.data import LengthSorted, SummarizationDataset
from engine.datasets import Datasets, prepare_datasets
from engine.distributed import is_distributed
from engine.environment import collect_environment, git_commit
from engine.errors import UserError
from engine.modeling import decode_summaries, load_model, partitioned_loading
from engine.plan import PREEMPTED_EXIT_CODE, Plan, run_dir
from engine.recorder import make_recorder
from engine.redact import redact
from engine.rouge import score_summaries
from engine.signals import PreemptionCallback
from engine.tasks import get_task
from engine.world import WORLD_OF_ONE, World

log = logging.getLogger(__name__)

# Files of a Trainer checkpoint that make up the model (weights or an adapter, configs, tokenizer and its chat
# template); DeepSpeed/optimizer state (pickles) is never exported.
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja")


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
    parameters: dict = field(default_factory=dict)  # trainable_parameters, total_parameters


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


class GenerationScorer:
    """The Trainer's `compute_metrics`: an evaluation's generated summaries, decoded and put back in dataset order,
    scored by ROUGE against every reference. It keeps the last summaries for the BestTracker's predictions.csv."""

    def __init__(self, eval_set, references: list[list[str]], tokenizer, lang: str, rouge_tokenizer: str):
        self.eval_set, self.references, self.tokenizer = eval_set, references, tokenizer
        self.lang, self.rouge_tokenizer = lang, rouge_tokenizer
        self.summaries: list[str] = []

    def __call__(self, pred) -> dict[str, float]:
        self.summaries = evaluation_summaries(pred, self.eval_set, self.tokenizer)
        return score_summaries(self.summaries, self.references, lang=self.lang, tokenizer=self.rouge_tokenizer)


class DialogueSummarizationTrainer:
    def __init__(self, plan: Plan, world: World = WORLD_OF_ONE):
        self.plan = plan
        self.cfg = config_from_dict(plan.config)
        self.world = world
        self.rank = world.rank
        self.task = get_task(plan.task)
        self.run_dir = run_dir(self.cfg.experiment.output_root, plan.run_id)
        self.tokenizer = None
        self.model = None

    # -- data -----------------------------------------------------------------------------------------------------
    def prepare_data(self) -> Datasets:
        """Training and evaluation dialogues as token ids (engine/datasets.py); the model loads in `train`."""
        self.tokenizer, datasets = prepare_datasets(self.cfg, self.task)
        return datasets

    # -- the run --------------------------------------------------------------------------------------------------
    def train(self, datasets: Datasets) -> TrainResult:
        cfg, plan = self.cfg, self.plan
        result = TrainResult(run_id=plan.run_id)
        preemption = PreemptionCallback(start_flag_reduce=any_rank_flag_async, lead_s=plan.preempt_lead_s,
                                        world=self.world)
        recorder = self._start_recording()
        trainer = None
        try:
            self.model = self.model or self._load_model()
            trainer, best = self._build_trainer(datasets, recorder, preemption)
            train_or_resume(trainer, plan, self.run_dir / "checkpoints", best, recorder)
            if preemption.preempted_at is not None:
                trainer = None
                return self._end_preempted(result, preemption, recorder)
            if best.last_step is None and cfg.training.eval_strategy != "no":
                trainer.evaluate()  # fewer steps than eval_steps: the run is still scored once
            result.best_metrics, result.best_step, result.final_metrics = best.best_metrics, best.best_step, \
                best.last_metrics
            result.parameters = parameter_counts(self.model)  # before the group closes (ZeRO-3's full sizes)
            model_dir = self._export_best(trainer, best)
            result.model_path = str(model_dir)
            if (self.run_dir / "predictions.csv").exists():
                result.predictions_path = str(self.run_dir / "predictions.csv")
            final_step = trainer.state.global_step
            trainer = None
            leave_process_group()
            if cfg.tracking.register_model:  # before anything optional that can fail
                result.model_version = recorder.register_model(model_dir, result.best_metrics or result.final_metrics,
                                                               self._model_metadata(datasets, result))
            if cfg.data.test_file and self.rank == 0:
                result.submission_path = self._write_submission(model_dir, recorder, final_step)
            summary = {f"best/{k}": v for k, v in result.best_metrics.items()}
            summary.update({f"model/{k}": float(v) for k, v in result.parameters.items()})
            summary.update({f"final/{k}": v for k, v in result.final_metrics.items()})
            recorder.finish("completed", summary=summary)
        except BaseException as exc:
            # No teardown collective here: a peer may be dead or inside another collective; the process just exits.
            preemption.leave()  # the watchdog stops: a peer that exits first must not cut the closing writes
            status = "killed" if isinstance(exc, KeyboardInterrupt) else "failed"  # Ctrl-C is the user's decision
            recorder.finish(status, error=f"{type(exc).__name__}: {exc}", failing_rank=self.rank, exit_code=1)
            raise
        return result

    # -- phases ---------------------------------------------------------------------------------------------------
    def _start_recording(self):
        """The rank-0 recorder (a null one elsewhere), started; rank 0 writes the run's config.yaml and plan.json."""
        recorder = make_recorder(self.plan, self.cfg, collect_environment(self.plan.topology), self.rank)
        if self.rank == 0:
            atomic_write_text(self.run_dir / "config.yaml", yaml.safe_dump(redact(self.plan.config), sort_keys=False))
            self.plan.save(self.run_dir / "plan.json")
        recorder.start()
        return recorder

    def _load_model(self):
        """The task's model; with adapters (training.method lora/dora/qlora) the frozen base, quantized for QLoRA,
        wrapped by PEFT; built partitioned where the plan says so (`plan.partitioned_loading`).
        Seeded first: the speaker tags' new embedding rows and the adapters start random, and a rerun (or a resumed
        run's uninterrupted twin) must start from the same weights."""
        from transformers import set_seed

        set_seed(self.cfg.experiment.seed)
        quantization = quantization_config(self.cfg)
        ds_config = self.plan.deepspeed_config if self.plan.partitioned_loading else None  # the planner's answer
        with partitioned_loading(ds_config):  # PEFT sees the partitioned base for what it is
            model = load_model(self.cfg.model, self.tokenizer, self.task, quantization,
                               dtype=base_dtype(self.cfg, self.plan.precision))
            if uses_adapters(self.cfg):
                model = adapt(model, self.cfg, self.task.name, self.tokenizer, self.plan.gradient_checkpointing)
        return model

    def _build_trainer(self, datasets: Datasets, recorder, preemption: PreemptionCallback):
        """The task's Trainer over the datasets, with evaluation by generation (longest dialogue first, summaries
        restored to dataset order) and the callbacks in their order."""
        cfg, plan, task = self.cfg, self.plan, self.task
        # evaluation generates with the configured settings (the Trainer reads model.generation_config)
        self.model.generation_config.update(**task.generation_kwargs(cfg.generation))
        eval_set = LengthSorted(datasets.eval) if cfg.evaluation.sort_by_length else datasets.eval
        scorer = GenerationScorer(eval_set, datasets.eval.references, self.tokenizer, cfg.evaluation.lang,
                                  cfg.evaluation.tokenizer)
        t = cfg.training
        best = BestTracker(t.metric_for_best_model, t.greater_is_better, self.run_dir / "predictions.csv",
                           datasets.eval.fnames, latest_summaries=lambda: scorer.summaries,
                           patience=t.early_stopping_patience, threshold=t.early_stopping_threshold)
        trainer = task.trainer_class()(
            model=self.model, args=self._training_arguments(len(datasets.eval)), train_dataset=datasets.train,
            eval_dataset=eval_set, processing_class=self.tokenizer,
            data_collator=task.training_collator(self.tokenizer, self.model, plan.pad_to_multiple_of),
            compute_metrics=scorer, callbacks=self._callbacks(recorder, best, preemption), recorder=recorder,
            gather_for_generation=plan.gather_for_generation,
            sample_seed=cfg.experiment.seed if cfg.generation.do_sample else None,
        )
        return trainer, best

    def _callbacks(self, recorder, best: BestTracker, preemption: PreemptionCallback) -> list[TrainerCallback]:
        """In the order they must run at each event (the Trainer calls them in list order):
        1. observers: they log what a step or an evaluation did (RecorderCallback first, so the Trainer's own metrics
           open the step's record), and the best evaluation so far, which may ask to stop early;
        2. the user's callbacks and a sweep trial's pruning, which may stop training on what they saw;
        3. the checkpoint committer: marks a checkpoint complete (with the best so far) once every rank saved it;
        4. preemption: at a step end, after everything above acted on that step;
        5. the flush: one record of everything logged at this log, last."""
        cfg, plan = self.cfg, self.plan
        return [
            RecorderCallback(recorder), best,
            AnomalyDetector.from_config(cfg.monitoring, recorder, all_reduce_flag=any_rank_flag),
            MemoryTracker(recorder, plan.memory),
            Profiler.from_config(cfg.monitoring, recorder,
                                 flops_per_token=self.task.flops_per_token(
                                     parameter_counts(self.model)["total_parameters"], cfg),
                                 trace_dir=self.run_dir / "traces"),
            *load_custom_callbacks(cfg.callbacks, recorder=recorder),
            *sweep_callbacks(plan.sweep_trial),
            CheckpointCommitter(self.rank, plan.world_size, keep=cfg.training.save_total_limit, best=best),
            preemption,
            RecorderFlush(recorder),
        ]

    def _training_arguments(self, eval_rows: int = 0) -> Seq2SeqTrainingArguments:
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
            # adapters: the frozen base's activations need input gradients; the reentrant variant cannot give them
            gradient_checkpointing_kwargs={"use_reentrant": False} if uses_adapters(cfg) else None,
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
            metric_for_best_model=None,  # "best" is engine/best.py's, for export, metrics, registry and resume alike
            load_best_model_at_end=False,  # best weights are exported from their safetensors checkpoint instead
            predict_with_generate=True,  # evaluation generates (model.generation_config: the task's settings)
            report_to="none",
            include_num_input_tokens_seen="no",  # counted in OOMBackoffTrainer's per-forward all-reduce instead
            logging_nan_inf_filter=False,  # the anomaly detector must see a NaN loss, not a filtered one
            dataloader_num_workers=plan.dataloader_num_workers,
            train_sampling_strategy="group_by_length" if plan.group_by_length else "random",
            # the causal loss is the step's token mean over every rank (the ranks' token counts summed each step);
            # a seq2seq model's is its own mean (with True the Trainer rescaled BART's loss by world size: 13.85 vs 6.92)
            average_tokens_across_devices=self.task.token_mean_across_ranks,
            ddp_find_unused_parameters=plan.find_unused_parameters,
            disable_tqdm=self.rank != 0,
            save_only_model=False,
        )

    def _end_preempted(self, result: TrainResult, preemption: PreemptionCallback, recorder) -> TrainResult:
        result.preempted_at = preemption.preempted_at
        leave_process_group()  # peers leave now: rank 0's writes below may wait on a busy store
        recorder.log_event(preemption.preempted_at, "preempted", {"signal": preemption.signal_name or "peer"})
        recorder.finish("preempted", exit_code=PREEMPTED_EXIT_CODE)
        return result

    def _export_best(self, trainer, best: BestTracker) -> Path:
        """The best evaluation's model files (safetensors, configs, tokenizer) in <run>/model, atomically: copied from
        its complete checkpoint, or, when it was the evaluation of the final weights with no checkpoint after it (or
        there was no evaluation), the weights in memory (save_model gathers ZeRO-3 shards, on every rank)."""
        target = self.run_dir / "model"
        checkpoint = None if best.best_step is None else self.run_dir / "checkpoints" / f"checkpoint-{best.best_step}"
        if checkpoint is not None and best.best_step == trainer.state.global_step and not checkpoint.is_dir():
            checkpoint = None  # the final evaluation, of the weights in memory
        if checkpoint is not None and read_marker(checkpoint) is None:
            raise RuntimeError(f"best checkpoint {checkpoint} is incomplete (no {MARKER})")
        tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=self.run_dir)) if self.rank == 0 else None
        if checkpoint is None:
            trainer.save_model(str(tmp) if self.rank == 0 else None)
        elif self.rank == 0:
            for f in checkpoint.iterdir():
                if f.is_file() and f.name.endswith(MODEL_FILE_SUFFIXES) and f.name not in ("trainer_state.json", MARKER):
                    shutil.copy2(f, tmp / f.name)
        if self.rank == 0:
            write_model_card(tmp, self.cfg, self.task.name)
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

        device = torch.device("cuda", self.world.local_rank) if self.plan.device == "cuda" else torch.device("cpu")
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
        adapters = uses_adapters(self.cfg)
        return {
            "base_model": self.cfg.model.name_or_path,
            "task": self.task.name,
            "method": self.cfg.training.method,
            **result.parameters,
            "adapter": asdict(self.cfg.lora) if adapters else None,
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
    first len(dataset) and prove the order by the labels (which the Trainer pads with -100 or the pad token)."""
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


def leave_process_group() -> None:
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
    """Public API from the seed: config file -> trainer, in this process (a world of one, or one rank of torchrun or
    srun: rank 0 plans and broadcasts). In sweep mode (inside `wandb.agent`, after `wandb.init()`) the W&B run's config
    is the sweep layer, named nested or flat through `engine.config_aliases`, and the run keeps the W&B run's id, so
    the engine logs into that same W&B run (and leaves it open for the caller)."""
    import os

    from engine.distributed import plan_for_this_process
    from engine.world import adopt_world

    env = dict(os.environ)  # the one snapshot of this process's environment
    world = adopt_world(env)
    sweep_params = None
    if sweep_mode:
        import wandb

        from engine.config import load_config
        from engine.config_aliases import to_config_params

        if wandb.run is None:
            raise UserError("create_trainer(sweep_mode=True): no active W&B run; call wandb.init() first "
                            "(wandb.agent starts the function that does)")
        base = load_config([config_path], env=env).config
        sweep_params, notes = to_config_params(dict(wandb.config), "wandb.config", world=world.world_size,
                                               base_global=base.training.global_batch_size)
        for note in notes:
            log.info("sweep parameter: %s", note)
        env["DIALSUM_RUN_ID"] = wandb.run.id  # the tracked run and the W&B run are one
    return DialogueSummarizationTrainer(plan_for_this_process(world, env, [config_path], sweep_params=sweep_params),
                                        world)
