"""Every place dialsum reaches into a third-party internal, in one module, each with why and a canary test
(tests/test_compat.py) that fails when the internal changes shape. Nothing else in dialsum patches, overrides or
reads a private name of torch, transformers, accelerate, DeepSpeed, tokenizers, Optuna or the standard library.

Each entry is active only where it is used (a context manager around one call, or a method of one subclass):

- `sync_gradients`: accelerate's private GradientState setter, for the OOM backoff's chunks (engine/oom.py).
- `SequentialEvaluation`: transformers' private `Trainer._get_eval_sampler`, for evaluation in dataset order.
- `weights_only_deepspeed_resume`: transformers.trainer's `deepspeed_load_checkpoint`, swapped while a resume at
  another world size loads weights only.
- `safe_deepspeed_checkpoints`: DeepSpeed's TorchCheckpointEngine.save/load, swapped while the Trainer trains, so
  checkpoints load with `torch.load(weights_only=True)`.
- `fast_encode`: a copy of a fast tokenizer's backend, 3x faster batch encoding than `tokenizer(...)` with the same ids.
- `quiet_transformers`: a log filter on the text of one transformers message, and W&B's import-time print.
- `attn_implementation`: the config's private `_attn_implementation` (which attention kernels a model runs).
- `optuna_trial_id`: Optuna's private `Trial._trial_id`, the storage id another process reopens a trial by.
- `exit_without_teardown`: the standard library's private `atexit._run_exitfuncs` (engine/process_exit.py).
"""
from __future__ import annotations

import contextlib
import enum
import importlib
import pickle

# ---------------------------------------------------------------------------------------------------- accelerate


@contextlib.contextmanager
def sync_gradients(accelerator, value: bool):
    """Whether `accelerator.backward` ends the accumulation (DeepSpeed steps, DDP all-reduces) for the duration.
    The OOM backoff splits one micro-batch into chunks inside one Trainer step; only the last chunk may sync.
    accelerate sets this flag only from its own step counting (`accumulate`), which knows nothing of the chunks."""
    state = accelerator.gradient_state
    before = state.sync_gradients
    state._set_sync_gradients(value)
    try:
        yield
    finally:
        state._set_sync_gradients(before)


# ---------------------------------------------------------------------------------------------------- transformers


class SequentialEvaluation:
    """Trainer mixin: evaluation in the order of the evaluated dataset (the engine passes it sorted longest first and
    restores the summaries' order), also when training groups by length. transformers would length-group evaluation
    too, in random megabatches, and predictions would no longer line up with the dataset; its sampler choice is the
    private `_get_eval_sampler`. Several ranks: the distributed sampler, which keeps the order within each rank."""

    def _get_eval_sampler(self, eval_dataset):
        from torch.utils.data import SequentialSampler
        from transformers.trainer_utils import has_length

        if eval_dataset is None or not has_length(eval_dataset):
            return None
        return SequentialSampler(eval_dataset) if self.args.world_size <= 1 else None


@contextlib.contextmanager
def weights_only_deepspeed_resume():
    """While active, the Trainer's resume loads only the module from a DeepSpeed checkpoint (no ZeRO optimizer
    shards, which are partitioned by rank count and do not load at another one); transformers exposes no switch for
    this, so its loader is swapped for the duration of `trainer.train(...)`."""
    import transformers.trainer as hf_trainer

    original = hf_trainer.deepspeed_load_checkpoint

    def load_module_only(engine, checkpoint_path, load_module_strict=True):
        load_path, _ = engine.load_checkpoint(checkpoint_path, load_module_strict=load_module_strict,
                                              load_optimizer_states=False, load_lr_scheduler_states=False,
                                              load_module_only=True)
        if load_path is None:
            raise ValueError(f"cannot load model weights from {checkpoint_path}")

    hf_trainer.deepspeed_load_checkpoint = load_module_only
    try:
        yield
    finally:
        hf_trainer.deepspeed_load_checkpoint = original


def attn_implementation(config) -> str:
    """The attention kernels a model built from `config` runs ("sdpa", "eager", ...); transformers keeps the resolved
    choice in the private `_attn_implementation` and offers no public reader."""
    return config._attn_implementation or "sdpa"


def quiet_transformers() -> None:
    """Two messages that are noise in dialsum's runs: transformers' note that resized embeddings are initialised
    (speaker tags are added on purpose; the note has no logger of its own, so it is filtered by its text), and the
    "[INFO] Running in WANDB offline mode" that transformers' W&B integration prints on import."""
    import io

    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers.modeling_utils").addFilter(
        lambda record: not str(record.msg).startswith(RESIZE_NOTE))
    with contextlib.redirect_stdout(io.StringIO()):
        import transformers.integrations.integration_utils  # noqa: F401


