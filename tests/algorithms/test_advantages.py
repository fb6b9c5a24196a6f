import math
import subprocess
import sys

import pytest
import torch

from rlvr.algorithms.advantages import (
    ADVANTAGE_TENSOR_ARGS,
    ADVANTAGES,
    ESTIMATORS_NEEDING_VALUES,
    WHITEN_EPS,
    outcome_to_token_rewards,
    vapo_policy_lambda,
    whiten_advantages,
)
from rlvr.algorithms.config import ALGORITHM_FIELDS, AlgorithmConfig, hyperparameters_for
from rlvr.errors import ConfigError, ShapeError, UnknownNameError
from rlvr.registry import hyperparameters

F64 = torch.float64
GROUP_ESTIMATORS = ["grpo", "dr_grpo", "rloo", "kimi", "maxrl", "passk"]
ALL_ESTIMATORS = [
    *("grpo", "dr_grpo", "rloo", "kimi", "reinforce", "reinforce_pp", "gae", "vapo"),
    *("reinforce_pp_baseline", "maxrl", "gdpo", "passk", "pkpo"),
]


def t(rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


def run(name, rewards, mask, group_ids=None, values=None, **hyper):
    if group_ids is None:
        group_ids = torch.zeros(mask.shape[0], dtype=torch.long)
    if values is None and name in ESTIMATORS_NEEDING_VALUES:
        values = torch.zeros(mask.shape, dtype=F64)
    fn = ADVANTAGES.get(name)
    accepted = hyperparameters(fn, ADVANTAGE_TENSOR_ARGS)
    hyper = {k: v for k, v in hyper.items() if k in accepted}  # e.g. gamma only where it is taken
    return fn(rewards=rewards, mask=mask, group_ids=group_ids, values=values, **hyper)


def full_mask(batch, width):
    return torch.ones(batch, width, dtype=torch.bool)


def scalar_per_row(advantages, mask):
    """The one value a sequence-level estimator broadcast over each row's response tokens."""
    assert mask[:, 0].all()
    per_row = advantages[:, 0]
    assert torch.equal(advantages, torch.where(mask, per_row[:, None], 0.0).to(advantages.dtype))
    return per_row


# --- registry and config --------------------------------------------------------------------------


def test_all_estimators_registered_with_one_signature_and_config_fields():
    # spo takes two more tensors from the loop; its invariants are tested in test_spo.py
    assert ADVANTAGES.names() == sorted([*ALL_ESTIMATORS, "spo"])
    config = AlgorithmConfig()
    for name in ADVANTAGES:
        fn = ADVANTAGES.get(name)
        params = hyperparameters(fn, ADVANTAGE_TENSOR_ARGS)
        assert set(params) <= ALGORITHM_FIELDS, name
        # Same default in the function and in the config: no silent fallback to another value.
        assert params == {k: getattr(config, k) for k in params}, name
        assert hyperparameters_for(fn, config, ADVANTAGE_TENSOR_ARGS) == params
    assert set(hyperparameters(ADVANTAGES.get("vapo"), ADVANTAGE_TENSOR_ARGS)) == {
        "gamma",
        "lam_critic",
        "lam_alpha",
    }
    assert set(hyperparameters(ADVANTAGES.get("grpo"), ADVANTAGE_TENSOR_ARGS)) == {"std_eps", "std_unbiased"}


def test_unknown_name_gets_nearest_hint():
    with pytest.raises(UnknownNameError, match=r"unknown advantage estimator 'grpoo'; did you mean 'grpo'\?"):
        ADVANTAGES.get("grpoo")
    with pytest.raises(
        UnknownNameError,
        match="valid: dr_grpo, gae, gdpo, grpo, kimi, maxrl, passk, pkpo, reinforce, reinforce_pp, reinforce_pp_baseline, rloo, spo, vapo",
    ):
        ADVANTAGES.get("ppo")


# --- group-relative estimators: hand cases --------------------------------------------------------

# Group 0: rewards (1, 0, 0, 1); group 1: rewards (2, 4, 9).
HAND_REWARDS = t([1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 9.0])
HAND_IDS = torch.tensor([0, 0, 0, 0, 1, 1, 1])
HAND_MASK = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]]).bool()


