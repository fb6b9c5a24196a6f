import dataclasses
from pathlib import Path

import pytest

from rlvr.config import Config, describe, field_docs, format_config, load_config, validate_config
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
    train_recipes = [
        p
        for p in Path("recipes").glob("*.yaml")
        if "\nstages:" not in p.read_text() and "\ndata:" not in p.read_text()
    ]
    assert len(train_recipes) >= 6
    for path in train_recipes:
        config = load_config(path)
        assert dataclasses.is_dataclass(config)


def _numeric_keys(cls=Config, prefix=""):
    """Every dotted key of a numeric (int, float, optional or tuple of them) field of the config."""
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _numeric_keys(tp, f"{prefix}{f.name}.")
            continue
        args = set(typing.get_args(tp)) - {type(None)} or {tp}
        if args & {int, float} and bool not in args:
            yield f"{prefix}{f.name}"


@pytest.mark.parametrize("key", sorted(_numeric_keys()))
def test_every_numeric_setting_has_its_range_checked_at_load(key):
    # NaN is out of every range: each numeric key, wherever it lives, must be refused by name.
    section, name = key.split(".")
    value = getattr(getattr(Config(), section), name)
    nan = [float("nan")] * max(1, len(value)) if isinstance(value, tuple) else float("nan")
    config = Config()
    changed = dataclasses.replace(getattr(config, section), **{name: nan})  # AlgorithmConfig is frozen
    config = dataclasses.replace(config, **{section: changed})

    with pytest.raises(ConfigError, match=rf"{section}\.{name}"):
        validate_config(config)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["rollout.samples_per_prompt=1"],
            r"'rollout\.samples_per_prompt' is 1: algorithm\.advantage 'grpo'",
        ),
        (["preset=rloo", "rollout.samples_per_prompt=1"], r"samples_per_prompt.*'rloo'"),
        (["preset=dapo", "rollout.samples_per_prompt=1"], r"rollout\.samples_per_prompt"),
        (
            ["algorithm.advantage=pkpo", "algorithm.passk_k=8", "rollout.samples_per_prompt=4"],
            r"'algorithm\.passk_k' is 8: algorithm\.advantage 'pkpo'.*samples_per_prompt = 4",
        ),
        (
            ["algorithm.replay_sampling_support=true"],
            r"'algorithm\.replay_sampling_support' is on but rollout\.top_p is 1 and rollout\.top_k is 0",
        ),
        (
            ["algorithm.replay_sampling_support=true", "rollout.top_p=0.9", "rollout.temperature=0"],
            r"'algorithm\.replay_sampling_support' needs sampling",
        ),
        (
            ["algorithm.replay_sampling_support=true", "rollout.top_k=20", "env.name=guess_number"],
            r"'algorithm\.replay_sampling_support' is not supported with multi-turn environments",
        ),
        (["checkpoint.keep_last=0"], r"setting 'checkpoint\.keep_last' must be >= 1, got 0"),
        (["checkpoint.every=-1"], r"setting 'checkpoint\.every' must be >= 0, got -1"),
        (["algorithm.eps_low=1.5"], r"algorithm\.eps_low must be in \[0\.0, 1\.0\], got 1\.5"),
        (["optim.betas=[0.9,1.5]"], r"setting 'optim\.betas' must be in \[0, 1\)"),
        (["optim.min_lr_ratio=2"], r"setting 'optim\.min_lr_ratio' must be in \[0, 1\]"),
        (["logging.log_every=0"], r"setting 'logging\.log_every' must be >= 1"),
        (["rollout.top_k=-1"], r"setting 'rollout\.top_k' must be >= 0"),
        (["optim.lr=0"], r"setting 'optim\.lr' must be positive"),
        (["training.cpu_threads=0"], r"setting 'training\.cpu_threads' must be >= 1"),
    ],
)
def test_settings_that_cannot_work_are_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_replaying_the_sampling_support_loads_with_a_truncation():
    config = load_config(None, ["algorithm.replay_sampling_support=true", "rollout.top_p=0.9"])
    assert config.algorithm.replay_sampling_support and config.rollout.top_p == 0.9
    assert not load_config(None, []).algorithm.replay_sampling_support  # off by default


def test_one_sample_per_prompt_is_fine_without_a_group_baseline():
    load_config(None, ["preset=reinforce_pp", "rollout.samples_per_prompt=1", "training.updates_per_step=1"])
