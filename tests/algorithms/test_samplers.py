import io
from types import SimpleNamespace

import pytest
import torch

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.samplers import PromptSampler, difficulties_from_problems
from rlvr.errors import ConfigError, DataError, ShapeError

F64 = torch.float64


def roundtrip(state):
    """Through torch.save / torch.load, as a checkpoint would."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


# --- uniform ------------------------------------------------------------------------------------------


def test_uniform_is_deterministic_from_the_seed():
    a, b, c = PromptSampler(10, seed=7), PromptSampler(10, seed=7), PromptSampler(10, seed=8)
    draws_a = [a.sample(3) for _ in range(5)]
    assert draws_a == [b.sample(3) for _ in range(5)]
    assert draws_a != [c.sample(3) for _ in range(5)]


def test_uniform_epochs_are_permutations_and_a_step_may_cross_them():
    s = PromptSampler(5, seed=0)
    first = s.sample(3) + s.sample(2)
    assert sorted(first) == [0, 1, 2, 3, 4] and s.epoch == 0
    crossing = s.sample(7)  # the whole of epoch 1, then 2 prompts of epoch 2
    assert sorted(crossing[:5]) == [0, 1, 2, 3, 4] and s.epoch == 2
    assert len(set(crossing[5:])) == 2


@pytest.mark.parametrize("kind", ["uniform", "curriculum", "prioritized"])
def test_resume_gives_exactly_the_same_prompts(kind):
    def make():
        return PromptSampler(
            12, kind=kind, seed=3, curriculum_start=0.25, curriculum_steps=6, sampler_momentum=0.5
        )

    s = make()
    for step in range(3):
        drawn = s.sample(5, step)
        s.update(drawn, [(i % 3) / 2 for i in drawn])
    state = roundtrip(s.state_dict())
    after = []
    for step in range(3, 8):
        drawn = s.sample(5, step)
        s.update(drawn, [((i + step) % 3) / 2 for i in drawn])
        after.append(drawn)

    resumed = make()
    resumed.load_state_dict(state)
    replay = []
    for step in range(3, 8):
        drawn = resumed.sample(5, step)
        resumed.update(drawn, [((i + step) % 3) / 2 for i in drawn])
        replay.append(drawn)
    assert replay == after
    assert torch.equal(resumed.success_rates, s.success_rates)


def test_resume_refuses_a_different_sampler():
    state = PromptSampler(6, kind="uniform").state_dict()
    with pytest.raises(ConfigError, match="kind='uniform' but this run has kind='prioritized'"):
        PromptSampler(6, kind="prioritized").load_state_dict(state)
    with pytest.raises(ConfigError, match="num_prompts=6"):
        PromptSampler(7, kind="uniform").load_state_dict(state)


# --- success rates ---------------------------------------------------------------------------------------


def test_success_rate_mean_and_moving_average():
    mean = PromptSampler(3)  # sampler_momentum None: mean of all observations
    mean.update([0, 0, 0], [1.0, 0.0, 0.5])  # (1 + 0 + 0.5) / 3 = 0.5
    assert mean.success_rates.tolist() == [0.5, 0.0, 0.0]
    assert mean.observations.tolist() == [3, 0, 0]
    ema = PromptSampler(3, sampler_momentum=0.5)
    ema.update([1], [1.0])  # first observation sets it: 1.0
    ema.update([1], [0.0])  # 0.5 * 1.0 + 0.5 * 0.0 = 0.5
    ema.update([1], [1.0])  # 0.5 * 0.5 + 0.5 * 1.0 = 0.75
    assert ema.success_rates.tolist() == [0.0, 0.75, 0.0]


def test_update_checks_its_inputs():
    s = PromptSampler(3)
    with pytest.raises(ShapeError, match="2 indices but 1 success rates"):
        s.update([0, 1], [0.5])
    with pytest.raises(ShapeError, match=r"prompt indices must be in \[0, 3\)"):
        s.update([3], [0.5])
    with pytest.raises(ShapeError, match=r"success rates must be in \[0, 1\]"):
        s.update([0], [1.5])


# --- prioritized -----------------------------------------------------------------------------------------


def test_prioritized_probabilities_are_proportional_to_one_minus_success():
    s = PromptSampler(5, kind="prioritized")
    s.update([0, 1, 2], [1.0, 0.5, 0.25])  # prompts 3, 4 unseen: s = 0
    # weights 1 - s = (0, 0.5, 0.75, 1, 1), total 3.25
    expected = torch.tensor([0.0, 0.5, 0.75, 1.0, 1.0], dtype=F64) / 3.25
    assert torch.allclose(s.probabilities(), expected, rtol=0, atol=1e-15)
    for _ in range(20):
        assert 0 not in s.sample(4)  # probability 0 is never drawn while others have weight


def test_prioritized_edge_cases():
    s = PromptSampler(4, kind="prioritized")
    s.update([0, 1, 2, 3], [1.0] * 4)
    assert s.probabilities().tolist() == [0.25] * 4  # all solved: uniform
    t = PromptSampler(4, kind="prioritized")
    t.update([0, 1, 2], [1.0, 1.0, 1.0])
    drawn = t.sample(2)
    assert 3 in drawn and len(set(drawn)) == 2  # the one unsolved prompt, then a solved one
    with pytest.raises(ConfigError, match="draws distinct prompts; 5 requested"):
        t.sample(5)


# --- curriculum ------------------------------------------------------------------------------------------


def test_curriculum_moves_from_easy_to_hard():
    difficulty = [5, 4, 3, 2, 1, 1, 2, 3]  # easiest: 4 and 5 (1), then 3 and 6 (2), ...
    s = PromptSampler(
        8, kind="curriculum", difficulties=difficulty, curriculum_start=0.25, curriculum_steps=4
    )
    # c(t) = 0.25 + 0.75 * t / 4: 0.25, 0.4375, 0.625, 0.8125, 1 -> pools of 2, 4, 5, 7, 8 prompts
    assert [s.curriculum_fraction(t) for t in range(6)] == [0.25, 0.4375, 0.625, 0.8125, 1.0, 1.0]
    assert torch.equal(s.probabilities(0) > 0, torch.tensor([0, 0, 0, 0, 1, 1, 0, 0], dtype=torch.bool))
    assert sorted(s.sample(2, step=0)) == [4, 5]
    assert set(s.sample(4, step=1)) == {3, 4, 5, 6}
    assert (s.probabilities(4) == 1 / 8).all()
    order = s.easiest_first().tolist()
    assert [difficulty[i] for i in order] == sorted(difficulty)


def test_curriculum_estimates_difficulty_from_success_when_none_is_given():
    s = PromptSampler(4, kind="curriculum", curriculum_start=0.25, curriculum_steps=10)
    s.update([2, 0], [1.0, 0.0])  # prompt 2 always solved (difficulty 0), prompt 0 never (1)
    assert s.difficulty().tolist() == [1.0, 0.5, 0.0, 0.5]  # unseen prompts: 0.5
    order = s.easiest_first().tolist()
    assert order[0] == 2 and order[-1] == 0
    assert s.sample(1, step=0) == [2]


def test_difficulties_from_problems():
    def problem(i, **meta):
        return SimpleNamespace(id=f"p{i}", meta=meta)

    assert difficulties_from_problems([problem(0, level="Level 3"), problem(1, level=5)]).tolist() == [
        3.0,
        5.0,
    ]
    assert difficulties_from_problems([problem(0), problem(1)]) is None
    with pytest.raises(DataError, match=r"problem data.jsonl:2: meta\['level'\] = None"):
        difficulties_from_problems([problem(0, level=1), problem(1, source="data.jsonl:2")])


# --- configuration ---------------------------------------------------------------------------------------


def test_from_config_reads_the_sampler_fields():
    cfg = AlgorithmConfig(
        sampler="curriculum", sampler_momentum=0.9, curriculum_start=0.5, curriculum_steps=20
    )
    s = PromptSampler.from_config(10, cfg, seed=1)
    assert (s.kind, s.sampler_momentum, s.curriculum_start, s.curriculum_steps, s.seed) == (
        "curriculum",
        0.9,
        0.5,
        20,
        1,
    )


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"kind": "prioritised"}, "did you mean 'prioritized'"),
        ({"sampler_momentum": 1.0}, r"sampler_momentum must be None or in \[0, 1\)"),
        ({"curriculum_start": 0.0}, r"curriculum_start must be in \(0, 1\]"),
        ({"curriculum_steps": -1}, "curriculum_steps must be an integer >= 0"),
    ],
)
def test_bad_settings_name_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PromptSampler(4, **kwargs)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="positive number of prompts"):
        PromptSampler(0)
    with pytest.raises(ShapeError, match=r"one number per prompt \(3\)"):
        PromptSampler(3, kind="curriculum", difficulties=[1.0, 2.0])
    with pytest.raises(ConfigError, match="integer >= 0"):
        PromptSampler(3).sample(-1)