def test_grpo_hand_values_unbiased_and_biased():
    # Group 0: mean 0.5; unbiased var = 4 * 0.25 / 3 = 1/3; biased var = 0.25.
    # Group 1: mean 5; deviations (-3, -1, 4); sum sq = 9 + 1 + 16 = 26; unbiased var 13, biased 26/3.
    out = run("grpo", HAND_REWARDS, HAND_MASK, HAND_IDS, std_eps=0.0, std_unbiased=True)
    s0, s1 = math.sqrt(1 / 3), math.sqrt(13)
    expected = [0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, -3 / s1, -1 / s1, 4 / s1]
    torch.testing.assert_close(scalar_per_row(out.advantages, HAND_MASK), t(expected), rtol=0, atol=1e-12)
    assert out.returns is None

    out = run("grpo", HAND_REWARDS, HAND_MASK, HAND_IDS, std_eps=0.0, std_unbiased=False)
    s1 = math.sqrt(26 / 3)
    expected = [1.0, -1.0, -1.0, 1.0, -3 / s1, -1 / s1, 4 / s1]
    torch.testing.assert_close(scalar_per_row(out.advantages, HAND_MASK), t(expected), rtol=0, atol=1e-12)

    # Epsilon is added to the std: 0.5 / (sqrt(1/3) + 0.1) = 0.738...
    out = run("grpo", HAND_REWARDS, HAND_MASK, HAND_IDS, std_eps=0.1)
    assert out.advantages[0, 0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 0.1), abs=1e-12)
    assert out.metrics["advantage/groups"] == 2 and out.metrics["advantage/zero_std_groups"] == 0


@pytest.mark.parametrize("name", ["dr_grpo", "kimi"])
def test_mean_baseline_hand_values(name):
    # r - mean_g: group 0 mean 0.5, group 1 mean (2 + 4 + 9) / 3 = 5.
    out = run(name, HAND_REWARDS, HAND_MASK, HAND_IDS)
    expected = t([0.5, -0.5, -0.5, 0.5, -3.0, -1.0, 4.0])
    torch.testing.assert_close(scalar_per_row(out.advantages, HAND_MASK), expected, rtol=0, atol=1e-12)


