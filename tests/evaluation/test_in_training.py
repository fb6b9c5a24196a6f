"""Evaluation inside rlvr train: benchmarks every N steps, logged with the training metrics, best model kept."""

import json

import pytest

from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.evaluation.in_training import BestModel
from rlvr.logging import read_metrics
from rlvr.training.trainer import train

TINY = [
    "task.params.num_train=64",
    "task.params.num_test=6",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=16",
    "logging.sample_every=0",
    "logging.tensorboard=false",
    "checkpoint.every=0",
]


def test_periodic_evaluation_is_logged_and_the_best_model_kept(tmp_path):
    config = load_config(
        "recipes/quickstart.yaml",
        [
            *TINY,
            "training.steps=2",
            "eval.every=1",
            "eval.samples_per_problem=2",
            "eval.temperature=1.0",
            "eval.best_metric=eval/arithmetic/pass@2",
            f"logging.output_dir={tmp_path}",
        ],
    )
    result = train(config, log=lambda *a: None)
    by_step: dict[int, dict] = {}
    for row in read_metrics(tmp_path / "metrics.jsonl"):
        by_step.setdefault(row["step"], {}).update(row)
    for step in (0, 1, 2):  # before training, at step 1 (eval.every), after training
        for key in (
            "eval/accuracy",
            "eval/arithmetic/avg@2",
            "eval/arithmetic/pass@2",
            "eval/arithmetic/maj@2",
        ):
            assert key in by_step[step], (step, key)
    assert "reward/accuracy" in by_step[1]  # logged with the training metrics of the same step
    assert result.eval_after["eval/accuracy"] == by_step[2]["eval/accuracy"]
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    values = {step: by_step[step]["eval/arithmetic/pass@2"] for step in (0, 1, 2)}
    assert best["metric"] == "eval/arithmetic/pass@2"
    assert best["value"] == max(values.values())
    assert best["step"] == min(s for s, v in values.items() if v == best["value"])  # the first to reach it
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_best_model_keeper(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlvr.toy.build import SHIPPED_DIR

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_DIR)
    keeper = BestModel(tmp_path, "eval/length_mean", "min")
    assert keeper.update(1, {"eval/length_mean": 30.0}, model, tokenizer)
    assert not keeper.update(2, {"eval/length_mean": 31.0}, model, tokenizer)
    assert keeper.update(3, {"eval/length_mean": 12.0}, model, tokenizer)
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 3
    assert not list(tmp_path.glob(".best-*"))  # the replaced copy is gone
    resumed = BestModel(tmp_path, "eval/length_mean", "min")  # a resumed run knows the value to beat
    assert not resumed.update(4, {"eval/length_mean": 20.0}, model, tokenizer)
    with pytest.raises(ConfigError, match="'eval/acc' is not an evaluation metric.*available: eval/accuracy"):
        BestModel(tmp_path, "eval/acc").update(5, {"eval/accuracy": 0.5}, model, tokenizer)


def test_eval_section_errors_name_the_key():
    with pytest.raises(
        ConfigError, match="'eval.benchmarks': unknown benchmark 'gsm8kk'; did you mean 'gsm8k'"
    ):
        load_config(None, ["eval.benchmarks=[task,gsm8kk]"])
    with pytest.raises(ConfigError, match="'eval.best_metric' must name an evaluation metric"):
        load_config(None, ["eval.best_metric=reward/accuracy"])
    with pytest.raises(ConfigError, match="'eval.samples_per_problem' must be >= 1"):
        load_config(None, ["eval.samples_per_problem=0"])
    with pytest.raises(ConfigError, match="'eval.template'"):
        load_config(None, ["eval.template=r2"])