RESIZE_NOTE = "The new embeddings will be initialized"


# ---------------------------------------------------------------------------------------------------- DeepSpeed

# DeepSpeed's optimizer shards hold these plain data classes besides tensors; nothing else may be unpickled.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.runtime.zero.config:ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler:LossScaler",
    "deepspeed.utils.tensor_fragment:fragment_address",
)


def _plain_enums(obj):
    """obj with every int-valued Enum member replaced by its int. DeepSpeed puts `ZeroStageEnum` into the optimizer
    state, and how an int Enum pickles depends on the interpreter (3.11.2 writes `getattr(ZeroStageEnum, 'gradients')`,
    3.11.7 writes `ZeroStageEnum(2)`); a plain int pickles the same everywhere, and DeepSpeed only compares it."""
    if isinstance(obj, enum.Enum) and isinstance(obj, int):
        return int(obj)
    if isinstance(obj, dict):
        return type(obj)((key, _plain_enums(value)) for key, value in obj.items())
    if type(obj) in (list, tuple):
        return type(obj)(_plain_enums(value) for value in obj)
    return obj


def _enum_member_lookup(enums: tuple[type[enum.Enum], ...]):
    """What `builtins.getattr` resolves to while loading: only `getattr(<allowlisted Enum>, '<member name>')`, the
    form some interpreters pickle enum members in (checkpoints written before `_plain_enums`). Any other target or
    attribute fails the load, so no code is reachable through it."""
    def enum_member(cls, name):
        if cls in enums and isinstance(name, str) and name in cls.__members__:
            return cls.__members__[name]
        raise pickle.UnpicklingError(f"refused getattr({cls!r}, {name!r}) in a checkpoint: only members of "
                                     f"{', '.join(e.__name__ for e in enums)} may be looked up")
    return enum_member


@contextlib.contextmanager
def safe_deepspeed_checkpoints():
    """While active, DeepSpeed writes checkpoints with enum members as plain ints and reads them with
    `torch.load(weights_only=True)` and the allowlist above instead of its default full unpickling (deepspeed 0.19
    passes weights_only=False), so a tampered checkpoint cannot run code on resume; an unexpected class fails the load
    with its name. The Trainer builds the DeepSpeed engine (and its checkpoint engine) inside `train()`, with no hook
    between that and the resume's load, so the class is swapped for the call."""
    import torch
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    allowed = []
    for spec in DEEPSPEED_SAFE_GLOBALS:
        module, name = spec.split(":")
        allowed.append(getattr(importlib.import_module(module), name))
    enums = tuple(cls for cls in allowed if isinstance(cls, type) and issubclass(cls, enum.Enum))
    allowed.append((_enum_member_lookup(enums), "builtins.getattr"))
    original_save, original_load = TorchCheckpointEngine.save, TorchCheckpointEngine.load

    def save(self, state_dict, path: str):
        original_save(self, _plain_enums(state_dict), path)

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    TorchCheckpointEngine.save, TorchCheckpointEngine.load = save, load
    try:
        yield
    finally:
        TorchCheckpointEngine.save, TorchCheckpointEngine.load = original_save, original_load


# ---------------------------------------------------------------------------------------------------- tokenizers


def fast_encode(tokenizer, texts: list[str], max_length: int) -> list[list[int]]:
    """The same ids as `tokenizer(texts, max_length=..., truncation=True)["input_ids"]` (the canary compares them),
    about 3x faster: the backend's batch encoder without offsets or per-row Python conversion, on a copy so the
    tokenizer's own truncation/padding state is untouched. A tokenizer without a fast backend takes the slow path."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return tokenizer(texts, max_length=max_length, truncation=True)["input_ids"]
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(backend.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length, direction=tokenizer.truncation_side)
    return [e.ids for e in backend.encode_batch_fast(texts)]


# ---------------------------------------------------------------------------------------------------- Optuna


def optuna_trial_id(trial) -> int:
    """The storage's id of a trial (what `optuna.trial.Trial(study, trial_id)` reopens it by in the trial's own
    process, to report evaluations for pruning); Optuna keeps it in the private `_trial_id`."""
    return trial._trial_id


# ---------------------------------------------------------------------------------------------------- Python


def exit_without_teardown(code: int):
    """Run the atexit handlers (logging's flush, W&B's service teardown), flush the standard streams, and end the
    process without the interpreter's module teardown (engine/process_exit.py says why). `atexit` runs its handlers
    only inside a normal exit; `_run_exitfuncs` is that step alone."""
    import atexit
    import os
    import sys

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to say on it
            pass
    os._exit(code)

