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
