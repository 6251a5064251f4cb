"""Canaries for engine/compat.py: each fails when the third-party internal a compat entry relies on changes shape, so
an upgrade breaks here, by name, rather than silently in a run. And the rule itself: no other dialsum module reaches
into a private name of those libraries."""
from __future__ import annotations

import ast
import inspect

import pytest
import torch

from launch_helpers import REPO_ROOT

THIRD_PARTY = ("torch", "transformers", "accelerate", "deepspeed", "tokenizers", "optuna", "atexit", "peft", "trl")


def test_accelerate_gradient_state_has_the_private_setter_and_the_flag():
    from accelerate import Accelerator

    from engine.compat import sync_gradients

    accelerator = Accelerator(cpu=True)
    before = accelerator.sync_gradients
    with sync_gradients(accelerator, not before):
        assert accelerator.sync_gradients is (not before)  # the flag accelerator.backward reads
    assert accelerator.sync_gradients is before


def test_trainer_picks_its_eval_sampler_through_the_overridden_method():
    from transformers import Trainer

    assert list(inspect.signature(Trainer._get_eval_sampler).parameters) == ["self", "eval_dataset"]
    assert "sampler_fn=self._get_eval_sampler" in inspect.getsource(Trainer.get_eval_dataloader)


def test_transformers_resumes_deepspeed_through_the_swapped_module_function():
    import transformers.trainer as hf_trainer
    from transformers.integrations import deepspeed as hf_deepspeed

    from engine.compat import weights_only_deepspeed_resume

    assert hf_trainer.deepspeed_load_checkpoint is hf_deepspeed.deepspeed_load_checkpoint
    assert "deepspeed_load_checkpoint(" in inspect.getsource(hf_trainer.Trainer)  # called by that module-level name
    with weights_only_deepspeed_resume():
        assert hf_trainer.deepspeed_load_checkpoint is not hf_deepspeed.deepspeed_load_checkpoint
    assert hf_trainer.deepspeed_load_checkpoint is hf_deepspeed.deepspeed_load_checkpoint


def test_deepspeed_checkpoint_engine_has_the_swapped_methods_and_the_allowlisted_classes():
    import importlib

    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    from engine.compat import DEEPSPEED_SAFE_GLOBALS, safe_deepspeed_checkpoints

    assert list(inspect.signature(TorchCheckpointEngine.save).parameters)[:3] == ["self", "state_dict", "path"]
    assert list(inspect.signature(TorchCheckpointEngine.load).parameters)[:3] == ["self", "path", "map_location"]
    for spec in DEEPSPEED_SAFE_GLOBALS:
        module, name = spec.split(":")
        assert inspect.isclass(getattr(importlib.import_module(module), name)), spec
    original = TorchCheckpointEngine.load
    with safe_deepspeed_checkpoints():
        assert TorchCheckpointEngine.load is not original
    assert TorchCheckpointEngine.load is original


def test_fast_encode_gives_the_tokenizer_call_ids(tiny_model_dir, mini_data):
    from transformers import AutoTokenizer

    from engine.compat import fast_encode
    from engine.data import read_dialogues

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [r.dialogue for r in read_dialogues(mini_data["train_csv"], require_summary=True, limit=200)]
    for side in ("right", "left"):
        tokenizer.truncation_side = side
        assert fast_encode(tokenizer, texts, 100) == tokenizer(texts, max_length=100, truncation=True)["input_ids"]


def test_the_filtered_transformers_message_still_has_that_text():
    import transformers.modeling_utils as modeling_utils

    from engine.compat import RESIZE_NOTE

    assert RESIZE_NOTE in inspect.getsource(modeling_utils)


def test_the_resolved_attention_implementation_is_where_compat_reads_it():
    from transformers import BartConfig, BartForConditionalGeneration

    from engine.compat import attn_implementation

    with torch.device("meta"):
        model = BartForConditionalGeneration(BartConfig(d_model=16, encoder_layers=1, decoder_layers=1,
                                                        encoder_attention_heads=2, decoder_attention_heads=2,
                                                        encoder_ffn_dim=16, decoder_ffn_dim=16, vocab_size=32))
    assert attn_implementation(model.config) == "sdpa"
    model.config._attn_implementation = "eager"
    assert attn_implementation(model.config) == "eager"


def test_optuna_trials_carry_the_storage_id_another_process_reopens_them_by():
    import optuna

    from engine.compat import optuna_trial_id

    study = optuna.create_study()
    trial = study.ask()
    reopened = optuna.trial.Trial(study, optuna_trial_id(trial))
    assert reopened.number == trial.number


def test_atexit_still_has_the_handlers_step_alone():
    import atexit

    assert callable(atexit._run_exitfuncs)


PRIVATE_USES_ALLOWED = {"engine/compat.py"}
OWN_PRIVATE_ATTRIBUTES = {"engine/data.py": ["._src_off"]}  # its own dataset class, in the same module


def _private_third_party_uses(path) -> list[str]:
    """Imports of a private name of a third-party library, and reads of a private attribute (`x._name`) of anything
    but the module's own objects (`self`, `cls`). Importing a public class from the module torch documents it in
    (`torch.utils._python_dispatch.TorchDispatchMode`, `torch._subclasses.fake_tensor.FakeTensorMode`) is not one, nor
    `argparse._SubParsersAction` in the subcommands' type annotations (argparse has no public name for it)."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in THIRD_PARTY:
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
              and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls", "os", "argparse"))):
            found.append(f"line {node.lineno}: .{node.attr}")
    return found


@pytest.mark.parametrize("package", ["engine", "launcher"])
def test_no_module_outside_compat_imports_a_private_third_party_name(package):
    offenders = {}
    for path in sorted((REPO_ROOT / package).rglob("*.py")):
        rel = path.relative_to(REPO_ROOT).as_posix()
        uses = [u for u in _private_third_party_uses(path)
                if not any(u.endswith(own) for own in OWN_PRIVATE_ATTRIBUTES.get(rel, ()))]
        if rel not in PRIVATE_USES_ALLOWED and uses:
            offenders[rel] = uses
    assert offenders == {}
