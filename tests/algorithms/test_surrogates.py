"""DPPO (Binary-TV, Binary-KL), SAPO and GMPO: hand values, limits, masks, micro-batches, gradients."""

import math

import pytest
import torch
from loss_cases import (
    assert_micro_batches_add_up,
    assert_permuting_sequences_permutes_gradients,
    random_batch,
    run,
    t,
)

from rlvr.algorithms.aggregation import AGGREGATIONS
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.losses import POLICY_LOSSES
from rlvr.algorithms.validation import validate_algorithm_config
from rlvr.errors import ConfigError

NEW_LOSSES = ["dppo_tv", "dppo_kl", "sapo", "gmpo"]
ONE = torch.ones(1, 1, dtype=torch.bool)


def token(name, logprob, old_logprob, adv, **kw):
    return run(name, t([[logprob]]), t([[old_logprob]]), t([[adv]]), ONE, **kw)


# --- the limit: at ratio 1 every new loss has the policy gradient of ppo_clip -------------------


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
@pytest.mark.parametrize("name", NEW_LOSSES)
def test_on_policy_gradient_is_the_plain_policy_gradient(name, mode):
    _, old, adv, mask = random_batch(0)
    kw = dict(aggregation=mode, norm_length=5)
    _, g_ref = run("ppo_clip", old, old, adv, mask, **kw)
    out, g = run(name, old, old, adv, mask, **kw)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    if name == "gmpo":  # its value is -A at ratio 1 too (the geometric mean of ones)
        ref, _ = run("ppo_clip", old, old, adv, mask, **kw)
        assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)


# --- DPPO -----------------------------------------------------------------------------------------


def test_dppo_tv_worked_example():
    out, g = token("dppo_tv", math.log(0.6), math.log(0.5), 1.0)
    assert out.loss.item() == pytest.approx(-1.2 * math.log(0.6), abs=1e-12)
    assert g.item() == pytest.approx(-1.2, abs=1e-12)
    assert out.metrics["policy/clipfrac_high"].item() == 0.0
    out, g = token("dppo_tv", math.log(0.75), math.log(0.5), 1.0)  # p - mu = 0.25 > 0.2
    assert g.item() == 0.0 and out.metrics["policy/clipfrac_high"].item() == 1.0
    _, g = token("dppo_tv", math.log(0.75), math.log(0.5), -1.0)  # A < 0, p moved up: never masked
    assert g.item() == pytest.approx(1.5, abs=1e-12)


@pytest.mark.parametrize("adv,sign", [(1.0, 1.0), (-1.0, -1.0)])
def test_dppo_tv_switches_exactly_at_delta_in_the_advantage_direction(adv, sign):
    mu, d, eps = 0.4, 1e-9, dict(dppo_delta_low=0.1, dppo_delta_high=0.15)
    delta = 0.15 if adv > 0 else 0.1
    _, g_in = token("dppo_tv", math.log(mu + sign * (delta - d)), math.log(mu), adv, **eps)
    _, g_out = token("dppo_tv", math.log(mu + sign * (delta + d)), math.log(mu), adv, **eps)
    assert g_in.item() != 0.0 and g_out.item() == 0.0


def test_dppo_tv_masks_on_probability_not_ratio():
    # PPO clips a rare token whose ratio doubles (0.001 -> 0.002); DPPO-TV lets it learn, and it
    # masks a likely token that moves 0.5 -> 0.8 although its ratio 1.6 is PPO-like.
    _, g_rare = token("dppo_tv", math.log(0.002), math.log(0.001), 1.0)
    _, g_ppo = token("ppo_clip", math.log(0.002), math.log(0.001), 1.0)
    assert g_rare.item() == pytest.approx(-2.0) and g_ppo.item() == 0.0
    _, g_likely = token("dppo_tv", math.log(0.8), math.log(0.5), 1.0)
    assert g_likely.item() == 0.0


