import doctest
import math

import pytest
import torch

import rlvr.algorithms.kl as kl_module
from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.kl import (
    FOLD_KL_TENSOR_ARGS,
    KL_ESTIMATORS,
    KL_TENSOR_ARGS,
    fold_kl_into_rewards,
    kl_loss,
    kl_penalty,
)
from rlvr.errors import ConfigError, ShapeError, UnknownNameError

F64 = torch.float64

# log_ratio = logprobs - ref_logprobs = (1, -1, 0, padding)
LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5, 7.0]], dtype=F64)
REF = torch.tensor([[-2.0, -1.0, -0.5, 9.0]], dtype=F64)
MASK = torch.tensor([[True, True, True, False]])
E = math.e


@pytest.mark.parametrize(
    "estimator,expected",
    [
        ("k1", [1.0, -1.0, 0.0, 0.0]),  # log_ratio itself
        ("k2", [0.5, 0.5, 0.0, 0.0]),  # 0.5 * 1^2, 0.5 * (-1)^2
        ("k3", [1 / E - 1 + 1, E - 1 - 1, 0.0, 0.0]),  # e^-x - 1 + x: 0.367879, 0.718282
        ("abs", [1.0, 1.0, 0.0, 0.0]),
    ],
)
def test_each_estimator_on_hand_values_zero_on_padding(estimator, expected):
    out = kl_penalty(logprobs=LOGPROBS, ref_logprobs=REF, mask=MASK, kl_estimator=estimator, kl_clamp=None)
    torch.testing.assert_close(out, torch.tensor([expected], dtype=F64), rtol=0, atol=1e-15)


def test_registry_holds_exactly_the_documented_estimators():
    assert KL_ESTIMATORS.names() == ["abs", "k1", "k2", "k3"]


def test_k3_is_nonnegative_and_accurate_for_tiny_ratios():
    log_ratio = torch.linspace(-30, 30, 10001, dtype=F64)
    assert (KL_ESTIMATORS.get("k3")(log_ratio) >= 0).all()
    # For x = 1e-9: e^-x - 1 + x = x^2/2 - x^3/6 + ... = 5e-19; a naive exp(-x) - 1 + x loses it all.
    tiny = KL_ESTIMATORS.get("k3")(torch.tensor(1e-9, dtype=F64))
    assert tiny.item() == pytest.approx(5e-19, rel=1e-6)


def _categoricals():
    torch.manual_seed(3)
    theta = torch.randn(6, dtype=F64, requires_grad=True)  # pi = softmax(theta)
    ref_logp = torch.log_softmax(torch.randn(6, dtype=F64), 0)
    return theta, ref_logp


def test_k1_and_k3_are_unbiased_k2_is_not_by_exact_enumeration():
    theta, ref_logp = _categoricals()
    logp = torch.log_softmax(theta, 0).detach()
    pi = logp.exp()
    true_kl = (pi * (logp - ref_logp)).sum()
    expectation = {name: (pi * KL_ESTIMATORS.get(name)(logp - ref_logp)).sum() for name in ("k1", "k2", "k3")}
    assert expectation["k1"].item() == pytest.approx(true_kl.item(), abs=1e-14)
    # E_pi[pi_ref/pi - 1 - log(pi_ref/pi)] = sum pi_ref - 1 + KL = KL exactly.
    assert expectation["k3"].item() == pytest.approx(true_kl.item(), abs=1e-14)
    assert abs(expectation["k2"].item() - true_kl.item()) > 1e-3  # biased


def test_k2_bias_vanishes_for_close_distributions():
    theta, ref_logp = _categoricals()
    logp = torch.log_softmax(ref_logp + 1e-3 * theta.detach(), 0)  # pi close to pi_ref
    pi = logp.exp()
    true_kl = (pi * (logp - ref_logp)).sum().item()
    k2 = (pi * KL_ESTIMATORS.get("k2")(logp - ref_logp)).sum().item()
    assert k2 == pytest.approx(true_kl, rel=1e-2)  # bias is third order in log_ratio


