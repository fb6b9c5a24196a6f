import pytest
import torch

from rlvr.algorithms.advantages import grpo
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.filters import (
    FILTERS,
    apply_filters,
    cppo,
    cppo_keep_count,
    dynamic_sampling,
    filter_stages,
    raft_pp,
    reject,
    sequence_advantages,
)
from rlvr.errors import ConfigError, ShapeError

F64 = torch.float64


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


def ids(values):
    return torch.tensor(values, dtype=torch.long)


def b(values):
    return torch.tensor(values, dtype=torch.bool)


# --- dynamic sampling ---------------------------------------------------------------------------


def test_dynamic_sampling_drops_groups_of_equal_rewards():
    # groups: a = (1, 0) mixed, b = (1, 1) all equal, c = (0.5, 0.5) all equal
    out = dynamic_sampling(rewards=t([1, 0, 1, 1, 0.5, 0.5]), group_ids=ids([0, 0, 1, 1, 2, 2]))
    assert out.keep.tolist() == [True, True, False, False, False, False]
    m = out.metrics
    assert (m["filter/dynamic_sampling/groups"], m["filter/dynamic_sampling/kept_groups"]) == (3, 1)
    assert m["filter/dynamic_sampling/dropped_groups"] == 2
    assert (m["filter/dynamic_sampling/samples"], m["filter/dynamic_sampling/kept_samples"]) == (6, 2)


def test_dynamic_sampling_equality_is_exact_no_tolerance():
    # 0.1 + 0.2 = 0.30000000000000004 != 0.3: the rewards differ, the group is kept.
    # Two rewards computed the same way are bitwise equal: that group is dropped.
    shaped = 0.1 + 0.2
    out = dynamic_sampling(rewards=t([shaped, 0.3, shaped, shaped]), group_ids=ids([0, 0, 1, 1]))
    assert out.keep.tolist() == [True, True, False, False]


def test_dynamic_sampling_keeps_exactly_the_groups_with_nonzero_grpo_advantages():
    torch.manual_seed(3)
    # non-integer rewards 0.1 / 0.8 in groups of 2: about half the groups are all equal
    rewards = torch.randint(0, 2, (40,)).to(F64) * 0.7 + 0.1
    group_ids = torch.arange(20).repeat_interleave(2)
    keep = dynamic_sampling(rewards=rewards, group_ids=group_ids).keep
    advantages = grpo(
        rewards=rewards, mask=torch.ones(40, 3, dtype=torch.bool), group_ids=group_ids
    ).advantages
    signal = (advantages != 0).any(dim=1).view(20, 2).any(dim=1).repeat_interleave(2)
    assert 0 < keep.sum() < 40
    assert torch.equal(keep, signal)


def test_dynamic_sampling_correct_criterion_is_dapo_eq_11():
    # group a: rewards differ (length penalty) but both correct -> dropped by eq. 11, kept by 'reward'
    # group b: one right one wrong -> kept; group c: both wrong -> dropped
    rewards = t([1.0, 0.7, 1.0, 0.0, 0.0, -0.2])
    correct = b([True, True, True, False, False, False])
    group_ids = ids([0, 0, 1, 1, 2, 2])
    out = dynamic_sampling(
        rewards=rewards, group_ids=group_ids, correct=correct, dynamic_sampling_criterion="correct"
    )
    assert out.keep.tolist() == [False, False, True, True, False, False]
    assert out.metrics["filter/dynamic_sampling/dropped_all_correct"] == 1
    assert out.metrics["filter/dynamic_sampling/dropped_all_wrong"] == 1
    by_reward = dynamic_sampling(rewards=rewards, group_ids=group_ids)
    assert by_reward.keep.tolist() == [True, True, True, True, True, True]


def test_dynamic_sampling_drops_a_group_of_one_and_accepts_any_group_ids():
    out = dynamic_sampling(rewards=t([1, 0, 0.5]), group_ids=ids([-7, -7, 100]))
    assert out.keep.tolist() == [True, True, False]


def test_dynamic_sampling_is_permutation_equivariant():
    torch.manual_seed(0)
    rewards = torch.randint(0, 2, (24,)).to(F64)
    group_ids = torch.arange(6).repeat_interleave(4)
    perm = torch.randperm(24)
    keep = dynamic_sampling(rewards=rewards, group_ids=group_ids).keep
    keep_perm = dynamic_sampling(rewards=rewards[perm], group_ids=group_ids[perm]).keep
    assert torch.equal(keep[perm], keep_perm)


