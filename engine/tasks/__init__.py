"""Tasks: what is specific to one kind of summarization model, in one module each.

A task says how its models load (the Auto class and the token ids it needs set), how dialogues become token ids,
how a batch is padded for training and for generation, which Trainer trains it, how summaries are generated and the
prompt taken off, and the FLOPs a token costs. The rest of the engine (data reading and caching, the training
phases, evaluation, the recorder) and the launcher's planner ask the task and never branch on its name; the planner's
memory formulas per task live beside it in `launcher/` (`launcher/memory_estimate.ACTIVATIONS`).

- `seq2seq` (`engine/tasks/seq2seq.py`): encoder-decoder models (BART, T5, mT5, KoBART, Pegasus).
- `causal` (`engine/tasks/causal.py`): decoder-only models (Llama, SOLAR, Qwen2/3, Gemma 2/3, Mistral, GPT-NeoX).

`model.task: auto` takes the task from the model's config (`is_encoder_decoder`).
"""
from __future__ import annotations

from engine.errors import UserError
from engine.tasks.causal import CausalTask
from engine.tasks.seq2seq import Seq2SeqTask

TASKS = {task.name: task for task in (Seq2SeqTask(), CausalTask())}


def get_task(name: str):
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"model.task: unknown task {name!r} (expected one of {', '.join(TASKS)})") from None


def task_of_config(hf_config, configured: str = "auto") -> str:
    """The task of a model config: encoder-decoder configs are seq2seq, the others causal; `configured`
    (model.task) must agree with it."""
    found = "seq2seq" if getattr(hf_config, "is_encoder_decoder", False) else "causal"
    if configured not in ("auto", found):
        kind = "an encoder-decoder" if found == "seq2seq" else "a decoder-only"
        raise UserError(f"model.task: {configured} set, but {hf_config.model_type} is {kind} model "
                        f"(architectures {getattr(hf_config, 'architectures', None) or []}); set model.task: {found} "
                        "or auto")
    return found


def task_of_model(name_or_path: str, configured: str = "auto", trust_remote_code: bool = False) -> str:
    """The task of a model directory or cached hub id, from its config.json."""
    from transformers import AutoConfig

    return task_of_config(AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code), configured)