def test_rloo_hand_values():
    # r_i - mean of the others. Group 0: 1 - (0+0+1)/3 = 2/3; 0 - (1+0+1)/3 = -2/3.
    # Group 1: 2 - (4+9)/2 = -4.5; 4 - (2+9)/2 = -1.5; 9 - (2+4)/2 = 6.
    out = run("rloo", HAND_REWARDS, HAND_MASK, HAND_IDS)
    expected = t([2 / 3, -2 / 3, -2 / 3, 2 / 3, -4.5, -1.5, 6.0])
    torch.testing.assert_close(scalar_per_row(out.advantages, HAND_MASK), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_sequence_estimators_sum_token_rewards(name):
    # [B, T] rewards: the outcome is the masked token sum; padding entries are ignored.
    token_rewards = t([[0.5, 0.5, 99.0], [0.0, 0.0, 99.0], [1.0, -1.0, 7.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 1]]).bool()
    by_token = run(name, token_rewards, mask)
    by_sequence = run(name, t([1.0, 0.0, 7.0]), mask)
    torch.testing.assert_close(by_token.advantages, by_sequence.advantages, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
@pytest.mark.parametrize(
    "value,n,dtype",
    [(0.1, 3, F64), (1 / 3, 4, F64), (0.7, 5, F64), (0.1, 3, torch.float32), (0.3, 6, torch.float32)],
)
def test_equal_rewards_give_exactly_zero(name, value, n, dtype):
    # The naive float64 mean is off: (0.1 + 0.1 + 0.1) / 3 - 0.1 = -1.4e-17, which grpo would divide
    # by (0 + 1e-6) into -1.4e-11. The estimators must return exact zeros.
    assert (t([0.1] * 3) - t([0.1] * 3).mean()).abs().max() > 0
    rewards = torch.full((n,), value, dtype=dtype)
    out = run(name, rewards, full_mask(n, 3))
    assert out.advantages.dtype == dtype
    assert (out.advantages == 0).all()
    if name != "dr_grpo":
        assert out.metrics["advantage/zero_std_groups"] == 1


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_group_of_one_gets_zero(name):
    # Groups {0}, {1, 2}, {3}: the singletons have nothing to compare with.
    rewards = t([0.7, 1.0, 0.0, -2.5])
    out = run(name, rewards, full_mask(4, 2), torch.tensor([5, 6, 6, 8]), passk_k=1)
    assert (out.advantages[0] == 0).all() and (out.advantages[3] == 0).all()
    assert (out.advantages[1] > 0).all() and (out.advantages[2] < 0).all()
    for unbiased in (True, False):
        single = run("grpo", t([0.7]), full_mask(1, 2), std_unbiased=unbiased)
        assert (single.advantages == 0).all()


@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_non_contiguous_unsorted_group_ids(name):
    torch.manual_seed(3)
    rewards = torch.rand(6, dtype=F64)
    mask = torch.rand(6, 4) > 0.3
    mask[:, 0] = True
    contiguous = run(name, rewards, mask, torch.tensor([0, 1, 0, 2, 1, 2])).advantages
    scattered = run(name, rewards, mask, torch.tensor([7, -3, 7, 100, -3, 100])).advantages
    torch.testing.assert_close(scattered, contiguous, rtol=0, atol=0)
    # Each group centers on its own mean.
    for ids in ([0, 2], [1, 4], [3, 5]):
        assert scalar_per_row(contiguous[ids], mask[ids]).sum().abs() < 1e-12


# --- invariants shared by all estimators ----------------------------------------------------------


def random_batch(batch=8, width=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(batch, width, generator=gen) > 0.25
    mask[:, 0] = True
    rewards = torch.randn(batch, width, generator=gen, dtype=F64)
    values = torch.randn(batch, width, generator=gen, dtype=F64)
    group_ids = torch.arange(batch) // 4
    return rewards, mask, group_ids, values


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
@pytest.mark.parametrize("per_token", [True, False])
def test_permuting_completions_permutes_advantages(name, per_token):
    rewards, mask, group_ids, values = random_batch()
    if not per_token:
        rewards = rewards[:, 0].clone()
    perm = torch.tensor([5, 1, 7, 0, 2, 6, 3, 4])  # mixes rows within and across groups
    base = run(name, rewards, mask, group_ids, values, gamma=0.9)
    moved = run(name, rewards[perm], mask[perm], group_ids[perm], values[perm], gamma=0.9)
    torch.testing.assert_close(moved.advantages, base.advantages[perm], rtol=0, atol=1e-12)
    if base.returns is not None:
        torch.testing.assert_close(moved.returns, base.returns[perm], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
@pytest.mark.parametrize("per_token", [True, False])
def test_padding_values_and_width_never_matter(name, per_token):
    rewards, mask, group_ids, values = random_batch(seed=1)
    if not per_token:
        rewards = rewards[:, 0].clone()
    base = run(name, rewards, mask, group_ids, values)
    extra = 5
    wide_mask = torch.cat([mask, torch.zeros(8, extra, dtype=torch.bool)], 1)
    garbage = torch.full((8, extra), float("nan"), dtype=F64)
    wide_values = torch.cat([values, garbage], 1)
    wide_values[~wide_mask] = 1e30
    wide_rewards = rewards
    if per_token:
        wide_rewards = torch.cat([rewards, garbage], 1)
        wide_rewards[~wide_mask] = float("inf")
    wide = run(name, wide_rewards, wide_mask, group_ids, wide_values)
    torch.testing.assert_close(wide.advantages[:, :6], base.advantages, rtol=0, atol=1e-12)
    assert (wide.advantages[~wide_mask] == 0).all()
    assert (base.advantages[~mask] == 0).all()
    if base.returns is not None:
        torch.testing.assert_close(wide.returns[:, :6], base.returns, rtol=0, atol=1e-12)
        assert (wide.returns[~wide_mask] == 0).all()
    assert wide.metrics == pytest.approx(base.metrics, abs=1e-12)


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
def test_float32_in_float32_out_and_no_gradient(name):
    rewards, mask, group_ids, values = random_batch(seed=2)
    rewards = rewards.float().requires_grad_()
    out = run(name, rewards, mask, group_ids, values.float())
    assert out.advantages.dtype == torch.float32 and not out.advantages.requires_grad
    ref = run(name, rewards.detach().double(), mask, group_ids, values)
    torch.testing.assert_close(out.advantages, ref.advantages.float(), rtol=1e-6, atol=1e-6)
    assert all(isinstance(v, float) for v in out.metrics.values())


# --- token-level estimators -----------------------------------------------------------------------


def test_outcome_to_token_rewards_uses_last_response_token():
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]]).bool()
    out = outcome_to_token_rewards(t([2.0, 5.0, 9.0]), mask)
    # Row 0 ends at t=1; row 1 (a gap at t=2) ends at t=3; row 2 has no token to carry its reward.
    torch.testing.assert_close(out, t([[0, 2, 0, 0], [0, 0, 0, 5], [0, 0, 0, 0]]), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["reinforce_pp", "gae", "vapo"])
def test_token_estimators_put_outcome_on_last_token(name):
    rewards, mask, group_ids, values = random_batch(seed=4)
    outcomes = rewards[:, 0].clone()
    by_outcome = run(name, outcomes, mask, group_ids, values, gamma=0.95)
    by_token = run(name, outcome_to_token_rewards(outcomes, mask), mask, group_ids, values, gamma=0.95)
    torch.testing.assert_close(by_outcome.advantages, by_token.advantages, rtol=0, atol=0)


def test_gae_hand_case_three_tokens():
    # r = (0, 0, 1), V = (0.5, 0.6, 0.7), gamma = 0.9, lam = 0.8, gamma * lam = 0.72, V after end = 0.
    # delta_2 = 1 + 0.9 * 0 - 0.7 = 0.3;  delta_1 = 0.9 * 0.7 - 0.6 = 0.03;  delta_0 = 0.9 * 0.6 - 0.5 = 0.04
    # A_2 = 0.3;  A_1 = 0.03 + 0.72 * 0.3 = 0.246;  A_0 = 0.04 + 0.72 * 0.246 = 0.21712
    mask = torch.tensor([[1, 1, 1, 0]]).bool()
    values = t([[0.5, 0.6, 0.7, 123.0]])
    out = run("gae", t([1.0]), mask, values=values, gamma=0.9, lam=0.8)
    torch.testing.assert_close(out.advantages, t([[0.21712, 0.246, 0.3, 0.0]]), rtol=0, atol=1e-12)
    # returns = A + V = (0.71712, 0.846, 1.0)
    torch.testing.assert_close(out.returns, t([[0.71712, 0.846, 1.0, 0.0]]), rtol=0, atol=1e-12)


def test_gae_gamma_lam_one_is_monte_carlo_return_minus_value():
    rewards, mask, group_ids, values = random_batch(seed=5)
    out = run("gae", rewards, mask, group_ids, values, gamma=1.0, lam=1.0)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j]:
                mc_return = sum(rewards[i, k].item() for k in range(j, mask.shape[1]) if mask[i, k])
                assert out.advantages[i, j].item() == pytest.approx(
                    mc_return - values[i, j].item(), abs=1e-12
                )
                assert out.returns[i, j].item() == pytest.approx(mc_return, abs=1e-12)