def test_dynamic_sampling_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="needs correct"):
        dynamic_sampling(rewards=t([1, 0]), group_ids=ids([0, 0]), dynamic_sampling_criterion="correct")
    with pytest.raises(ConfigError, match="dynamic_sampling_criterion"):
        dynamic_sampling(rewards=t([1, 0]), group_ids=ids([0, 0]), dynamic_sampling_criterion="acc")


# --- Reinforce-Rej and RAFT++ ---------------------------------------------------------------------


def test_reject_drops_all_correct_and_all_wrong_groups():
    # a = (right, wrong) kept; b = (right, right) dropped; c = (wrong,) dropped
    out = reject(rewards=t([1, 0, 1, 1, 0]), group_ids=ids([0, 0, 1, 1, 2]), correct=b([1, 0, 1, 1, 0]))
    assert out.keep.tolist() == [True, True, False, False, False]
    m = out.metrics
    assert (m["filter/reject/groups"], m["filter/reject/kept_groups"], m["filter/reject/dropped_groups"]) == (
        3,
        1,
        2,
    )
    assert (m["filter/reject/dropped_all_correct"], m["filter/reject/dropped_all_wrong"]) == (1, 1)
    with pytest.raises(ConfigError, match="group filter 'reject' needs correct"):
        reject(rewards=t([1, 0]), group_ids=ids([0, 0]))


def test_raft_pp_keeps_only_correct_completions():
    # a = (right, wrong), b = (wrong, wrong): only the first completion survives; 1 of 2 groups has one
    out = raft_pp(rewards=t([1, 0, 0, 0]), group_ids=ids([0, 0, 1, 1]), correct=b([1, 0, 0, 0]))
    assert out.keep.tolist() == [True, False, False, False]
    assert out.metrics["filter/raft_pp/kept_groups"] == 1
    assert out.metrics["filter/raft_pp/kept_samples"] == 1
    with pytest.raises(ConfigError, match="group filter 'raft_pp' needs correct"):
        raft_pp(rewards=t([1, 0]), group_ids=ids([0, 0]))


# --- CPPO ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group_size,rate,k",
    [
        (16, 0.0, 16),
        (16, 0.5, 8),
        (16, 0.75, 4),
        (16, 0.875, 2),  # the CPPO GSM8K settings: k = 16, 8, 4, 2, 1
        (16, 0.9375, 1),
        (20, 0.9, 2),  # 20 * (1 - 0.9) = 1.9999999999999996 in floats; floor must give 2
        (3, 0.5, 1),  # floor(1.5) = 1
        (1, 0.5, 1),  # max(1, floor(0.5)) = 1: a group always keeps one
    ],
)
def test_cppo_keep_count(group_size, rate, k):
    assert cppo_keep_count(group_size, rate) == k


def test_cppo_keeps_largest_absolute_advantages_with_ties_in_batch_order():
    # P = 0.5, G = 4 -> k = 2; |A| = (0.5, 1.5, 0.5, 0.1): keep 1 (1.5) and 0 (0.5, before its tie 2)
    a = t([0.5, -1.5, 0.5, 0.1])
    out = cppo(rewards=a, group_ids=ids([0, 0, 0, 0]), advantages=a, cppo_pruning_rate=0.5)
    assert out.keep.tolist() == [True, True, False, False]
    assert out.metrics["filter/cppo/kept_samples"] == 2


def test_cppo_works_per_group_with_interleaved_ids():
    # group 5 at positions 0, 2, 4, 6 with |A| (1, 1, 1, 1): all tied -> first two in batch order (0, 2)
    # group 9 at positions 1, 3, 5, 7 with |A| (0, 3, 2, 0.5) -> positions 3 and 5
    a = t([1, 0, -1, 3, 1, -2, -1, 0.5])
    out = cppo(rewards=a, group_ids=ids([5, 9, 5, 9, 5, 9, 5, 9]), advantages=a, cppo_pruning_rate=0.5)
    assert out.keep.tolist() == [True, False, True, True, False, True, False, False]
    assert (out.metrics["filter/cppo/groups"], out.metrics["filter/cppo/kept_groups"]) == (2, 2)


