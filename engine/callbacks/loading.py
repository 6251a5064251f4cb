"""Custom callbacks from config: `callbacks: [{path: "package.module:ClassName", kwargs: {...}}]`.

The class is imported with importlib (no eval) and must subclass `transformers.TrainerCallback`; it is built with the
spec's kwargs, plus `recorder=` when its constructor has a `recorder` parameter that the kwargs do not set, so a custom
callback can log metrics and events the same way the built-in ones do (a null recorder off rank 0).

Hooks a callback may define (transformers.TrainerCallback; each gets `args, state, control, **kwargs` and runs on every
rank, so keep side effects behind the recorder and never call a collective from rank-0-only code): on_init_end,
on_train_begin, on_epoch_begin, on_step_begin, on_substep_end, on_pre_optimizer_step, on_optimizer_step, on_step_end,
on_log (logs=), on_evaluate (metrics=), on_predict, on_save, on_epoch_end, on_train_end. Setting
`control.should_training_stop = True` stops training; do it from values every rank sees (logged loss, eval metrics).
"""
from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from engine.errors import UserError
from engine.schema import CallbackSpec

if TYPE_CHECKING:
    from engine.recorder import Recorder


def load_custom_callbacks(specs: list[CallbackSpec], recorder: "Recorder | None" = None) -> list[TrainerCallback]:
    return [_load(i, spec, recorder) for i, spec in enumerate(specs)]


def _load(i: int, spec: CallbackSpec, recorder: "Recorder | None") -> TrainerCallback:
    where = f"callbacks[{i}].path"
    module_name, sep, class_name = spec.path.partition(":")
    if not sep or not module_name or not class_name.isidentifier():
        raise UserError(f"{where}: expected 'package.module:ClassName', got {spec.path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"{where}: cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserError(f"{where}: module {module_name!r} has no attribute {class_name!r}")
    if not (inspect.isclass(cls) and issubclass(cls, TrainerCallback)):
        raise UserError(f"{where}: {spec.path!r} is not a transformers.TrainerCallback subclass")
    kwargs = dict(spec.kwargs)
    if recorder is not None and "recorder" not in kwargs and "recorder" in inspect.signature(cls).parameters:
        kwargs["recorder"] = recorder
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise UserError(f"callbacks[{i}].kwargs: {spec.path} rejected its keyword arguments ({exc})") from None