def _expected_loss_gradient(name, theta, ref_logp):
    """sum_y pi(y) grad_theta f(log pi(y) - log pi_ref(y)): the on-policy expected gradient of the loss."""
    logp = torch.log_softmax(theta, 0)
    weights = logp.exp().detach()
    (grad,) = torch.autograd.grad((weights * KL_ESTIMATORS.get(name)(logp - ref_logp)).sum(), theta)
    return grad


def test_expected_loss_gradients_k1_zero_k2_forward_kl_k3_reverse_kl():
    theta, ref_logp = _categoricals()
    logp = torch.log_softmax(theta, 0)
    forward_kl = (logp.exp() * (logp - ref_logp)).sum()  # KL(pi || ref)
    reverse_kl = (ref_logp.exp() * (ref_logp - logp)).sum()  # KL(ref || pi)
    grad_kl, grad_rev = (
        torch.autograd.grad(kl, theta, retain_graph=True)[0] for kl in (forward_kl, reverse_kl)
    )
    torch.testing.assert_close(_expected_loss_gradient("k1", theta, ref_logp), torch.zeros(6, dtype=F64))
    torch.testing.assert_close(_expected_loss_gradient("k2", theta, ref_logp), grad_kl)
    torch.testing.assert_close(_expected_loss_gradient("k3", theta, ref_logp), grad_rev)
    assert (grad_kl - grad_rev).abs().max() > 1e-2  # the two directions really differ here


def _solve_k3_equals(c: float, x0: float) -> float:
    """Root of e^x - x - 1 = c by Newton's method in float64, from x0."""
    x = x0
    for _ in range(100):
        x -= (math.exp(x) - x - 1 - c) / (math.exp(x) - 1)
    assert math.exp(x) - x - 1 == pytest.approx(c, abs=1e-12)
    return x


def _k3_value_and_grad(x: float, kl_clamp):
    """k3 at log pi_ref - log pi = x, and its gradient with respect to log pi."""
    logprobs = torch.tensor([[0.0]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[x]], dtype=F64)
    value = kl_penalty(
        logprobs=logprobs, ref_logprobs=ref, mask=torch.ones(1, 1, dtype=torch.bool), kl_clamp=kl_clamp
    )
    value.sum().backward()
    return value.item(), logprobs.grad.item()


@pytest.mark.parametrize("x0", [3.0, -12.0])
def test_k3_clamp_zeroes_the_gradient_exactly_past_the_boundary(x0):
    # ALGORITHM-TRAPS 8: with kl_clamp = 10, tokens with e^x - x - 1 > 10 (x = log pi_ref - log pi)
    # get no gradient. The boundaries: x = 2.610868638... and x = -10.99998330...
    x = _solve_k3_equals(10.0, x0)
    assert x == pytest.approx(2.6108686381 if x0 > 0 else -10.9999832980, abs=1e-9)
    delta = 1e-6 * (1 if x0 > 0 else -1)  # step away from 0, past the boundary

    inside_value, inside_grad = _k3_value_and_grad(x - delta, kl_clamp=10.0)
    assert inside_value < 10.0
    # d k3 / d log pi = 1 - e^x: -12.61 on the positive side, ~1 on the negative side.
    assert inside_grad == pytest.approx(1 - math.exp(x - delta), rel=1e-9)

    outside_value, outside_grad = _k3_value_and_grad(x + delta, kl_clamp=10.0)
    assert outside_value == 10.0 and outside_grad == 0.0

    unclamped_value, unclamped_grad = _k3_value_and_grad(x + delta, kl_clamp=None)
    assert unclamped_value > 10.0 and unclamped_grad == pytest.approx(1 - math.exp(x + delta), rel=1e-9)