@pytest.mark.parametrize("lam", [0.0, 0.7, 1.0])
def test_gae_skips_masked_tokens_inside_a_response(lam):
    # Observation tokens at t = 2, 3 (masked) do not cut the chain: the result on the response
    # tokens equals GAE on the compacted row of tokens t = 0, 1, 4.
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]]).bool()
    rewards = t([[0.1, 0.2, 50.0, 50.0, 1.0, 50.0]])
    values = t([[0.3, 0.4, -9.0, -9.0, 0.5, -9.0]])
    out = run("gae", rewards, mask, values=values, gamma=0.9, lam=lam)
    compact = run(
        "gae", t([[0.1, 0.2, 1.0]]), full_mask(1, 3), values=t([[0.3, 0.4, 0.5]]), gamma=0.9, lam=lam
    )
    torch.testing.assert_close(out.advantages[mask], compact.advantages[0], rtol=0, atol=1e-12)
    assert (out.advantages[~mask] == 0).all()
    if lam == 0.0:
        # TD error with the next *response* token's value: delta_1 = 0.2 + 0.9 * 0.5 - 0.4 = 0.25
        assert out.advantages[0, 1].item() == pytest.approx(0.25, abs=1e-12)


def test_vapo_policy_lambda_is_length_adaptive_and_clamped():
    # 1 - 1 / (0.05 * l): l = 100 -> 0.8, l = 40 -> 0.5, l = 20 -> 0, l = 10 -> -1 clamped to 0.
    lam = vapo_policy_lambda(torch.tensor([100, 40, 20, 10, 1, 0]), 0.05)
    torch.testing.assert_close(lam, t([0.8, 0.5, 0.0, 0.0, 0.0, 0.0]), rtol=0, atol=1e-12)