def test_dppo_kl_worked_example_and_direction():
    kw = dict(dppo_delta_low=0.05, dppo_delta_high=0.05)
    # D(0.5 || 0.7) = 0.5 ln(5/7) + 0.5 ln(5/3) = 0.087177 > 0.05: masked for A > 0.
    _, g = token("dppo_kl", math.log(0.7), math.log(0.5), 1.0, **kw)
    assert g.item() == 0.0
    # D(0.5 || 0.6) = 0.5 ln(5/6) + 0.5 ln(5/4) = 0.020136: inside.
    _, g = token("dppo_kl", math.log(0.6), math.log(0.5), 1.0, **kw)
    assert g.item() == pytest.approx(-1.2, abs=1e-12)
    _, g = token("dppo_kl", math.log(0.7), math.log(0.5), -1.0, **kw)  # moving up is fine for A < 0
    assert g.item() == pytest.approx(1.4, abs=1e-12)
    _, g = token("dppo_kl", math.log(0.3), math.log(0.5), -1.0, **kw)  # symmetric: D = 0.087177
    assert g.item() == 0.0
    from rlvr.algorithms.surrogates import _binary_kl

    d = _binary_kl(t([math.log(0.7)]), t([math.log(0.5)])).item()
    assert d == pytest.approx(0.5 * math.log(5 / 7) + 0.5 * math.log(5 / 3), abs=1e-14)
    assert _binary_kl(t([0.0]), t([0.0])).item() == 0.0  # mu = p = 1: no nan


def test_dppo_weight_is_truncated_at_the_cap():
    _, g = token("dppo_tv", math.log(0.03), math.log(0.001), 2.0)  # r = 30, p - mu = 0.029 inside
    assert g.item() == pytest.approx(-20.0 * 2.0, abs=1e-9)
    out, g = token("dppo_tv", math.log(0.03), math.log(0.001), 2.0, dppo_ratio_cap=100.0)
    assert g.item() == pytest.approx(-30.0 * 2.0, rel=1e-12)
    assert out.metrics["policy/ratio_capped"].item() == 0.0


# --- SAPO -----------------------------------------------------------------------------------------


def test_sapo_worked_example_and_temperatures():
    out, g = token("sapo", math.log(2.0), 0.0, 1.0, sapo_tau_pos=1.0, sapo_tau_neg=3.0)
    s = 1 / (1 + math.exp(-1.0))
    assert out.loss.item() == pytest.approx(-4 * s, abs=1e-12)
    assert g.item() == pytest.approx(-4 * s * (1 - s) * 2.0, abs=1e-12)
    # A < 0 uses tau_neg = 3: f = (4/3) sigmoid(3 (r - 1)).
    out, _ = token("sapo", math.log(2.0), 0.0, -1.0, sapo_tau_pos=1.0, sapo_tau_neg=3.0)
    assert out.loss.item() == pytest.approx(4 / 3 / (1 + math.exp(-3.0)), abs=1e-12)
    # On-policy: value -2A/tau, slope metric 1.
    out, _ = token("sapo", -1.0, -1.0, 0.5, sapo_tau_pos=2.0)
    assert out.loss.item() == pytest.approx(-2 * 0.5 / 2.0, abs=1e-12)
    assert out.metrics["policy/sapo_gate_slope"].item() == pytest.approx(1.0)


def test_sapo_gradient_decays_smoothly_away_from_ratio_one():
    grads = [abs(token("sapo", math.log(r), 0.0, 1.0)[1].item() / r) for r in (1.0, 1.5, 3.0, 8.0)]
    assert grads[0] == pytest.approx(1.0) and grads == sorted(grads, reverse=True) and grads[-1] > 0


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_sapo_gradcheck(mode):
    lp, old, adv, mask = random_batch(3, spread=2.0)

    def f(x):
        return POLICY_LOSSES.get("sapo")(
            logprobs=x, old_logprobs=old, advantages=adv, mask=mask, aggregation=mode, sapo_tau_neg=2.0
        ).loss

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),))