def test_clamp_bounds_negative_values_of_k1():
    out = kl_penalty(
        logprobs=torch.tensor([[-20.0, 20.0]], dtype=F64),
        ref_logprobs=torch.zeros(1, 2, dtype=F64),
        mask=torch.ones(1, 2, dtype=torch.bool),
        kl_estimator="k1",
        kl_clamp=10.0,
    )
    assert out.tolist() == [[-10.0, 10.0]]


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3", "abs"])
def test_padding_values_even_inf_and_nan_change_nothing(estimator):
    lp = LOGPROBS.clone().requires_grad_(True)
    out = kl_penalty(logprobs=lp, ref_logprobs=REF, mask=MASK, kl_estimator=estimator)
    out.sum().backward()
    lp_bad = LOGPROBS.clone()
    lp_bad[0, 3] = -math.inf
    lp_bad.requires_grad_(True)
    ref_bad = REF.clone()
    ref_bad[0, 3] = math.nan
    out_bad = kl_penalty(logprobs=lp_bad, ref_logprobs=ref_bad, mask=MASK.double(), kl_estimator=estimator)
    out_bad.sum().backward()
    torch.testing.assert_close(out_bad, out, rtol=0, atol=0)
    torch.testing.assert_close(lp_bad.grad, lp.grad, rtol=0, atol=0)
    assert lp.grad[0, 3] == 0


def test_kl_loss_aggregates_hand_values_and_reports_the_mean():
    k3_values = [1 / E, E - 2, 0.0]  # from the estimator test
    out = kl_loss(logprobs=LOGPROBS, ref_logprobs=REF, mask=MASK)
    assert out.loss.item() == pytest.approx(sum(k3_values) / 3, abs=1e-15)  # token-mean over 3 tokens
    assert out.metrics["kl/mean"].item() == pytest.approx(sum(k3_values) / 3, abs=1e-15)
    assert not out.metrics["kl/mean"].requires_grad

    # Two sequences: (k3 = 1/e) alone, and (e - 2, 0): seq-mean-token-mean = (1/e + (e - 2)/2) / 2.
    lp2 = torch.tensor([[-1.0, 0.0], [-2.0, -0.5]], dtype=F64)
    ref2 = torch.tensor([[-2.0, 0.0], [-1.0, -0.5]], dtype=F64)
    mask2 = torch.tensor([[True, False], [True, True]])
    out2 = kl_loss(logprobs=lp2, ref_logprobs=ref2, mask=mask2, aggregation="seq-mean-token-mean")
    assert out2.loss.item() == pytest.approx((1 / E + (E - 2) / 2) / 2, abs=1e-15)


def test_kl_loss_micro_batches_with_global_counts_add_up():
    torch.manual_seed(1)
    lp, ref = -torch.rand(6, 5, dtype=F64) * 3, -torch.rand(6, 5, dtype=F64) * 3
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    full = kl_loss(logprobs=lp, ref_logprobs=ref, mask=mask)
    parts = [
        kl_loss(
            logprobs=lp[i : i + 3], ref_logprobs=ref[i : i + 3], mask=mask[i : i + 3], num_tokens=mask.sum()
        )
        for i in (0, 3)
    ]
    assert sum(p.loss for p in parts).item() == pytest.approx(full.loss.item(), abs=1e-14)
    # Metrics are means over each call's own tokens: a token-weighted average recovers the whole.
    weights = [mask[i : i + 3].sum().item() / mask.sum().item() for i in (0, 3)]
    kl_mean = sum(w * p.metrics["kl/mean"] for w, p in zip(weights, parts, strict=True))
    assert kl_mean.item() == pytest.approx(full.metrics["kl/mean"].item(), abs=1e-14)


