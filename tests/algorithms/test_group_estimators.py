"""REINFORCE++-baseline, MaxRL, GDPO and pass@k advantages; the token-sum aggregation."""

import itertools
import math

import pytest
import torch

from rlvr.algorithms.advantages import ADVANTAGES
from rlvr.algorithms.aggregation import aggregate
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.validation import validate_algorithm_config
from rlvr.errors import ConfigError, ShapeError

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


def per_row(name, rewards, group_ids=None, width=1, **kw):
    rewards = t(rewards) if not isinstance(rewards, torch.Tensor) else rewards
    mask = torch.ones(rewards.shape[0], width, dtype=torch.bool)
    ids = torch.zeros(rewards.shape[0], dtype=torch.long) if group_ids is None else torch.tensor(group_ids)
    out = ADVANTAGES.get(name)(rewards=rewards, mask=mask, group_ids=ids, **kw)
    return out.advantages[:, 0]


# --- MaxRL ----------------------------------------------------------------------------------------


def test_maxrl_hand_values_and_zero_cases():
    assert per_row("maxrl", [1, 0, 0, 0]).tolist() == [3.0, -1.0, -1.0, -1.0]
    assert per_row("maxrl", [1, 1, 0, 0]).tolist() == [1.0, 1.0, -1.0, -1.0]
    assert per_row("maxrl", [0, 0, 0]).tolist() == [0.0, 0.0, 0.0]  # nothing correct: no signal
    assert per_row("maxrl", [0.1, 0.1, 0.1]).tolist() == [0.0, 0.0, 0.0]  # exactly 0, not 1e-17


def test_maxrl_estimates_the_score_of_the_correct_samples_minus_the_mean_score():
    # (1/n) sum_i A_i s_i = (1/K) sum_{correct} s_i - (1/n) sum_i s_i for any scores s.
    rewards = t([1, 0, 1, 0, 0])
    scores = t([0.3, -1.2, 2.0, 0.7, 0.1])
    a = per_row("maxrl", rewards)
    assert (a * scores).mean().item() == pytest.approx(scores[rewards > 0].mean() - scores.mean(), abs=1e-12)


# --- pass@k ---------------------------------------------------------------------------------------


def enumerated_passk(correct, k):
    """Each sample's mean, over the k-subsets containing it, of (max(subset) - mean) / std."""
    n = len(correct)
    subsets = list(itertools.combinations(range(n), k))
    values = [float(any(correct[i] for i in s)) for s in subsets]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    if std == 0:
        return [0.0] * n
    return [
        sum((v - mean) / std for s, v in zip(subsets, values, strict=True) if i in s)
        / math.comb(n - 1, k - 1)
        for i in range(n)
    ]


@pytest.mark.parametrize(
    "n,c,k", [(4, 1, 2), (5, 2, 2), (6, 1, 3), (6, 3, 4), (8, 2, 4), (5, 4, 2), (5, 0, 2)]
)
def test_passk_equals_subset_enumeration(n, c, k):
    correct = [1.0] * c + [0.0] * (n - c)
    got = per_row("passk", correct, passk_k=k).tolist()
    assert got == pytest.approx(enumerated_passk(correct, k), abs=1e-12)


def test_passk_hand_example_and_k_one_is_grpo_with_biased_std():
    assert per_row("passk", [1, 0, 0, 0], passk_k=2).tolist() == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    rewards = [1, 0, 0, 1, 1]
    grpo = per_row("grpo", rewards, std_unbiased=False, std_eps=0.0)
    torch.testing.assert_close(per_row("passk", rewards, passk_k=1), grpo, rtol=0, atol=1e-12)


def test_passk_small_groups_use_k_equal_n_and_success_is_positive_reward():
    # n = 2 < k = 4: k = n = 2, every 2-subset passes when one sample is correct: no signal.
    assert per_row("passk", [1, 0], passk_k=4).tolist() == [0.0, 0.0]
    # rewards 0.5 and -0.2 count as correct / wrong
    assert per_row("passk", [0.5, -0.2, 0, 0], passk_k=2).tolist() == pytest.approx(
        [1.0, -1 / 3, -1 / 3, -1 / 3]
    )


def test_passk_rejects_bad_k():
    with pytest.raises(ConfigError, match="algorithm.passk_k must be an integer >= 1"):
        per_row("passk", [1, 0], passk_k=0)
    with pytest.raises(ConfigError, match="algorithm.passk_k must be an integer"):
        validate_algorithm_config(AlgorithmConfig(passk_k=2.5))
    with pytest.raises(ConfigError, match="algorithm.passk_k must be >= 1"):
        validate_algorithm_config(AlgorithmConfig(passk_k=0))


# --- GDPO -----------------------------------------------------------------------------------------


def test_gdpo_hand_example():
    components = t([[1.0, 1.0], [0.0, 1.0]])
    a = per_row("gdpo", t([2.0, 1.0]), reward_components=components)
    assert a.tolist() == pytest.approx([1.0, -1.0], abs=1e-6)