# --- GMPO -----------------------------------------------------------------------------------------


def test_gmpo_worked_example():
    out, g = run(
        "gmpo", t([[0.6, -0.2]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool)
    )
    assert out.loss.item() == pytest.approx(-math.exp(0.1), abs=1e-12)
    assert g[0].tolist() == pytest.approx([0.0, -math.exp(0.1) / 2], abs=1e-12)
    assert out.metrics["policy/clipfrac_high"].item() == 0.5
    # A < 0: the low side is clipped at -0.4 and the high side is free.
    out, g = run(
        "gmpo", t([[-0.6, 0.2]]), t([[0.0, 0.0]]), t([[-1.0, -1.0]]), torch.ones(1, 2, dtype=torch.bool)
    )
    assert out.loss.item() == pytest.approx(math.exp(-0.1), abs=1e-12)
    assert g[0].tolist() == pytest.approx([0.0, math.exp(-0.1) / 2], abs=1e-12)


def test_gmpo_is_the_geometric_not_arithmetic_mean_and_ignores_token_order():
    lp, old = t([[0.3, -0.3, 0.1]]), t([[0.0, 0.0, 0.0]])
    adv, mask = t([[2.0, 2.0, 2.0]]), torch.ones(1, 3, dtype=torch.bool)
    out, _ = run("gmpo", lp, old, adv, mask, gmpo_eps_low=1.0, gmpo_eps_high=1.0)
    assert out.loss.item() == pytest.approx(-2.0 * math.exp(0.1 / 3), abs=1e-12)
    flipped, _ = run("gmpo", lp.flip(1), old, adv, mask, gmpo_eps_low=1.0, gmpo_eps_high=1.0)
    assert flipped.loss.item() == pytest.approx(out.loss.item(), abs=1e-15)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_gmpo_gradcheck_inside_the_clip_range(mode):
    lp, old, adv, mask = random_batch(4, spread=0.4)  # |log-ratio| <= 0.2 < 0.4: no kink

    def f(x):
        return POLICY_LOSSES.get("gmpo")(
            logprobs=x, old_logprobs=old, advantages=adv, mask=mask, aggregation=mode
        ).loss

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),))


# --- shared invariants ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
@pytest.mark.parametrize("name", NEW_LOSSES)
def test_micro_batches_with_global_counts_add_up_to_the_full_batch(name, mode):
    assert_micro_batches_add_up(name, random_batch(2, b=6, spread=1.5), mode)


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_permuting_sequences_permutes_gradients(name):
    batch = random_batch(5, spread=1.5)
    assert_permuting_sequences_permutes_gradients(name, batch, aggregation="seq-mean-token-mean")


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("sapo_tau_pos", 0.0, "algorithm.sapo_tau_pos must be > 0"),
        ("sapo_tau_neg", -1.0, "algorithm.sapo_tau_neg must be > 0"),
        ("dppo_delta_low", -0.1, "algorithm.dppo_delta_low must be >= 0"),
        ("dppo_ratio_cap", 0.5, "algorithm.dppo_ratio_cap must be >= 1"),
        ("gmpo_eps_high", -0.4, "algorithm.gmpo_eps_high must be >= 0"),
    ],
)
def test_config_range_errors_name_the_key(field, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_algorithm_config(AlgorithmConfig(**{field: value}))


def test_functions_reject_bad_hyperparameters_by_name():
    with pytest.raises(ConfigError, match="sapo_tau_pos must be > 0"):
        token("sapo", 0.0, 0.0, 1.0, sapo_tau_pos=0.0)
    with pytest.raises(ConfigError, match="dppo_ratio_cap must be >= 1"):
        token("dppo_kl", 0.0, 0.0, 1.0, dppo_ratio_cap=0.0)
