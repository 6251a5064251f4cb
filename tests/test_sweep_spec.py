"""W&B sweep YAML -> SweepSpec: every parameter form, how each is sampled on Optuna, every error, the W&B translation,
and `dialsum sweep --dry-run` as a user runs it."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from engine.errors import UserError
from launcher.sweep.optuna_backend import make_sampler, suggest
from launcher.sweep.spec import check_params, load_sweep, parse_sweep
from launcher.sweep.wandb_backend import params_from_wandb, to_wandb_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def spec_of(text: str, **kw):
    return parse_sweep(yaml.safe_load(text), "sweep.yaml", **kw)


def samples(spec, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(direction=spec.goal, sampler=make_sampler(spec, seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append(suggest(trial, spec))
        study.tell(trial, 0.0)
    return out


@pytest.fixture
def base_yaml(tmp_path: Path, mini_data) -> Path:
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump({
        "experiment": {"name": "swp", "output_root": str(tmp_path / "out")},
        "model": {"name_or_path": "some/model"},
        "data": {"train_file": str(mini_data["train_csv"]), "eval_file": str(mini_data["dev_csv"])},
    }))
    return path


ALL_FORMS = """
method: random
metric: {name: eval/rouge_combined_f1, goal: maximize}
parameters:
  training:
    parameters:
      learning_rate: {distribution: log_uniform_values, min: 1e-5, max: 1e-3}
      weight_decay: {distribution: log_uniform, min: -9.2, max: -2.3}
      warmup_ratio: {values: [0.0, 0.1], probabilities: [0.9, 0.1]}
      max_grad_norm: {distribution: q_uniform, min: 0.5, max: 2.0, q: 0.25}
      label_smoothing_factor: {min: 0.0, max: 0.2}
      logging_steps: {min: 1, max: 5}
      eval_steps: {distribution: q_log_uniform_values, min: 10, max: 1000, q: 10}
      early_stopping_threshold: {distribution: inv_log_uniform_values, min: 0.001, max: 0.1}
  generation:
    parameters:
      num_beams: {distribution: q_normal, mu: 4, sigma: 0.01, q: 1}
      length_penalty: {distribution: normal, mu: 1.0, sigma: 0.1}
      max_new_tokens: {value: 32}
      no_repeat_ngram_size: {distribution: categorical, values: [0, 3]}
  monitoring.loss_spike_z: {distribution: log_normal, mu: 1.5, sigma: 0.2}
  monitoring.grad_norm_factor: {distribution: inv_log_uniform, min: -3, max: -2}