def test_vapo_critic_uses_lam_critic_and_policy_uses_adaptive_lambda():
    # lam_alpha = 0.5, gamma = 1. Row 0: l = 4 -> lambda_policy = 1 - 1/2 = 0.5.
    # Row 1: l = 2 -> lambda_policy = 1 - 1/1 = 0.   Row 2: l = 1 -> 1 - 2 = -1, clamped to 0.
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    values = t([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 7.0, 7.0], [0.25, 7.0, 7.0, 7.0]])
    rewards = t([1.0, 1.0, 1.0])
    out = run("vapo", rewards, mask, values=values, gamma=1.0, lam_critic=1.0, lam_alpha=0.5)
    # Row 0 deltas: 0.2-0.1, 0.3-0.2, 0.4-0.3, 1-0.4 = (0.1, 0.1, 0.1, 0.6)
    #   A_3 = 0.6; A_2 = 0.1 + 0.5*0.6 = 0.4; A_1 = 0.1 + 0.5*0.4 = 0.3; A_0 = 0.1 + 0.5*0.3 = 0.25
    # Row 1 (lambda 0): A = delta = (0.6 - 0.5, 1 - 0.6) = (0.1, 0.4).  Row 2: A = 1 - 0.25 = 0.75.
    expected = t([[0.25, 0.3, 0.4, 0.6], [0.1, 0.4, 0, 0], [0.75, 0, 0, 0]])
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=1e-12)
    # lam_critic = 1, gamma = 1: the value targets are the Monte-Carlo returns, 1 everywhere.
    torch.testing.assert_close(out.returns, mask.to(F64), rtol=0, atol=1e-12)
    assert out.metrics["vapo/lam_policy_mean"] == pytest.approx((0.5 + 0 + 0) / 3)

    # lam_critic = 0.5 changes only the value targets: row 0 returns = A(0.5) + V
    # = (0.25 + 0.1, 0.3 + 0.2, 0.4 + 0.3, 0.6 + 0.4) = (0.35, 0.5, 0.7, 1.0).
    half = run("vapo", rewards, mask, values=values, gamma=1.0, lam_critic=0.5, lam_alpha=0.5)
    torch.testing.assert_close(half.advantages, out.advantages, rtol=0, atol=0)
    torch.testing.assert_close(half.returns[0], t([0.35, 0.5, 0.7, 1.0]), rtol=0, atol=1e-12)
    # Both agree with plain gae at the corresponding lambdas.
    gae_critic = run("gae", rewards, mask, values=values, gamma=1.0, lam=0.5)
    torch.testing.assert_close(half.returns, gae_critic.returns, rtol=0, atol=1e-12)
    gae_policy = run("gae", rewards[:1], mask[:1], values=values[:1], gamma=1.0, lam=0.5)
    torch.testing.assert_close(out.advantages[:1], gae_policy.advantages, rtol=0, atol=1e-12)


