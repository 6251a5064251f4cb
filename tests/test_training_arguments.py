"""What the engine hands the HF Trainer, read back from the real TrainingArguments it builds."""
from __future__ import annotations

import pytest
from engine.config import load_config
from engine.trainer import DialogueSummarizationTrainer
from launcher.planner import make_plan
from launcher.topology import detect_topology
from launch_helpers import small_config


@pytest.mark.parametrize("ratio, total, expected", [(1.0, 16, 16), (1.0, 3, 3), (0.5, 16, 8), (0.1, 16, 2), (0.0, 16, 0)])
def test_warmup_ratio_is_a_fraction_of_the_training_steps(tmp_path, tiny_model_dir, ratio, total, expected):
    """transformers 5 has no warmup_ratio: a float warmup_steps >= 1 is a step count, so 1.0 once meant one step."""
    config = small_config(tmp_path, tiny_model_dir, training={"warmup_ratio": ratio, "max_steps": total})
    plan = make_plan(load_config([str(config)]), detect_topology(), run_id="w", nnodes=1, nproc_per_node=1)
    args = DialogueSummarizationTrainer(plan)._training_arguments()
    assert args.get_warmup_steps(total) == expected


@pytest.mark.parametrize("pinned, multiple", [(None, 8), (1, 1)])
def test_training_batches_pad_to_the_planned_multiple(tmp_path, tiny_model_dir, pinned, multiple):
    """The plan's multiple reaches the collator: a batch is its longest row rounded up (8 by default, the longest
    itself when pinned to 1), pads masked out of attention and labels (-100)."""
    config = small_config(tmp_path, tiny_model_dir, data={"pad_to_multiple_of": pinned})
    plan = make_plan(load_config([str(config)]), detect_topology(), run_id="p", nnodes=1, nproc_per_node=1)
    assert plan.pad_to_multiple_of == multiple
    trainer = DialogueSummarizationTrainer(plan)
    train = trainer.prepare_data().train
    row = next(train[i] for i in range(len(train)) if len(train[i]["input_ids"]) % 8 and len(train[i]["labels"]) % 8)
    batch = trainer.task.training_collator(trainer.tokenizer, None, plan.pad_to_multiple_of)([row])
    source, target = len(row["input_ids"]), len(row["labels"])
    assert batch["input_ids"].shape[1] == -(-source // multiple) * multiple
    assert batch["labels"].shape[1] == -(-target // multiple) * multiple
    assert batch["attention_mask"][0, source:].sum() == 0 and (batch["labels"][0, target:] == -100).all()
    assert batch["labels"][0, :target].tolist() == row["labels"]
