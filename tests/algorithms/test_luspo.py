"""LUSPO (arXiv 2602.05261): hand values, eq. 7 and 8, the clip, limits, invariants."""

import math

import pytest
import torch
from loss_cases import (
    F64,
    assert_micro_batches_add_up,
    assert_padding_changes_nothing,
    assert_permuting_sequences_permutes_gradients,
    random_batch,
    run,
    t,
)

from rlvr.algorithms.aggregation import AGGREGATIONS
from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.losses import POLICY_LOSS_TENSOR_ARGS, POLICY_LOSSES
from rlvr.algorithms.validation import validate_algorithm_config
from rlvr.errors import ConfigError

NEAR = 0.004
"""Log-ratio spread of the random batches: inside LUSPO's clip range."""


# --- registry and config --------------------------------------------------------------------------


def test_selected_by_name_with_the_papers_defaults_from_the_config():
    cfg = AlgorithmConfig(policy_loss="luspo")
    validate_algorithm_config(cfg)
    hp = hyperparameters_for(POLICY_LOSSES.get(cfg.policy_loss), cfg, POLICY_LOSS_TENSOR_ARGS)
    assert hp["luspo_eps_low"] == 2e-3 and hp["luspo_eps_high"] == 2.5e-3  # sec. 5.1


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("luspo_eps_low", -1e-3, r"algorithm.luspo_eps_low must be in \[0.0, 1.0\]"),
        ("luspo_eps_low", 1.5, r"algorithm.luspo_eps_low must be in \[0.0, 1.0\]"),
        ("luspo_eps_high", -1e-3, "algorithm.luspo_eps_high must be >= 0"),
        ("luspo_eps_high", float("inf"), "algorithm.luspo_eps_high must be a finite number"),
    ],
)
def test_config_errors_name_the_key(field, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_algorithm_config(AlgorithmConfig(policy_loss="luspo", **{field: value}))


def test_function_rejects_bad_hyperparameters_by_name():
    lp, old, adv, mask = random_batch(0, spread=NEAR)
    with pytest.raises(ConfigError, match="luspo_eps_low must be <= 1"):
        run("luspo", lp, old, adv, mask, luspo_eps_low=2.0)
    with pytest.raises(ConfigError, match="luspo_eps_high must be >= 0"):
        run("luspo", lp, old, adv, mask, luspo_eps_high=-0.1)


# --- hand-computed values -------------------------------------------------------------------------


def test_worked_example():
    lp, old, mask = t([[0.001, 0.001]]), t([[0.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    out, g = run("luspo", lp, old, t([[1.0, 1.0]]), mask)
    s = math.exp(0.001)  # inside [1 - 2e-3, 1 + 2.5e-3]
    assert out.loss.item() == pytest.approx(-2 * s, abs=1e-12)
    assert g[0].tolist() == pytest.approx([-s, -s], abs=1e-12)
    _, g_gspo = run("gspo", lp, old, t([[1.0, 1.0]]), mask, eps_low=2e-3, eps_high=2.5e-3)
    torch.testing.assert_close(g, 2 * g_gspo, rtol=0, atol=1e-12)  # GSPO's is half of it


def test_equation_7_by_hand_on_two_sequences():
    # Lengths 1 and 3; A = 1 and -2; mean log-ratios 0.001 (inside) and -0.01 (below 1 - 2e-3,
    # A < 0: clipped). J = (1/2) [min(s0, clip s0) * 1 * 1 + min(-2 s1, -2 clip s1) * 3].
    lp = t([[0.001, 0.0, 0.0, 0.0], [-0.01, -0.02, 0.0, 0.0]])
    old = torch.zeros(2, 4, dtype=F64)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = t([[1.0, 0, 0, 0], [-2.0, -2.0, -2.0, 0]])
    out, g = run("luspo", lp, old, adv, mask)
    s0, s1 = math.exp(0.001), math.exp(-0.01)
    objective = (s0 * 1 * 1 + min(-2 * s1, -2 * (1 - 2e-3)) * 3) / 2
    assert out.loss.item() == pytest.approx(-objective, abs=1e-12)
    # eq. 8: the gradient of sequence i is s_i A_i / G per token (no 1/|y_i|); 0 where clipped.
    expected = torch.tensor([[-s0 / 2, 0, 0, 0], [0, 0, 0, 0]], dtype=F64)
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)
    assert out.metrics["policy/clipfrac_low"].item() == pytest.approx(3 / 4)


def test_on_policy_value_weighs_sequences_by_length():
    lp = t([[-1.0, 0.0, 0.0, 0.0], [-0.5, -2.0, -0.1, 0.0]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = t([[1.0, 0, 0, 0], [1.0, 1.0, 1.0, 0]])
    out, _ = run("luspo", lp, lp, adv, mask)
    assert out.loss.item() == pytest.approx(-(1 + 3) / 2, abs=1e-12)
    gspo, _ = run("gspo", lp, lp, adv, mask, aggregation="seq-mean-token-mean")
    assert gspo.loss.item() == pytest.approx(-1.0, abs=1e-12)


def test_clip_switches_exactly_at_the_sequence_ratio_bounds():
    mask = torch.ones(1, 2, dtype=torch.bool)
    d = 1e-9
    for adv, bound in ((1.0, math.log(1 + 2.5e-3)), (-1.0, math.log(1 - 2e-3))):
        a = t([[adv, adv]])
        _, g_in = run("luspo", t([[bound - adv * d] * 2]), t([[0.0, 0.0]]), a, mask)
        _, g_out = run("luspo", t([[bound + adv * d] * 2]), t([[0.0, 0.0]]), a, mask)
        assert torch.count_nonzero(g_in) == 2 and torch.count_nonzero(g_out) == 0
    # The other side of each sign is never clipped: s = e^0.5 with A < 0 keeps its gradient.
    _, g = run("luspo", t([[0.5, 0.5]]), t([[0.0, 0.0]]), t([[-1.0, -1.0]]), mask)
    assert g[0].tolist() == pytest.approx([math.exp(0.5)] * 2, abs=1e-12)


# --- relations to GSPO and the on-policy limit ----------------------------------------------------


@pytest.mark.parametrize("spread", [0.004, 0.5])
def test_equals_gspo_under_seq_mean_token_sum(spread):
    lp, old, adv, mask = random_batch(3, spread=spread)
    eps = dict(eps_low=2e-3, eps_high=2.5e-3)
    out, g = run("luspo", lp, old, adv, mask, aggregation="seq-mean-token-mean")
    ref, g_ref = run("gspo", lp, old, adv, mask, aggregation="seq-mean-token-sum", **eps)
    assert out.loss.item() == pytest.approx(ref.loss.item(), abs=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


def test_equal_lengths_scale_gspo_by_the_length():
    lp, old, adv, _ = random_batch(4, spread=NEAR)
    mask = torch.ones_like(lp, dtype=torch.bool)
    for mode in AGGREGATIONS.names():
        out, g = run("luspo", lp, old, adv, mask, aggregation=mode, norm_length=5)
        ref, g_ref = run(
            "gspo", lp, old, adv, mask, aggregation=mode, norm_length=5, eps_low=2e-3, eps_high=2.5e-3
        )
        assert out.loss.item() == pytest.approx(5 * ref.loss.item(), abs=1e-12)
        torch.testing.assert_close(g, 5 * g_ref, rtol=0, atol=1e-12)


def test_on_policy_gradient_is_the_plain_policy_gradient():
    # At ratio 1 the gradient is -A grad log pi(y|x) / G: ppo_clip's under seq-mean-token-sum.
    _, old, adv, mask = random_batch(0, spread=NEAR)
    _, g_ref = run("ppo_clip", old, old, adv, mask, aggregation="seq-mean-token-sum")
    _, g = run("luspo", old, old, adv, mask)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_gradcheck_with_sequence_constant_advantages(mode):
    # Inside the clip range the GSPO-token gradient is the gradient of the value when A is
    # constant along each sequence.
    lp, old, adv, mask = random_batch(5, spread=0.002)

    def f(x):
        return POLICY_LOSSES.get("luspo")(
            logprobs=x, old_logprobs=old, advantages=adv, mask=mask, aggregation=mode
        ).loss

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),))


# --- invariants -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_padding_values_change_nothing(mode):
    assert_padding_changes_nothing("luspo", random_batch(1, spread=NEAR), aggregation=mode, norm_length=5)


def test_permuting_sequences_permutes_gradients():
    assert_permuting_sequences_permutes_gradients("luspo", random_batch(5, spread=NEAR))


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_micro_batches_with_global_counts_add_up_to_the_full_batch(mode):
    assert_micro_batches_add_up("luspo", random_batch(2, b=6, spread=NEAR), mode)


def test_zero_advantage_sequences_contribute_nothing():
    lp, old, adv, mask = random_batch(6, spread=NEAR)
    adv = adv.clone()
    adv[1] = 0.0
    _, g = run("luspo", lp, old, adv, mask)
    assert torch.count_nonzero(g[1]) == 0
    assert POLICY_LOSSES.get("luspo").vanishes_at_zero_advantage