def test_reinforce_pp_discounts_and_normalizes_over_the_batch():
    # gamma = 0.5. Row 0 token rewards (0, 0, 1) -> G = (0.25, 0.5, 1); row 1 (-1) -> G = (-1).
    # All 4 tokens: mean = 0.75 / 4 = 0.1875; deviations (0.0625, 0.3125, 0.8125, -1.1875);
    # biased var = (0.00390625 + 0.09765625 + 0.66015625 + 1.41015625) / 4 = 0.54296875.
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    rewards = t([[0.0, 0.0, 1.0], [-1.0, 8.0, 8.0]])
    out = run("reinforce_pp", rewards, mask, torch.tensor([0, 1]), gamma=0.5)
    std = math.sqrt(0.54296875) + WHITEN_EPS
    expected = t([[0.0625 / std, 0.3125 / std, 0.8125 / std], [-1.1875 / std, 0, 0]])
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=1e-12)
    assert out.metrics["return/mean"] == pytest.approx(0.1875)
    assert out.metrics["advantage/mean"] == pytest.approx(0.0, abs=1e-12)
    assert out.metrics["advantage/std"] == pytest.approx(1.0, abs=1e-7)
    # The normalization is over the batch: row 0 alone normalizes differently.
    alone = run("reinforce_pp", rewards[:1], mask[:1], torch.tensor([0]), gamma=0.5)
    assert not torch.allclose(alone.advantages[0], out.advantages[0])


def test_reinforce_pp_gamma_one_sums_kl_folded_rewards():
    # Token rewards with -beta * KL folded in: (-0.1, -0.2, 1 - 0.1) -> G = (0.6, 0.7, 0.9),
    # i.e. r - beta * sum_{s >= t} KL_s. Mean 2.2 / 3; whitened values are checked against G.
    rewards = t([[-0.1, -0.2, 0.9]])
    out = run("reinforce_pp", rewards, full_mask(1, 3))
    g = t([0.6, 0.7, 0.9])
    expected = (g - g.mean()) / (g.std(unbiased=False) + WHITEN_EPS)
    torch.testing.assert_close(out.advantages[0], expected, rtol=0, atol=1e-12)


def test_whitening_ignores_padding_and_weighs_tokens():
    # Tokens (1, 1 | 0): mean 2/3, biased std sqrt(2/9): (0.7071, 0.7071 | -1.4142), 0 on padding.
    mask = torch.tensor([[1, 1], [1, 0]]).bool()
    out = whiten_advantages(t([[1.0, 1.0], [0.0, 1e9]]), mask)
    s = math.sqrt(2 / 9) + WHITEN_EPS
    torch.testing.assert_close(out, t([[(1 / 3) / s, (1 / 3) / s], [(-2 / 3) / s, 0.0]]), rtol=0, atol=1e-12)
    # Token weighting: advantage 1 on a 3-token row and 0 on a 1-token row -> mean 3/4, not 1/2.
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]]).bool()
    out = whiten_advantages(t([[1.0, 1.0, 1.0], [0.0, -5.0, -5.0]]), mask)
    s = math.sqrt(3 / 16) + WHITEN_EPS  # biased var = (3 * 1/16 + 9/16) / 4 = 3/16
    torch.testing.assert_close(out[1, 0].item(), -0.75 / s, rtol=0, atol=1e-12)
    assert (out[~mask] == 0).all()
    # Constant advantages whiten to zeros, not NaN.
    assert (whiten_advantages(torch.full((2, 3), 0.3, dtype=F64), mask) == 0).all()
    assert whiten_advantages(t([[1.0, 2.0]]).float(), full_mask(1, 2)).dtype == torch.float32


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_ESTIMATORS)
def test_bad_input_raises_clear_errors(name):
    mask = full_mask(3, 4)
    rewards = t([1.0, 0.0, 1.0])
    ids = torch.tensor([0, 0, 1])
    values = torch.zeros(3, 4, dtype=F64)
    with pytest.raises(ShapeError, match="mask must be a bool or floating tensor"):
        run(name, rewards, mask.long(), ids, values)
    with pytest.raises(ShapeError, match="mask must hold only 0 and 1"):
        run(name, rewards, mask.double() * 0.5, ids, values)
    with pytest.raises(ShapeError, match=r"rewards has shape \(4,\) but mask has shape \(3, 4\)"):
        run(name, t([1.0, 0.0, 1.0, 0.0]), mask, ids, values)
    with pytest.raises(ShapeError, match=r"rewards has shape \(3, 5\)"):
        run(name, torch.zeros(3, 5, dtype=F64), mask, ids, values)
    with pytest.raises(ShapeError, match="rewards must be a floating tensor"):
        run(name, torch.tensor([1, 0, 1]), mask, ids, values)
    with pytest.raises(ShapeError, match="group_ids has 2 entries but the batch has 3"):
        run(name, rewards, mask, ids[:2], values)
    with pytest.raises(ShapeError, match="group_ids must be an integer tensor"):
        run(name, rewards, mask, ids.double(), values)
    with pytest.raises(ShapeError, match=r"values has shape \(3, 5\) but mask has shape \(3, 4\)"):
        run(name, rewards, mask, ids, torch.zeros(3, 5, dtype=F64))


