"""REINFORCE++-baseline, MaxRL, GDPO, pass@k and PKPO advantages; the token-sum aggregation."""

import itertools
import math

import pytest
import torch

from rlvr.algorithms.advantages import ADVANTAGES
from rlvr.algorithms.aggregation import aggregate
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.group_estimators import max_at_k, pkpo_rewards
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
    assert (a * scores).mean().item() == pytest.approx(
        (scores[rewards > 0].mean() - scores.mean()).item(), abs=1e-12
    )


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


# --- PKPO -----------------------------------------------------------------------------------------


def subsets_containing(n, k, i):
    return [s for s in itertools.combinations(range(n), k) if i in s]


def brute_pkpo(g, k):
    """By enumeration: max@k (mean over k-subsets of the largest reward), each sample's transformed
    reward (mean max over the k-subsets containing it) and its s^(loo-1) advantage (mean, over the
    same subsets, of max(subset) - max(subset without it)); k = 1 is the leave-one-out mean."""
    n = len(g)
    everything = list(itertools.combinations(range(n), k))
    rho = sum(max(g[j] for j in s) for s in everything) / len(everything)
    r = [
        sum(max(g[j] for j in s) for s in subsets_containing(n, k, i)) / math.comb(n - 1, k - 1)
        for i in range(n)
    ]
    if k == 1:
        a = [g[i] - (sum(g) - g[i]) / (n - 1) if n > 1 else 0.0 for i in range(n)]
    else:
        a = [
            sum(max(g[j] for j in s) - max(g[j] for j in s if j != i) for s in subsets_containing(n, k, i))
            / math.comb(n - 1, k - 1)
            for i in range(n)
        ]
    return rho, r, a


PKPO_CASES = [
    ([0.2, 0.9, 0.5, 0.0], 2),
    ([1, 0, 0, 0], 2),
    ([1, 0, 1, 0, 0], 3),
    ([0.3, 0.3, 0.8, 0.1, 0.3], 2),  # ties
    ([0.7, -1.2, 2.5, 0.0, 0.4, 1.1], 4),
    ([0.7, -1.2, 2.5, 0.0, 0.4, 1.1], 6),  # k = n
    ([0.7, -1.2, 2.5, 0.0], 1),
    ([1, 1, 0, 1, 0, 0, 1, 0], 5),
]


@pytest.mark.parametrize("rewards,k", PKPO_CASES)
def test_pkpo_equals_subset_enumeration(rewards, k):
    rho, r, a = brute_pkpo([float(x) for x in rewards], k)
    assert max_at_k(t(rewards), k) == pytest.approx(rho, abs=1e-12)
    transformed = pkpo_rewards(t(rewards), k)
    assert transformed.tolist() == pytest.approx(r, abs=1e-12)
    assert transformed.mean().item() == pytest.approx(rho, abs=1e-12)  # their mean is the estimator
    assert per_row("pkpo", rewards, passk_k=k).tolist() == pytest.approx(a, abs=1e-12)


def test_pkpo_hand_example_and_binary_closed_forms():
    # Sorted (0.0, 0.2, 0.5, 0.9), every weight C(j - 1, 0) / C(3, 1) = 1/3.
    a = per_row("pkpo", [0.2, 0.9, 0.5, 0.0], passk_k=2)
    assert a.tolist() == pytest.approx([0.2 / 3, 2.0 / 3, 0.8 / 3, 0.0], abs=1e-15)
    assert max_at_k(t([0.2, 0.9, 0.5, 0.0]), 2) == pytest.approx(0.65, abs=1e-15)
    for n, c, k in [(4, 1, 2), (8, 3, 4), (6, 2, 5), (5, 5, 3), (5, 0, 2)]:
        rewards = [1.0] * c + [0.0] * (n - c)
        # pass@k estimator of Chen et al.; transformed rewards 1 / 1 - C(n-c-1, k-1) / C(n-1, k-1)
        assert max_at_k(t(rewards), k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
        wrong = 1 - math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1) if c < n else None
        expected_r = [1.0] * c + [wrong] * (n - c)
        assert pkpo_rewards(t(rewards), k).tolist() == pytest.approx(expected_r, abs=1e-12)
        # s^(loo-1): a correct sample gets the chance that its k - 1 partners are all wrong, a wrong one 0
        expected_a = [math.comb(n - c, k - 1) / math.comb(n - 1, k - 1)] * c + [0.0] * (n - c)
        assert per_row("pkpo", rewards, passk_k=k).tolist() == pytest.approx(expected_a, abs=1e-12)


