import dataclasses

import pytest

from rlvr.algorithms import validation
from rlvr.algorithms.config import ALGORITHM_FIELDS, AlgorithmConfig
from rlvr.algorithms.validation import (
    LOOP_LEVEL_FIELDS,
    field_readers,
    needs_correctness,
    needs_critic,
    needs_reference_model,
    validate_algorithm_config,
)
from rlvr.errors import ConfigError
from rlvr.registry import Registry


def bad(**changes):
    return dataclasses.replace(AlgorithmConfig(), **changes)


def test_the_defaults_validate():
    validate_algorithm_config(AlgorithmConfig())


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"advantage": "grpoo"},
            "algorithm.advantage: unknown advantage estimator 'grpoo'; did you mean 'grpo'?",
        ),
        (
            {"policy_loss": "ppo_clp"},
            "algorithm.policy_loss: unknown policy loss 'ppo_clp'; did you mean 'ppo_clip'?",
        ),
        (
            {"aggregation": "token_mean"},
            "algorithm.aggregation: unknown aggregation mode 'token_mean'; did you mean",
        ),
        ({"kl_estimator": "k33"}, "algorithm.kl_estimator: unknown KL estimator 'k33'; did you mean 'k3'?"),
        ({"value_loss": "clip"}, "algorithm.value_loss: unknown value loss 'clip'"),
        (
            {"kl_placement": "rewards"},
            "algorithm.kl_placement: unknown KL placement 'rewards'; did you mean 'reward'?",
        ),
        (
            {"filters": ("dynamic_sampler",)},
            "algorithm.filters: unknown group filter 'dynamic_sampler'; did you mean",
        ),
        ({"sampler": "prioritised"}, "algorithm.sampler: unknown prompt sampler 'prioritised'; did you mean"),
        ({"dynamic_sampling_criterion": "acc"}, "algorithm.dynamic_sampling_criterion: unknown"),
    ],
)
def test_unknown_names_name_the_key_and_the_nearest_valid_name(changes, message):
    with pytest.raises(ConfigError) as info:
        validate_algorithm_config(bad(**changes))
    assert message in str(info.value)
    assert "valid:" in str(info.value)


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"eps_low": -0.1}, r"algorithm.eps_low must be in \[0.0, 1.0\]"),
        ({"eps_low": 1.5}, r"algorithm.eps_low must be in \[0.0, 1.0\]"),
        ({"eps_high": float("nan")}, "algorithm.eps_high must be a finite number"),
        ({"lam": 1.5}, r"algorithm.lam must be in \[0.0, 1.0\]"),
        ({"gamma": -0.5}, r"algorithm.gamma must be in \[0.0, 1.0\]"),
        ({"lam_critic": 2.0}, "algorithm.lam_critic"),
        ({"lam_alpha": 0.0}, "algorithm.lam_alpha must be > 0.0"),
        ({"clip_ratio_c": 1.0}, "algorithm.clip_ratio_c must be > 1.0"),
        ({"kimi_tau": 0.0}, "algorithm.kimi_tau must be > 0.0"),
        ({"clip_cov_lb": 6.0}, "algorithm.clip_cov_ub .* must be >= algorithm.clip_cov_lb"),
        ({"kl_cov_ratio": 1.5}, "algorithm.kl_cov_ratio"),
        ({"kl_coef": -0.01}, "algorithm.kl_coef must be >= 0.0"),
        ({"kl_clamp": 0.0}, "algorithm.kl_clamp must be > 0.0"),
        ({"lm_coef": -1.0}, "algorithm.lm_coef must be >= 0.0"),
        ({"value_clip": 0.0}, "algorithm.value_clip must be > 0.0"),
        ({"loss_norm_length": 0}, "algorithm.loss_norm_length must be > 0"),
        ({"loss_norm_length": 2.5}, "algorithm.loss_norm_length must be an integer"),
        ({"cppo_pruning_rate": 1.0}, r"algorithm.cppo_pruning_rate must be in \[0.0, 1.0\)"),
        ({"sampler_momentum": 1.0}, "algorithm.sampler_momentum"),
        ({"curriculum_start": 0.0}, "algorithm.curriculum_start"),
    ],
)
def test_values_out_of_range_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate_algorithm_config(bad(**changes))


def test_values_at_the_edge_of_their_range_are_accepted():
    validate_algorithm_config(
        bad(eps_low=0.0, lam=0.0, gamma=1.0, clip_ratio_c=3.0, kl_clamp=None, cppo_pruning_rate=0.0)
    )
    validate_algorithm_config(bad(eps_low=1.0, eps_high=5.0))  # CISPO-style "no lower bound" is legal


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"filters": ("cppo", "dynamic_sampling")}, "list it after 'dynamic_sampling'"),
        ({"filters": ("reject", "reject")}, "'reject' more than once"),
        ({"filters": ("cppo",), "advantage": "gae"}, "'cppo' keeps .* 'gae' gives token-level advantages"),
        ({"filters": ("raft_pp",), "advantage": "grpo"}, "'raft_pp' keeps only the correct completions"),
        ({"filters": "cppo"}, "algorithm.filters must be a list of filter names"),
    ],
)
def test_incompatible_combinations(changes, message):
    with pytest.raises(ConfigError, match=message):
        validate_algorithm_config(bad(**changes))


def test_a_hyperparameter_that_is_not_a_config_field_is_an_error(monkeypatch):
    filters = Registry("group filter")

    @filters.register("odd")
    def odd(*, rewards, group_ids, correct=None, advantages=None, odd_threshold=0.5):
        raise AssertionError("never called")

    real = validation._registries()
    monkeypatch.setattr(validation, "_registries", lambda: {**real, "filters": (filters, real["filters"][1])})
    with pytest.raises(ConfigError, match="group filter 'odd' takes hyperparameter 'odd_threshold'"):
        validate_algorithm_config(bad(filters=("odd",)))


def test_what_the_loop_must_prepare():
    assert needs_critic(bad(advantage="gae")) and needs_critic(bad(advantage="vapo"))
    assert not needs_critic(bad(advantage="grpo"))
    assert needs_reference_model(bad(kl_coef=0.001)) and not needs_reference_model(bad(kl_coef=0.0))
    assert needs_correctness(bad(filters=("reject",)))
    assert needs_correctness(bad(filters=("dynamic_sampling",), dynamic_sampling_criterion="correct"))
    assert not needs_correctness(bad(filters=("dynamic_sampling",)))
    assert needs_correctness(bad(lm_coef=0.1))


def test_every_config_field_is_read_by_something():
    readers = field_readers()
    unread = sorted(name for name, who in readers.items() if not who)
    assert not unread, f"AlgorithmConfig fields that nothing reads (settings silently ignored): {unread}"
    assert set(readers) == set(ALGORITHM_FIELDS)  # nothing reads a name that is not a field


def test_loop_level_fields_are_real_fields_and_not_hidden_function_arguments():
    assert set(LOOP_LEVEL_FIELDS) <= ALGORITHM_FIELDS
    assert set(LOOP_LEVEL_FIELDS) == {
        "advantage",
        "policy_loss",
        "kl_coef",
        "kl_placement",
        "whiten_advantages",
        "entropy_coef",
        "lm_coef",
        "filters",
        "loss_norm_length",
        "replay_sampling_support",
        "spo_continuations",
        "spo_tree_segment_tokens",
    }
    readers = field_readers()
    assert readers["cppo_pruning_rate"] == ["group filter 'cppo'"]
    assert "PromptSampler.from_config" in readers["curriculum_steps"]
    assert "advantage estimator 'vapo'" in readers["lam_alpha"]
