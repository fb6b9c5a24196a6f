import re

import pytest

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.presets import PRESETS, Preset, get_preset, register_preset
from rlvr.algorithms.validation import (
    describe_presets,
    needs_critic,
    needs_reference_model,
    validate_algorithm_config,
)
from rlvr.config import check_keys, load_config
from rlvr.errors import ConfigError

NAMES = PRESETS.names()


def test_the_papers_recipes_are_all_there():
    expected = {
        "grpo",
        "dr_grpo",
        "dapo",
        "vapo",
        "ppo",
        "kimi",
        "rloo",
        "reinforce_pp",
        "cppo",
        "raft_pp",
        "reinforce_rej",
        "gspo",
        "cispo",
        "clip_cov",
        "kl_cov",
        "opd",
        *("dppo", "sapo", "gmpo", "maxrl", "gdpo", "passk", "spo", "spo_tree"),
    }
    assert set(NAMES) == expected


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_validates(name):
    validate_algorithm_config(get_preset(name).algorithm)


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_loads_as_a_run_config(name):
    preset = get_preset(name)
    nested: dict = {}
    for dotted, value in preset.settings.items():
        section, key = dotted.split(".", 1)
        nested.setdefault(section, {})[key] = value
    check_keys(nested)  # every setting is a real config key
    teacher = ["distill.teacher=toy"] if "distill.mode" in preset.settings else []  # opd needs a teacher
    config = load_config(overrides=[f"preset={name}", *teacher])
    assert config.algorithm == preset.algorithm
    for dotted, value in preset.settings.items():
        section, key = dotted.split(".", 1)
        got = getattr(getattr(config, section), key)
        assert (tuple(got) if isinstance(value, tuple) else got) == value, dotted


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_says_what_it_is_and_where_it_comes_from(name):
    preset = get_preset(name)
    assert preset.name == name
    assert preset.summary and "\n" not in preset.summary and len(preset.summary) <= 120
    assert re.search(r"arXiv \d{4}\.\d{4,5}", preset.citation), preset.citation
    assert isinstance(preset.algorithm, AlgorithmConfig)


def test_grpo_is_deepseekmath():
    a = get_preset("grpo").algorithm
    assert (a.advantage, a.policy_loss, a.aggregation) == ("grpo", "ppo_clip", "seq-mean-token-mean")
    assert (a.eps_low, a.eps_high, a.kl_coef, a.kl_estimator, a.kl_placement) == (
        0.2,
        0.2,
        0.04,
        "k3",
        "loss",
    )
    assert get_preset("grpo").settings["rollout.samples_per_prompt"] == 64
    assert needs_reference_model(a) and not needs_critic(a)


def test_dr_grpo_drops_std_and_length_normalisation_and_kl():
    a = get_preset("dr_grpo").algorithm
    assert (a.advantage, a.aggregation, a.kl_coef) == ("dr_grpo", "seq-mean-token-sum-norm", 0.0)
    assert (
        get_preset("dr_grpo").settings["rollout.max_new_tokens"] == 3000
    )  # the budget each sum is divided by


def test_dapo_is_clip_higher_token_mean_no_kl_dynamic_sampling_without_dual_clip():
    preset = get_preset("dapo")
    a = preset.algorithm
    assert (a.eps_low, a.eps_high, a.clip_ratio_c) == (0.2, 0.28, None)
    assert (a.aggregation, a.kl_coef, a.filters, a.dynamic_sampling_criterion) == (
        "token-mean",
        0.0,
        ("dynamic_sampling",),
        "correct",
    )
    assert preset.settings["rollout.max_new_tokens"] == 20480
    assert "overlong" in preset.notes["task.rewards"]
    assert not needs_reference_model(a)


def test_vapo_and_ppo_use_a_critic():
    v = get_preset("vapo").algorithm
    assert (v.advantage, v.lam_critic, v.lam_alpha, v.eps_high, v.lm_coef, v.aggregation) == (
        "vapo",
        1.0,
        0.05,
        0.28,
        0.1,
        "token-mean",
    )
    p = get_preset("ppo").algorithm
    assert (p.advantage, p.gamma, p.lam, p.kl_coef, p.eps_low, p.whiten_advantages) == (
        "gae",
        1.0,
        1.0,
        0.0,
        0.2,
        True,
    )
    assert needs_critic(v) and needs_critic(p)


def test_sequence_level_and_kl_in_reward_recipes():
    g = get_preset("gspo").algorithm
    assert (g.policy_loss, g.eps_low, g.eps_high, g.aggregation) == (
        "gspo",
        3e-4,
        4e-4,
        "seq-mean-token-mean",
    )
    r = get_preset("reinforce_pp").algorithm
    assert (r.kl_placement, r.kl_estimator, r.whiten_advantages) == (
        "reward",
        "k1",
        False,
    )  # it whitens itself
    assert get_preset("rloo").algorithm.kl_placement == "reward"
    assert get_preset("kimi").algorithm.policy_loss == "kimi"
    c = get_preset("cppo").algorithm
    assert (c.filters, c.cppo_pruning_rate) == (("cppo",), 0.875)


def test_presets_are_read_only_data():
    preset = get_preset("dapo")
    with pytest.raises(TypeError):
        preset.settings["rollout.samples_per_prompt"] = 2
    with pytest.raises(ConfigError, match="algorithm settings go in Preset.algorithm"):
        Preset("x", "s", "c", AlgorithmConfig(), settings={"algorithm.eps_high": 0.3})
    with pytest.raises(ValueError, match="already registered"):
        register_preset(Preset("dapo", "s", "c", AlgorithmConfig()))


def test_unknown_preset_names_the_nearest():
    with pytest.raises(ConfigError, match="unknown preset 'dapoo'; did you mean 'dapo'"):
        get_preset("dapoo")


def test_describe_presets_lists_every_preset_with_its_paper():
    table = describe_presets()
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["preset", "estimator", "loss", "aggregation"]
    assert len(lines) == 2 + len(NAMES)
    dapo = next(line for line in lines if line.startswith("dapo "))
    assert (
        "ppo_clip" in dapo and "token-mean" in dapo and "arXiv 2503.14476" in dapo and "eps_high=0.28" in dapo
    )


def test_second_round_presets_fix_their_papers_components():
    expected = {
        "dppo": ("grpo", "dppo_tv"),
        "sapo": ("grpo", "sapo"),
        "gmpo": ("grpo", "gmpo"),
        "maxrl": ("maxrl", "ppo_clip"),
        "gdpo": ("gdpo", "ppo_clip"),
        "passk": ("passk", "ppo_clip"),
        "spo": ("spo", "ppo_clip"),
        "spo_tree": ("spo", "ppo_clip"),
    }
    for name, (advantage, loss) in expected.items():
        cfg = get_preset(name).algorithm
        assert (cfg.advantage, cfg.policy_loss, cfg.kl_coef) == (advantage, loss, 0.0), name
    assert get_preset("sapo").algorithm.sapo_tau_neg > get_preset("sapo").algorithm.sapo_tau_pos
    assert get_preset("gmpo").algorithm.gmpo_eps_high == 0.4
    assert get_preset("passk").algorithm.passk_k < get_preset("passk").settings["rollout.samples_per_prompt"]