def test_pkpo_paper_rewards_sum_to_k_times_the_estimator():
    # The paper's per-sample rewards s_i = (k / n) r_i: sum_i s_i = k * rho (each subset has k members).
    g = t([0.7, -1.2, 2.5, 0.0, 0.4, 1.1])
    for k in range(1, 7):
        s = (k / 6) * pkpo_rewards(g, k)
        assert s.sum().item() == pytest.approx(k * max_at_k(g, k), abs=1e-12)


def test_pkpo_k_one_is_the_plain_reward_with_the_leave_one_out_baseline():
    rewards, ids = [0.3, 1.0, 0.0, 0.6, 0.2, 0.9, 0.5], [0, 0, 0, 0, 1, 1, 1]
    assert pkpo_rewards(t(rewards[:4]), 1).tolist() == rewards[:4]  # r_i = g_i
    assert max_at_k(t(rewards[:4]), 1) == pytest.approx(sum(rewards[:4]) / 4, abs=1e-15)  # the mean reward
    torch.testing.assert_close(
        per_row("pkpo", rewards, ids, passk_k=1), per_row("rloo", rewards, ids), rtol=0, atol=0
    )


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("value", [0.1, 1 / 3, 0.7, 0.0])
def test_pkpo_equal_rewards_give_exactly_zero(value, dtype):
    for k in (1, 2, 4):
        out = ADVANTAGES.get("pkpo")(
            rewards=torch.full((5,), value, dtype=dtype),
            mask=torch.ones(5, 3, dtype=torch.bool),
            group_ids=torch.zeros(5, dtype=torch.long),
            passk_k=k,
        )
        assert out.advantages.dtype == dtype and (out.advantages == 0).all()
        assert out.metrics["advantage/zero_std_groups"] == 1


def test_pkpo_invariants_permutation_groups_padding_and_the_lowest_reward():
    g = torch.Generator().manual_seed(1)
    rewards = torch.rand(12, generator=g, dtype=F64)
    rewards[3] = rewards[5]  # a tie across the group
    ids = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    mask = torch.rand(12, 5, generator=g) > 0.3
    mask[:, 0] = True
    fn = ADVANTAGES.get("pkpo")
    out = fn(rewards=rewards, mask=mask, group_ids=ids, passk_k=3)
    perm = torch.randperm(12, generator=g)
    moved = fn(rewards=rewards[perm], mask=mask[perm], group_ids=ids[perm] * 7 - 3, passk_k=3)
    torch.testing.assert_close(moved.advantages, out.advantages[perm], rtol=0, atol=1e-12)
    assert (out.advantages[~mask] == 0).all()
    per_seq = out.advantages[:, 0]
    for group in (0, 1):
        rows = ids == group
        assert (per_seq[rows] >= 0).all()
        assert per_seq[rows][rewards[rows].argmin()] == 0  # the lowest reward raises no maximum
        assert per_seq[rows][rewards[rows].argmax()] == per_seq[rows].max()  # monotone in the reward
        # each group alone gives the same values
        alone = fn(rewards=rewards[rows], mask=mask[rows], group_ids=ids[rows], passk_k=3)
        torch.testing.assert_close(alone.advantages, out.advantages[rows], rtol=0, atol=0)
    assert per_seq[3] == per_seq[5]  # tied rewards, equal advantages
    maxk = (max_at_k(rewards[:6], 3) + max_at_k(rewards[6:], 3)) / 2
    assert out.metrics["pkpo/max_at_k"] == pytest.approx(maxk, abs=1e-12)


def test_pkpo_k_larger_than_a_group_names_the_setting():
    with pytest.raises(ConfigError, match=r"algorithm\.passk_k \(4\) is larger than a group of 3"):
        per_row("pkpo", [1, 0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 1, 1, 1], passk_k=4)
    with pytest.raises(ConfigError, match="algorithm.passk_k must be an integer >= 1"):
        per_row("pkpo", [1, 0], passk_k=0)
    with pytest.raises(ConfigError, match="1 <= k <= n"):
        max_at_k(t([1.0, 0.0]), 3)


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