def test_fold_kl_outcome_reward_on_last_response_token_minus_kl_everywhere():
    rewards = torch.tensor([1.0, 0.0, 2.0, 3.0], dtype=F64)
    kl = torch.tensor(
        [[0.1, 0.2, 0.3, 9.0], [0.5, 9.0, 9.0, 9.0], [0.1, 0.1, 0.1, 0.1], [1.0, 1.0, 1.0, 1.0]], dtype=F64
    )
    mask = torch.tensor(
        [
            [True, True, True, False],  # last response token at t = 2
            [True, False, False, False],  # one token: reward and KL on the same token
            [False, False, False, False],  # no response token: nothing to place
            [True, False, True, False],  # a hole (e.g. an observation): last response token is t = 2
        ]
    )
    kl_grad = kl.clone().requires_grad_(True)
    out = fold_kl_into_rewards(rewards=rewards, kl=kl_grad, mask=mask, kl_coef=0.5)
    expected = torch.tensor(
        [
            [-0.05, -0.1, 1 - 0.15, 0.0],  # -0.5 * 0.1, -0.5 * 0.2, 1 - 0.5 * 0.3
            [0 - 0.25, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [-0.5, 0.0, 3 - 0.5, 0.0],
        ],
        dtype=F64,
    )
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-15)
    assert not out.requires_grad  # a reward, not a loss


def test_fold_kl_with_token_rewards_and_zero_coef():
    rewards = torch.tensor([[0.0, 0.5, 1.0]], dtype=F64)
    kl = torch.tensor([[0.2, 0.4, 7.0]], dtype=F64)
    mask = torch.tensor([[True, True, False]])
    out = fold_kl_into_rewards(rewards=rewards, kl=kl, mask=mask, kl_coef=0.1)
    torch.testing.assert_close(out, torch.tensor([[-0.02, 0.5 - 0.04, 0.0]], dtype=F64), rtol=0, atol=1e-15)
    out0 = fold_kl_into_rewards(rewards=torch.tensor([4.0], dtype=F64), kl=kl, mask=mask, kl_coef=0.0)
    assert out0.tolist() == [[0.0, 4.0, 0.0]]


def test_hyperparameters_are_config_fields():
    cfg = AlgorithmConfig()
    assert hyperparameters_for(kl_loss, cfg, KL_TENSOR_ARGS) == {
        "aggregation": cfg.aggregation,
        "kl_estimator": "k3",
        "kl_clamp": 10.0,
    }
    assert hyperparameters_for(kl_penalty, cfg, KL_TENSOR_ARGS) == {"kl_estimator": "k3", "kl_clamp": 10.0}
    assert hyperparameters_for(fold_kl_into_rewards, cfg, FOLD_KL_TENSOR_ARGS) == {"kl_coef": 0.0}


def test_bad_inputs_raise_clear_errors():
    kw = dict(logprobs=LOGPROBS, ref_logprobs=REF, mask=MASK)
    with pytest.raises(UnknownNameError, match="unknown KL estimator 'k4'.*valid: abs, k1, k2, k3"):
        kl_penalty(**kw, kl_estimator="k4")
    with pytest.raises(ConfigError, match="kl_clamp"):
        kl_penalty(**kw, kl_clamp=0.0)
    with pytest.raises(ShapeError, match="ref_logprobs has shape"):
        kl_penalty(logprobs=LOGPROBS, ref_logprobs=REF[:, :3], mask=MASK)
    with pytest.raises(ShapeError, match="mask must be a bool or floating"):
        kl_loss(logprobs=LOGPROBS, ref_logprobs=REF, mask=MASK.long())
    with pytest.raises(ShapeError, match="logprobs must be a floating"):
        kl_penalty(logprobs=LOGPROBS.long(), ref_logprobs=REF, mask=MASK)
    with pytest.raises(ShapeError, match="logprobs must be 2-D"):
        kl_penalty(logprobs=LOGPROBS[0], ref_logprobs=REF[0], mask=MASK[0])
    with pytest.raises(ConfigError, match="kl_coef"):
        fold_kl_into_rewards(rewards=torch.ones(1, dtype=F64), kl=REF, mask=MASK, kl_coef=-0.1)
    with pytest.raises(ShapeError, match="rewards has 2 entries but kl has 1 rows"):
        fold_kl_into_rewards(rewards=torch.ones(2, dtype=F64), kl=REF, mask=MASK, kl_coef=0.1)


def test_docstring_examples():
    assert doctest.testmod(kl_module, extraglobs={"torch": torch}).failed == 0