def test_gdpo_keeps_apart_combinations_that_grpo_collapses():
    # The paper's two-binary-reward example: (acc, fmt) over 4 rollouts. GRPO on the sum sees
    # totals (1, 1, 2, 0); GDPO keeps the two "one reward" rollouts apart from neither pattern.
    components = t([[1, 0], [0, 1], [1, 1], [0, 0]])
    weights = t([2.0, 1.0])  # accuracy counts double
    total = components @ weights
    gdpo = per_row("gdpo", total, reward_components=components, reward_weights=weights)
    assert gdpo[0] > gdpo[1]  # GDPO weighs the normalised accuracy twice
    equal_weights = per_row("gdpo", components.sum(1), reward_components=components)
    grpo = per_row("grpo", components.sum(1))
    assert equal_weights[0] == pytest.approx(equal_weights[1]) and grpo[0] == pytest.approx(grpo[1])
    assert len({round(x, 9) for x in gdpo.tolist()}) == 4


def test_gdpo_single_component_is_whitened_grpo_and_the_default():
    rewards, ids = t([1, 0, 0, 1, 0.5, 0.2, 0.9]), [0, 0, 0, 0, 1, 1, 1]
    grpo = per_row("grpo", rewards, ids)
    whitened = (grpo - grpo.mean()) / (grpo.std(unbiased=False) + 1e-8)
    torch.testing.assert_close(per_row("gdpo", rewards, ids), whitened, rtol=0, atol=1e-12)
    as_component = per_row("gdpo", rewards, ids, reward_components=rewards[:, None], reward_weights=t([1.0]))
    torch.testing.assert_close(as_component, whitened, rtol=0, atol=1e-12)


def test_gdpo_invariants_permutation_padding_and_equal_groups():
    g = torch.Generator().manual_seed(0)
    components = (torch.rand(8, 3, generator=g, dtype=F64) > 0.5).to(F64)
    ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    mask = torch.rand(8, 5, generator=g) > 0.3
    mask[:, 0] = True
    fn = ADVANTAGES.get("gdpo")
    out = fn(rewards=components.sum(1), mask=mask, group_ids=ids, reward_components=components)
    perm = torch.randperm(8, generator=g)
    out_p = fn(
        rewards=components.sum(1)[perm],
        mask=mask[perm],
        group_ids=ids[perm],
        reward_components=components[perm],
    )
    torch.testing.assert_close(out_p.advantages, out.advantages[perm], rtol=0, atol=1e-12)
    assert (out.advantages[~mask] == 0).all()
    same = fn(
        rewards=t([1.0] * 4), mask=mask[:4], group_ids=ids[:4], reward_components=torch.ones(4, 2, dtype=F64)
    )
    assert (same.advantages == 0).all()


def test_gdpo_shape_errors_name_the_argument():
    with pytest.raises(ShapeError, match="reward_components has 3 rows"):
        per_row("gdpo", [1, 0], reward_components=torch.ones(3, 2, dtype=F64))
    with pytest.raises(ShapeError, match="reward_weights has 3 entries for 2"):
        per_row("gdpo", [1, 0], reward_components=torch.ones(2, 2, dtype=F64), reward_weights=t([1, 1, 1]))


# --- REINFORCE++-baseline --------------------------------------------------------------------------


def test_reinforce_pp_baseline_hand_values_and_token_whitening():
    a = per_row("reinforce_pp_baseline", [1, 0, 1, 1], [0, 0, 1, 1])
    assert a.tolist() == pytest.approx([math.sqrt(2), -math.sqrt(2), 0, 0], abs=1e-7)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool)
    rewards, ids = t([1, 0, 0.5, 0.2]), torch.tensor([0, 0, 1, 1])
    out = ADVANTAGES.get("reinforce_pp_baseline")(rewards=rewards, mask=mask, group_ids=ids)
    centered = ADVANTAGES.get("dr_grpo")(rewards=rewards, mask=mask, group_ids=ids).advantages
    x = centered[mask]
    torch.testing.assert_close(out.advantages[mask], (x - x.mean()) / (x.std(unbiased=False) + 1e-8))


# --- token-sum aggregation --------------------------------------------------------------------------


def test_token_sum_is_the_plain_sum_and_splits_into_micro_batches():
    values = t([[1.0, 9.0], [2.0, 2.0], [3.0, 5.0]])
    mask = torch.tensor([[1, 0], [1, 1], [1, 1]], dtype=torch.bool)
    assert aggregate(values, mask, "token-sum").item() == 13.0
    parts = aggregate(values[:1], mask[:1], "token-sum") + aggregate(values[1:], mask[1:], "token-sum")
    assert parts.item() == 13.0
    validate_algorithm_config(AlgorithmConfig(aggregation="token-sum"))
