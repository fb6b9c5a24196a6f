import dataclasses

import pytest

from rlvr.config import Config, describe, field_docs, format_config, load_config
from rlvr.errors import ConfigError


def test_layers_preset_then_file_then_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("preset: dapo\nalgorithm:\n  eps_high: 0.3\nrollout:\n  samples_per_prompt: 4\n")
    config = load_config(path, ["rollout.samples_per_prompt=6"])
    assert config.algorithm.eps_low == 0.2  # from the preset
    assert config.algorithm.filters == ("dynamic_sampling",)  # from the preset
    assert config.algorithm.eps_high == 0.3  # the file beats the preset's 0.28
    assert config.rollout.samples_per_prompt == 6  # the command line beats the file


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["algorithm.eps_hgh=0.3"],
            r"unknown setting 'algorithm\.eps_hgh' \(command line\); did you mean 'algorithm\.eps_high'\?",
        ),
        (["rollot.top_p=0.9"], r"unknown setting 'rollot'.*did you mean 'rollout'"),
        (
            ["rollout.samples_per_prompt=many"],
            r"setting 'rollout\.samples_per_prompt' \(command line\).*Integer",
        ),
        (["algorithm.aggregation=tokenmean"], r"setting 'algorithm\.aggregation'.*expected one of"),
        (["algorithm.advantage=grpoo"], r"algorithm\.advantage.*did you mean 'grpo'"),
        (["rollout.top_p=0"], r"rollout\.top_p"),
        (
            ["rollout.prompts_per_step=3", "training.updates_per_step=2", "rollout.samples_per_prompt=3"],
            r"training\.updates_per_step.*must divide the 9 completions",
        ),
        (["preset=grpoo"], r"did you mean 'grpo'"),
        (["lr"], r"must look like key=value"),
    ],
)
def test_bad_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  top_p: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(path)
    (tmp_path / "typo.yaml").write_text("optim:\n  learning_rate: 1e-5\n")
    with pytest.raises(ConfigError, match=r"unknown setting 'optim\.learning_rate' \(.*typo\.yaml\)"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_every_setting_has_a_meaning():
    rows = describe()
    assert len(rows) > 60
    undocumented = [key for key, _, doc in rows if not doc]
    assert undocumented == []
    text = format_config()
    assert "rollout.samples_per_prompt = 8" in text and "[algorithm]" in text


def test_field_docs_reads_the_docstring_under_each_field():
    assert field_docs(Config)["preset"].startswith("A named recipe")


def test_shipped_recipes_load():
    for path in ("recipes/quickstart.yaml", "recipes/qwen2.5-math-1.5b-dapo.yaml"):
        config = load_config(path)
        assert dataclasses.is_dataclass(config)