run_cap: 12
"""


def test_every_parameter_form_parses_to_dotted_keys_and_distributions():
    spec = spec_of(ALL_FORMS)
    dist = {p.key: p.distribution for p in spec.parameters}
    assert dist == {
        "training.learning_rate": "log_uniform_values", "training.weight_decay": "log_uniform",
        "training.warmup_ratio": "categorical", "training.max_grad_norm": "q_uniform",
        "training.label_smoothing_factor": "uniform", "training.logging_steps": "int_uniform",
        "training.eval_steps": "q_log_uniform_values", "training.early_stopping_threshold": "inv_log_uniform_values",
        "generation.num_beams": "q_normal", "generation.length_penalty": "normal", "generation.max_new_tokens": "constant",
        "generation.no_repeat_ngram_size": "categorical", "monitoring.loss_spike_z": "log_normal",
        "monitoring.grad_norm_factor": "inv_log_uniform",
    }
    assert spec.metric == "rouge_combined_f1" and spec.goal == "maximize" and spec.run_cap == 12
    assert spec.name == "sweep" and spec.budget(None) == 12 and spec.budget(5) == 5
    lr = next(p for p in spec.parameters if p.key == "training.learning_rate")
    assert lr.min == 1e-5 and lr.max == 1e-3  # "1e-5" (a string to PyYAML) read as a number


def test_sampled_values_follow_wandb_semantics():
    spec = spec_of(ALL_FORMS)
    draws = samples(spec, 300)
    for d in draws:
        assert 1e-5 <= d["training.learning_rate"] <= 1e-3
        assert math.exp(-9.2) - 1e-12 <= d["training.weight_decay"] <= math.exp(-2.3) + 1e-12  # bounds are exponents
        assert d["training.max_grad_norm"] in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
        assert 0.0 <= d["training.label_smoothing_factor"] <= 0.2
        assert d["training.logging_steps"] in range(1, 6) and isinstance(d["training.logging_steps"], int)
        assert isinstance(d["training.eval_steps"], int) and d["training.eval_steps"] % 10 == 0
        assert 10 <= d["training.eval_steps"] <= 1000
        assert 0.001 <= d["training.early_stopping_threshold"] <= 0.1
        assert d["generation.num_beams"] == 4 and isinstance(d["generation.num_beams"], int)
        assert d["generation.max_new_tokens"] == 32
        assert d["monitoring.loss_spike_z"] > 0
        assert math.exp(2) - 1e-9 <= d["monitoring.grad_norm_factor"] <= math.exp(3) + 1e-9
    firsts = sum(d["training.warmup_ratio"] == 0.0 for d in draws)
    assert 240 <= firsts <= 295  # probabilities [0.9, 0.1]
    penalties = [d["generation.length_penalty"] for d in draws]
    mean = sum(penalties) / len(penalties)
    sd = math.sqrt(sum((x - mean) ** 2 for x in penalties) / len(penalties))
    assert abs(mean - 1.0) < 0.03 and 0.07 < sd < 0.13
    assert {d["generation.no_repeat_ngram_size"] for d in draws} == {0, 3}
    logs = [math.log10(d["training.learning_rate"]) for d in draws]
    assert sum(x < -4 for x in logs) > 100  # log-uniform: half the mass in the lower decade


def test_grid_enumerates_every_combination_once():
    spec = spec_of("""
method: grid
parameters:
  training.learning_rate: {values: [1e-4, 3e-4]}
  training.logging_steps: {distribution: int_uniform, min: 1, max: 3}
  generation.num_beams: {value: 2}
  experiment.tags: {values: [[a], [b, c]]}