@pytest.mark.parametrize("name", ["gae", "vapo"])
def test_critic_estimators_require_values(name):
    fn = ADVANTAGES.get(name)
    with pytest.raises(ConfigError, match=f"'{name}' needs critic values"):
        fn(rewards=t([1.0]), mask=full_mask(1, 2), group_ids=torch.tensor([0]), values=None)


@pytest.mark.parametrize(
    "name,hyper,field",
    [
        ("grpo", {"std_eps": -1.0}, "std_eps"),
        ("gae", {"lam": 1.5}, "lam"),
        ("gae", {"gamma": -0.1}, "gamma"),
        ("reinforce_pp", {"gamma": 2.0}, "gamma"),
        ("vapo", {"lam_critic": 1.2}, "lam_critic"),
        ("vapo", {"lam_alpha": 0.0}, "lam_alpha"),
    ],
)
def test_bad_hyperparameters_name_the_field(name, hyper, field):
    with pytest.raises(ConfigError, match=f"algorithm.{field} must be"):
        run(name, t([1.0]), full_mask(1, 2), **hyper)


# --- distributed: 2 ranks equal 1 rank ------------------------------------------------------------

WORKER = """
import sys, torch, torch.distributed as dist
from rlvr.algorithms.advantages import ADVANTAGES, whiten_advantages
rank, store, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
data = torch.load(out_dir + "/batch.pt")
rows = slice(4 * rank, 4 * rank + 4)  # whole groups stay on one rank
part = {k: v[rows] for k, v in data.items()}
result = {}
for name in ("reinforce_pp", "grpo", "vapo", "gdpo", "reinforce_pp_baseline"):
    hyper = {"gamma": 0.9} if name in ("reinforce_pp", "vapo") else {}
    out = ADVANTAGES.get(name)(**part, **hyper)
    result[name] = (out.advantages, out.metrics)
result["whiten"] = whiten_advantages(part["rewards"], part["mask"])
torch.save(result, out_dir + f"/rank{rank}.pt")
dist.barrier()  # both ranks done before either leaves the group
dist.destroy_process_group()
"""


def test_two_ranks_equal_one_rank(tmp_path):
    rewards, mask, group_ids, values = random_batch(seed=6)
    batch = {"rewards": rewards, "mask": mask, "group_ids": group_ids, "values": values}
    torch.save(batch, tmp_path / "batch.pt")
    store = str(tmp_path / "store")
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(r), store, str(tmp_path)], stderr=subprocess.PIPE)
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in ("reinforce_pp", "grpo", "vapo", "gdpo", "reinforce_pp_baseline"):
        hyper = {"gamma": 0.9} if name in ("reinforce_pp", "vapo") else {}
        whole = ADVANTAGES.get(name)(**batch, **hyper)
        joined = torch.cat([parts[0][name][0], parts[1][name][0]])
        torch.testing.assert_close(joined, whole.advantages, rtol=0, atol=1e-12)
        for r in range(2):
            assert parts[r][name][1] == pytest.approx(whole.metrics, abs=1e-12), name
    whole = whiten_advantages(rewards, mask)
    torch.testing.assert_close(torch.cat([parts[0]["whiten"], parts[1]["whiten"]]), whole, rtol=0, atol=1e-12)


def test_reinforce_is_the_outcome_without_baseline():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    rewards = torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)
    out = ADVANTAGES.get("reinforce")(rewards=rewards, mask=mask, group_ids=torch.tensor([0, 0, 1]))
    # A_i,t = r_i on response tokens, 0 on padding.
    expected = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.5]], dtype=torch.float64)
    assert torch.equal(out.advantages, expected)
    assert out.returns is None