def test_cppo_is_deterministic_and_needs_advantages():
    torch.manual_seed(1)
    a = torch.randn(64, dtype=F64).round(decimals=1)  # many ties
    g = torch.arange(4).repeat(16)
    first = cppo(rewards=a, group_ids=g, advantages=a, cppo_pruning_rate=0.75).keep
    assert all(
        torch.equal(first, cppo(rewards=a, group_ids=g, advantages=a, cppo_pruning_rate=0.75).keep)
        for _ in range(3)
    )
    assert first.view(16, 4).sum(0).tolist() == [4, 4, 4, 4]  # k = floor(16 * 0.25) per group
    with pytest.raises(ConfigError, match="group filter 'cppo' needs advantages"):
        cppo(rewards=a, group_ids=g)
    with pytest.raises(ConfigError, match=r"cppo_pruning_rate must be in \[0, 1\)"):
        cppo(rewards=a, group_ids=g, advantages=a, cppo_pruning_rate=1.0)


# --- input errors --------------------------------------------------------------------------------------


def test_bad_inputs_name_the_argument():
    with pytest.raises(ShapeError, match="rewards must be 1-D"):
        dynamic_sampling(rewards=torch.zeros(2, 2, dtype=F64), group_ids=ids([0, 0]))
    with pytest.raises(ShapeError, match="rewards must be a floating tensor"):
        dynamic_sampling(rewards=torch.tensor([1, 0]), group_ids=ids([0, 0]))
    with pytest.raises(ShapeError, match="group_ids has 3 entries"):
        dynamic_sampling(rewards=t([1, 0]), group_ids=ids([0, 0, 1]))
    with pytest.raises(ShapeError, match="correct must be a bool tensor"):
        raft_pp(rewards=t([1, 0]), group_ids=ids([0, 0]), correct=t([1, 0]))
    with pytest.raises(ShapeError, match="advantages has 3 entries"):
        cppo(rewards=t([1, 0]), group_ids=ids([0, 0]), advantages=t([1, 0, 0]))


def test_empty_batch_keeps_nothing_and_counts_zero():
    out = dynamic_sampling(rewards=t([]), group_ids=ids([]))
    assert out.keep.shape == (0,)
    assert out.metrics["filter/dynamic_sampling/groups"] == 0


# --- the loop helpers ----------------------------------------------------------------------------------


def test_apply_filters_runs_in_order_on_the_survivors():
    # dynamic_sampling drops group 1 (all equal); cppo then sees group 0 with G = 4 survivors,
    # P = 0.5 -> k = 2 of |A| (0.1, 0.9, 0.5, 0.2): positions 1 and 2.
    rewards = t([0, 1, 1, 0, 1, 1])
    advantages = t([0.1, -0.9, 0.5, 0.2, 0, 0])
    config = AlgorithmConfig(filters=("dynamic_sampling", "cppo"), cppo_pruning_rate=0.5)
    out = apply_filters(
        config.filters,
        rewards=rewards,
        group_ids=ids([0, 0, 0, 0, 1, 1]),
        advantages=advantages,
        config=config,
    )
    assert out.keep.tolist() == [False, True, True, False, False, False]
    assert out.metrics["filter/dynamic_sampling/kept_samples"] == 4
    assert out.metrics["filter/cppo/samples"] == 4
    assert out.metrics["filter/kept_samples"] == 2


def test_apply_filters_passes_config_hyperparameters_and_keeps_all_without_filters():
    rewards, group_ids = t([1, 0.5, 1, 1]), ids([0, 0, 1, 1])
    correct = b([1, 1, 1, 0])
    by_correct = AlgorithmConfig(dynamic_sampling_criterion="correct")
    out = apply_filters(
        ["dynamic_sampling"], rewards=rewards, group_ids=group_ids, correct=correct, config=by_correct
    )
    assert out.keep.tolist() == [False, False, True, True]  # group 0 all correct despite unequal rewards
    none = apply_filters([], rewards=rewards, group_ids=group_ids, config=AlgorithmConfig())
    assert none.keep.tolist() == [True] * 4
    assert none.metrics == {"filter/kept_samples": 4.0}


def test_sequence_advantages_ignores_padding():
    adv = t([[2.0, 2.0, 99.0], [-1.0, 99.0, 99.0], [99.0, 99.0, 99.0]])
    mask = b([[1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert sequence_advantages(adv, mask).tolist() == [2.0, -1.0, 0.0]


def test_filter_stages_put_advantage_filters_after_the_estimator():
    assert filter_stages(("reject", "cppo", "raft_pp")) == (("reject", "raft_pp"), ("cppo",))
    assert set(FILTERS.names()) == {"dynamic_sampling", "cppo", "raft_pp", "reject"}