""")
    assert spec.grid_size() == 12 and spec.budget(None) == 12 and spec.budget(50) == 12
    draws = samples(spec, 12)
    combos = {(d["training.learning_rate"], d["training.logging_steps"], tuple(d["experiment.tags"])) for d in draws}
    assert len(combos) == 12 and all(d["generation.num_beams"] == 2 for d in draws)


def test_hyperband_and_metric_normalisation():
    spec = spec_of("method: bayes\nmetric: {name: eval_rouge1_f1, goal: minimize}\nparameters: {x.y: {value: 1}}\n"
                   "early_terminate: {type: hyperband, min_iter: 2, eta: 3, s: 2}")
    assert spec.metric == "rouge1_f1" and spec.goal == "minimize"
    assert spec.hyperband.kwargs() == {"min_resource": 2, "max_resource": 18, "reduction_factor": 3}
    spec = spec_of("method: random\nparameters: {x.y: {value: 1}}\nearly_terminate: {type: hyperband, max_iter: 27, s: 2}")
    assert spec.hyperband.kwargs() == {"min_resource": 3, "max_resource": 27, "reduction_factor": 3}
    spec = spec_of("method: random\nparameters: {x.y: {value: 1}}\nearly_terminate: {type: hyperband, min_iter: 1}")
    assert spec.hyperband.max_resource == "auto"
    # no metric: the config's own metric and direction; a bare goal-less metric: W&B's default (minimize)
    spec = spec_of("method: random\nparameters: {x.y: {value: 1}}", default_metric=("rouge2_f1", True))
    assert (spec.metric, spec.goal) == ("rouge2_f1", "maximize") and spec.notes
    spec = spec_of("method: random\nmetric: {name: loss}\nparameters: {x.y: {value: 1}}")
    assert spec.goal == "minimize"


@pytest.mark.parametrize("text, message", [
    ("method: random\nparameters: {training: {parameters: {learning_rate: {distribution: uniform, min: 1, max: 1}}}}",
     "sweep.yaml: parameters.training.learning_rate: 'distribution: uniform' needs min < max; got min=1, max=1"),
    ("method: grid\nparameters: {training.learning_rate: {min: 0.1, max: 0.2}}",
     "sweep.yaml: parameters.training.learning_rate: method grid needs discrete values; 'distribution: uniform' is continuous"),
    ("method: random\nparameters: {a.b: {distribution: gamma, min: 1, max: 2}}",
     "sweep.yaml: parameters.a.b: unknown distribution 'gamma'"),
    ("method: random\nparameters: {a.b: {values: [1, 2], probabilities: [0.5]}}",
     "sweep.yaml: parameters.a.b.probabilities: expected a list of 2 numbers, one per value"),
    ("method: random\nparameters: {a.b: {values: [1, 2], probabilities: [0.5, 0.6]}}",
     "sweep.yaml: parameters.a.b.probabilities: must be >= 0 and sum to 1"),
    ("method: random\nparameters: {a.b: {distribution: log_uniform_values, min: 0, max: 1}}",
     "sweep.yaml: parameters.a.b.min: 'distribution: log_uniform_values' takes values (> 0)"),
    ("method: random\nparameters: {a.b: {distribution: int_uniform, min: 1.5, max: 3}}",
     "sweep.yaml: parameters.a.b.min: expected an integer, got 1.5"),
    ("method: random\nparameters: {a.b: {distribution: normal, sigma: 0}}", "sweep.yaml: parameters.a.b.sigma: must be > 0"),
    ("method: random\nparameters: {a.b: {distrbution: uniform}}", "sweep.yaml: parameters.a.b.distrbution: unknown key (did you mean 'distribution'?)"),
    ("method: random\nparameters: {a.b: {distribution: uniform, min: 0, max: 1, values: [1]}}",
     "sweep.yaml: parameters.a.b.values: not used by 'distribution: uniform'"),
    ("method: random\nparameters: {a.b: {min: 0}}", "sweep.yaml: parameters.a.b: needs 'value', 'values', or 'min' and 'max'"),
    ("method: random\nparameters: {a: {parameters: {b: {value: 1}}, value: 2}}",
     "sweep.yaml: parameters.a: nested 'parameters' cannot be mixed with other keys"),
    ("method: random\nparameters: {a.b: {value: 1}, a: {parameters: {b: {value: 2}}}}", "sweep.yaml: parameters.a.b: given twice"),
    ("method: hyperopt\nparameters: {a.b: {value: 1}}", "sweep.yaml: method: expected one of grid, random, bayes; got 'hyperopt'"),
    ("parameters: {a.b: {value: 1}}", "sweep.yaml: method: expected one of grid, random, bayes; got None"),
    ("method: random", "sweep.yaml: parameters: required"),
    ("method: random\nparameters: {}", "sweep.yaml: parameters: expected a non-empty mapping"),
    ("method: random\nparameters: {a.b: 3}", "sweep.yaml: parameters.a.b: expected a mapping"),
    ("method: random\nmetric: {name: loss, goal: max}\nparameters: {a.b: {value: 1}}", "sweep.yaml: metric.goal: expected maximize or minimize"),
    ("method: random\nmetric: {goal: maximize}\nparameters: {a.b: {value: 1}}", "sweep.yaml: metric.name: required"),
    ("method: random\nparamters: {a.b: {value: 1}}", "sweep.yaml: paramters: unknown key (did you mean 'parameters'?)"),
    ("method: random\nrun_cap: 0\nparameters: {a.b: {value: 1}}", "sweep.yaml: run_cap: must be >= 1"),
    ("method: random\nparameters: {a.b: {value: 1}}\nearly_terminate: {type: envelope}",
     "sweep.yaml: early_terminate.type: only 'hyperband' is supported"),
    ("method: random\nparameters: {a.b: {value: 1}}\nearly_terminate: {type: hyperband, max_iter: 9}",
     "sweep.yaml: early_terminate.s: hyperband with max_iter needs s"),
    ("method: random\nparameters: {a.b: {value: 1}}\nearly_terminate: {type: hyperband}",
     "sweep.yaml: early_terminate: hyperband needs min_iter"),
    ("method: random\nname: 'my sweep'\nparameters: {a.b: {value: 1}}",
     "sweep.yaml: name: 'my sweep': a sweep name starts with a letter or digit, then letters, digits, '_', '-', '.'"),
    ("- 1\n- 2", "sweep.yaml: top level must be a mapping"),
])
def test_bad_yaml_names_file_and_key(text, message):
    with pytest.raises(UserError) as err:
        spec_of(text)
    assert str(err.value).startswith(message), str(err.value)


def test_a_sweep_named_after_a_file_whose_stem_starts_with_an_underscore_is_refused_saying_the_rule():
    with pytest.raises(UserError) as err:
        parse_sweep(yaml.safe_load("method: random\nparameters: {a.b: {value: 1}}"), "sweeps/_draft.yaml")
    assert str(err.value) == ("sweeps/_draft.yaml: name: '_draft' (the file's name; set name: to choose another): a "
                              "sweep name starts with a letter or digit, then letters, digits, '_', '-', '.' (it names "
                              "the group and the storage)")


def test_unbounded_random_sweep_needs_a_budget():
    with pytest.raises(UserError, match=r"sweep.yaml: run_cap: a random sweep has no end; set run_cap or pass --count"):
        spec_of("method: random\nparameters: {a.b: {value: 1}}").budget(None)


@pytest.mark.parametrize("params, message", [
    ("training: {parameters: {learning_rat: {values: [1e-4]}}}",
     "parameters.training.learning_rat: unknown parameter (did you mean 'training.learning_rate'?)"),
    ("training.warmup_ratio: {min: 0.0, max: 2.0}", "parameters.training.warmup_ratio: rejected by the config: must be between 0.0 and 1.0; got 2.0"),
    ("training.optim: {values: [adamw_torch, sgd]}", "parameters.training.optim: rejected by the config: must be one of"),
    ("training.max_steps: {values: [abc]}", "parameters.training.max_steps: rejected by the config: expected int"),
    ("learning_rate: {value: -1.0}", "parameters.learning_rate: rejected by the config: must be >= 0.0"),
])
def test_parameters_are_checked_against_the_config(tmp_path, base_yaml, params, message):
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(f"method: random\nrun_cap: 2\nparameters:\n  {params}\n")
    with pytest.raises(UserError) as err:
        load_sweep(sweep, [str(base_yaml)])
    assert str(err.value).startswith(f"{sweep}: {message}"), str(err.value)


def test_load_sweep_rejects_set_on_a_swept_key_and_reads_yaml_errors(tmp_path, base_yaml):
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("method: random\nrun_cap: 2\nparameters:\n  training.learning_rate: {values: [1e-4]}\n")
    with pytest.raises(UserError, match="parameters.training.learning_rate: training.learning_rate is also fixed by --set"):
        load_sweep(sweep, [str(base_yaml)], ["training.learning_rate=1e-3"])
    assert load_sweep(sweep, [str(base_yaml)]).parameters[0].values == ("1e-4",)
    sweep.write_text("method: random\nmethod: grid\n")
    with pytest.raises(UserError, match=r"sw.yaml: invalid YAML at line 2.*duplicate key 'method'"):
        load_sweep(sweep, [str(base_yaml)])
    sweep.write_text("method: [random\n")
    with pytest.raises(UserError, match=r"sw.yaml: invalid YAML at line"):
        load_sweep(sweep, [str(base_yaml)])


def test_wandb_translation_keeps_the_yaml_and_names_the_logged_metric():
    data = yaml.safe_load(ALL_FORMS + "name: lr-sweep\n")
    spec = parse_sweep(data, "sweep.yaml")
    out = to_wandb_config(spec, data)
    assert out["metric"] == {"name": "eval/rouge_combined_f1", "goal": "maximize"}
    assert out["name"] == "lr-sweep" and out["run_cap"] == 12
    assert out["parameters"] == data["parameters"] and out["method"] == "random"
    # wandb.config comes back nested the way the YAML was (or with flat dotted keys)
    config = {"training": {k: 1 for k in ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm",
                                          "label_smoothing_factor", "logging_steps", "eval_steps",
                                          "early_stopping_threshold")},
              "generation": {"num_beams": 4, "length_penalty": 1.0, "max_new_tokens": 32, "no_repeat_ngram_size": 3},
              "monitoring.loss_spike_z": 5.0, "monitoring.grad_norm_factor": 9.0}
    params = params_from_wandb(config, spec)
    assert params["generation.num_beams"] == 4 and params["monitoring.loss_spike_z"] == 5.0 and len(params) == 14
    del config["generation"]["num_beams"]
    with pytest.raises(UserError, match="parameters.generation.num_beams: W&B did not send a value"):
        params_from_wandb(config, spec)


def _dialsum(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_dry_run_cli_prints_valid_parameter_sets_and_clear_errors(tmp_path, base_yaml):
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("method: grid\nparameters:\n  training:\n    parameters:\n"
                     "      learning_rate: {values: [1e-4, 3e-4, 1e-3]}\n      warmup_ratio: {values: [0.0, 0.1]}\n")
    done = _dialsum("sweep", str(sweep), "--config", str(base_yaml), "--dry-run", "--show", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sweep sw: grid, maximize rouge_combined_f1, 6 trials, backend local" in done.stdout
    assert done.stdout.count('"training.learning_rate"') == 4
    assert not (tmp_path / "out" / "sweeps").exists()  # nothing created by a dry run
    sweep.write_text("method: grid\nparameters:\n  training.learning_rate: {min: 0.1, max: 0.2}\n")
    done = _dialsum("sweep", str(sweep), "--config", str(base_yaml), "--dry-run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == (f"dialsum: error: {sweep}: parameters.training.learning_rate: method grid needs "
                                   "discrete values; 'distribution: uniform' is continuous (use values: [...])")


# ---------------------------------------------------------------------------------- sweep files people already have

FIXTURES = Path(__file__).parent / "fixtures" / "sweeps"
RUN_UNCHANGED = {"hf_trainer_bayes.yaml", "hf_summarization_rouge.yaml", "kobart_competition.yaml",
                 "beta_label_smoothing.yaml"}
REFUSED = {
    "wandb_docs_structure.yaml": "program: not run by dialsum",
    "keras_dropout.yaml": "program: not run by dialsum",
    "yolov5_sweep.yaml": "program: not run by dialsum",
    "hydra_dotted.yaml": "program: not run by dialsum",
    "hyperband_max_iter.yaml": "program: not run by dialsum",
    "wandb_dict_config.yaml": "parameters.optimizer: unknown parameter (did you mean 'training.optim'?)",
    "fastai_accuracy.yaml": "metric.name: 'accuracy' is not logged by dialsum runs",
    "allennlp_trainer.yaml": "metric.name: 'validation_accuracy' is not logged by dialsum runs",
    "seed_nested.yaml": "parameters.inference.num_beams: unknown parameter (did you mean 'generation.num_beams'?)",
}


def test_every_fixture_is_classified():
    assert {p.name for p in FIXTURES.glob("*.yaml")} == RUN_UNCHANGED | set(REFUSED)
    assert len(RUN_UNCHANGED) == 4 and len(RUN_UNCHANGED) + len(REFUSED) == 13


@pytest.mark.parametrize("name", sorted(RUN_UNCHANGED))
def test_fixture_sweeps_run_unchanged(name, base_yaml):
    """Every parameter resolves to a dialsum key and sampled sets load as a config (what --dry-run checks)."""
    from engine.config_aliases import config_keys

    spec = load_sweep(FIXTURES / name, [str(base_yaml)])
    for params in samples(spec, 3):
        config_params = spec.config_params(params)
        assert set(config_params) <= set(config_keys())
        loaded = check_params(spec, params, [str(base_yaml)], [])
        for key, value in config_params.items():
            section, field = key.split(".")
            assert getattr(getattr(loaded.config, section), field) == value
            assert loaded.sources[key] == "sweep"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_fixture_sweeps_that_cannot_map_are_refused_in_one_line(name, base_yaml):
    with pytest.raises(UserError) as err:
        load_sweep(FIXTURES / name, [str(base_yaml)])
    message = str(err.value)
    assert message.startswith(f"{FIXTURES / name}: {REFUSED[name]}"), message
    assert "\n" not in message


def test_hf_names_map_through_one_alias_table(tmp_path, base_yaml):
    sweep = tmp_path / "hf.yaml"
    sweep.write_text("method: grid\nmetric: {name: eval_loss}\nparameters:\n"
                     "  per_device_train_batch_size: {values: [4, 8]}\n  gradient_accumulation_steps: {value: 2}\n"
                     "  generation_max_length: {value: 100}\n  warmup_steps: {value: 50}\n  lr: {value: 3e-5}\n"
                     "  per_device_eval_batch_size: {value: 16}\n  pad_to_multiple_of: {value: 16}\n")
    spec = load_sweep(sweep, [str(base_yaml)], world=2)
    assert spec.metric == "loss" and spec.goal == "minimize"
    params = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "generation_max_length": 100,
              "warmup_steps": 50, "lr": "3e-5", "per_device_eval_batch_size": 16, "pad_to_multiple_of": 16}
    assert spec.config_params(params) == {"training.global_batch_size": 32, "generation.max_new_tokens": 99,
                                          "training.warmup_steps": 50, "training.learning_rate": "3e-5",
                                          "parallel.eval_batch_size": 16, "data.pad_to_multiple_of": 16}
    loaded = check_params(spec, params, [str(base_yaml)], [])
    assert loaded.config.training.global_batch_size == 32 and loaded.config.training.learning_rate == 3e-5
    assert (loaded.config.parallel.eval_batch_size, loaded.config.data.pad_to_multiple_of) == (16, 16)
    notes = " | ".join(spec.mapping_notes())
    assert "per_device_train_batch_size x gradient_accumulation_steps x world size -> training.global_batch_size" in notes
    assert "generation_max_length 100 -> generation.max_new_tokens 99" in notes and "lr -> training.learning_rate" in notes
    # accumulation alone multiplies the base config's global batch (8)
    assert spec.config_params({"gradient_accumulation_steps": 4}) == {"training.global_batch_size": 32}


@pytest.mark.parametrize("params, message", [
    ("model.learning_rate: {value: 1e-4}", "parameters.model.learning_rate: unknown parameter (did you mean "
                                           "'training.learning_rate'?)"),
    ("num_train_epoch: {value: 2}", "parameters.num_train_epoch: unknown parameter (did you mean "
                                    "'training.num_train_epochs'?)"),
    ("fp16: {values: [true, false]}", "parameters.fp16: not taken by dialsum: precision is one key: use "
                                      "parallel.precision"),
    ("pad_to_max_length: {value: true}", "parameters.pad_to_max_length: not taken by dialsum: batches pad to their "
                                         "longest row, rounded up to data.pad_to_multiple_of"),
    ("learning_rate: {value: 1e-4}\n  training.learning_rate: {value: 2e-4}",
     "parameters.training.learning_rate: sets training.learning_rate, as parameters.learning_rate does"),
    ("per_device_train_batch_size: {value: 4}\n  batch_size: {value: 8}",
     "parameters.batch_size: sets training.global_batch_size, as parameters.per_device_train_batch_size does"),
])
def test_unknown_and_clashing_names_are_one_line_errors(tmp_path, base_yaml, params, message):
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(f"method: random\nrun_cap: 2\nparameters:\n  {params}\n")
    with pytest.raises(UserError) as err:
        load_sweep(sweep, [str(base_yaml)])
    assert str(err.value).startswith(f"{sweep}: {message}"), str(err.value)


@pytest.mark.parametrize("name, key", [("eval_loss", "loss"), ("val_loss", "loss"), ("eval/loss", "loss"),
                                       ("loss", "loss"), ("eval_rouge1", "rouge1_f1"), ("rouge-1", "rouge1_f1"),
                                       ("rouge1", "rouge1_f1"), ("eval/rougeL", "rougeL_f1"),
                                       ("rouge-2", "rouge2_f1"), ("rouge_combined_f1", "rouge_combined_f1"),
                                       ("eval/rouge_combined_f1", "rouge_combined_f1")])
def test_metric_aliases_name_what_runs_log(name, key):
    assert spec_of(f"method: random\nmetric: {{name: '{name}'}}\nparameters: {{a.b: {{value: 1}}}}").metric == key


def test_unknown_metric_fails_before_any_trial_with_exit_2(tmp_path, base_yaml):
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("method: random\nrun_cap: 1\nmetric: {name: val_acc, goal: maximize}\n"
                     "parameters:\n  learning_rate: {values: [1e-4]}\n")
    done = _dialsum("sweep", str(sweep), "--config", str(base_yaml), cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"{sweep}: metric.name: 'val_acc' is not logged by dialsum runs" in done.stderr
    assert not (tmp_path / "out").exists()  # no sweep folder, no trial


def test_hyperband_with_min_and_max_iter_follows_wandb():
    """W&B's engine takes max_iter and s when max_iter is given: bands int(max_iter / eta^k), k = 1..s."""
    spec = spec_of("method: random\nparameters: {x.y: {value: 1}}\n"
                   "early_terminate: {type: hyperband, min_iter: 1, max_iter: 27, s: 2, eta: 3}")
    assert spec.hyperband.kwargs() == {"min_resource": 3, "max_resource": 27, "reduction_factor": 3}
    assert any("bands [3, 9]; min_iter is ignored" in n for n in spec.notes)
    spec = spec_of("method: random\nparameters: {x.y: {value: 1}}\n"
                   "early_terminate: {type: hyperband, max_iter: 10, s: 3, eta: 2}")
    assert spec.hyperband.min_resource == 1  # bands 5, 2, 1


@pytest.mark.parametrize("key", ["program: train.py", "command: [python, train.py, '${args}']", "job: my-job:v1"])
def test_program_command_and_launch_keys_are_refused_naming_the_key(key):
    with pytest.raises(UserError) as err:
        spec_of(f"method: random\n{key}\nparameters: {{a.b: {{value: 1}}}}")
    assert str(err.value).startswith(f"sweep.yaml: {key.split(':')[0]}: ")


def test_beta_and_q_beta_sample_as_wandb_defines_them():
    spec = spec_of("method: random\nparameters:\n  a.x: {distribution: beta, a: 2, b: 8}\n"
                   "  a.y: {distribution: q_beta, a: 1, b: 1, q: 0.25}\n  a.z: {distribution: beta}\n")
    draws = samples(spec, 200)
    xs = [d["a.x"] for d in draws]
    assert all(0 <= x <= 1 for x in xs) and abs(sum(xs) / len(xs) - 0.2) < 0.03  # mean a / (a + b)
    assert {d["a.y"] for d in draws} <= {0.0, 0.25, 0.5, 0.75, 1.0} and len({d["a.y"] for d in draws}) >= 4
    zs = [d["a.z"] for d in draws]
    assert 0.4 < sum(zs) / len(zs) < 0.6  # a = b = 1 by default: uniform
    with pytest.raises(UserError, match="parameters.a.x.a: must be > 0"):
        spec_of("method: random\nparameters:\n  a.x: {distribution: beta, a: 0}\n")
    with pytest.raises(UserError, match="parameters.a.x.a: not used by 'distribution: uniform'"):
        spec_of("method: random\nparameters:\n  a.x: {min: 0.0, max: 1.0, a: 2}\n")
