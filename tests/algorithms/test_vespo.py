"""VESPO (arXiv 2602.10693): hand values, the kernel, the implicit surrogate, limits, invariants."""

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
from rlvr.algorithms.sequence_objectives import vespo_kernel
from rlvr.algorithms.validation import validate_algorithm_config
from rlvr.errors import ConfigError

PAPER = dict(vespo_c1_pos=2.0, vespo_c2_pos=3.0, vespo_c1_neg=3.0, vespo_c2_neg=2.0)


def phi(log_w, c1, c2):
    w = math.exp(log_w)
    return w**c1 * math.exp(c2 * (1 - w))


# --- registry and config --------------------------------------------------------------------------


def test_selected_by_name_with_the_papers_defaults_from_the_config():
    cfg = AlgorithmConfig(policy_loss="vespo")
    validate_algorithm_config(cfg)
    fn = POLICY_LOSSES.get(cfg.policy_loss)
    hp = hyperparameters_for(fn, cfg, POLICY_LOSS_TENSOR_ARGS)
    assert {k: hp[k] for k in PAPER} == PAPER  # sec. 4.1: (2, 3) for A > 0, (3, 2) for A < 0


@pytest.mark.parametrize("field", sorted(PAPER))
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_config_errors_name_the_key(field, value):
    with pytest.raises(ConfigError, match=f"algorithm.{field} must be"):
        validate_algorithm_config(AlgorithmConfig(policy_loss="vespo", **{field: value}))


def test_function_rejects_bad_hyperparameters_by_name():
    lp, old, adv, mask = random_batch(0)
    with pytest.raises(ConfigError, match="vespo_c2_neg must be > 0"):
        run("vespo", lp, old, adv, mask, vespo_c2_neg=0.0)
    with pytest.raises(ConfigError, match="vespo_c1_pos must be a number"):
        run("vespo", lp, old, adv, mask, vespo_c1_pos="2")


# --- hand-computed values -------------------------------------------------------------------------


def test_worked_example_positive_and_negative_advantage():
    lp, old, mask = t([[0.1, 0.2]]), t([[0.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    # A = 1: c = (2, 3); log W = 0.3, log phi = 0.6 + 3 (1 - e^0.3) = -0.4495764, phi = 0.6378983.
    out, g = run("vespo", lp, old, t([[1.0, 1.0]]), mask)
    p = math.exp(2 * 0.3 + 3 * (1 - math.exp(0.3)))
    assert p == pytest.approx(0.6378982936, abs=1e-10)
    assert g[0].tolist() == pytest.approx([-p, -p], abs=1e-12)
    assert out.loss.item() == pytest.approx(-p * (0.1 + 0.2), abs=1e-12)  # -phi A sum_t logprobs
    assert out.metrics["policy/vespo_phi_mean"].item() == pytest.approx(p, abs=1e-12)
    assert out.metrics["policy/vespo_log_w_max"].item() == pytest.approx(0.3, abs=1e-12)
    # A = -1: c = (3, 2); phi = exp(0.9 + 2 (1 - e^0.3)) = 1.2217477.
    _, g = run("vespo", lp, old, t([[-1.0, -1.0]]), mask)
    p = math.exp(0.9 + 2 * (1 - math.exp(0.3)))
    assert p == pytest.approx(1.2217477125, abs=1e-10)
    assert g[0].tolist() == pytest.approx([p, p], abs=1e-12)


def test_two_sequences_by_hand_under_seq_mean_token_sum():
    # Row 0: 1 token, log W = -0.5, A = 2 (c = 2, 3); row 1: 3 tokens, log W = 0.6, A = -1 (c = 3, 2).
    lp = t([[-0.5, 0.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.0]])
    old = torch.zeros(2, 4, dtype=F64)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    adv = t([[2.0, 0.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0]])
    out, g = run("vespo", lp, old, adv, mask, aggregation="seq-mean-token-sum")
    p0, p1 = phi(-0.5, 2, 3), phi(0.6, 3, 2)
    expected = torch.tensor([[-p0 * 2, 0, 0, 0], [p1, p1, p1, 0]], dtype=F64) / 2
    torch.testing.assert_close(g, expected, rtol=0, atol=1e-12)
    value = (-p0 * 2 * -0.5 + p1 * (0.1 + 0.2 + 0.3)) / 2
    assert out.loss.item() == pytest.approx(value, abs=1e-12)


# --- the kernel (sec. 3.3, appendix C) ------------------------------------------------------------


def test_kernel_is_one_on_policy_and_bounded_by_phi_max():
    for c1, c2 in ((2.0, 3.0), (3.0, 2.0), (0.5, 0.7)):
        assert vespo_kernel(torch.zeros((), dtype=F64), c1, c2).item() == 1.0
        # Prop. C.1 (eq. 45): sup phi = (c1/c2)^c1 exp(c2 - c1), at W = c1 / c2.
        phi_max = (c1 / c2) ** c1 * math.exp(c2 - c1)
        at = vespo_kernel(torch.tensor(math.log(c1 / c2), dtype=F64), c1, c2).item()
        assert at == pytest.approx(phi_max, rel=1e-12)
        grid = vespo_kernel(torch.linspace(-30, 5, 20001, dtype=F64), c1, c2)
        assert grid.max().item() <= phi_max * (1 + 1e-12)
    assert (2 / 3) ** 2 * math.e == pytest.approx(1.21, abs=5e-3)  # the paper's phi_max for (2, 3)


def test_extreme_weights_give_zero_weight_and_no_nan():
    # Sequences far off-policy on either side: phi underflows or W overflows to inf, phi -> 0.
    lp = t([[400.0, 400.0], [-400.0, -400.0]])
    old = torch.zeros(2, 2, dtype=F64)
    mask = torch.ones(2, 2, dtype=torch.bool)
    out, g = run("vespo", lp, old, t([[1.0, 1.0], [-1.0, -1.0]]), mask)
    assert torch.isfinite(out.loss) and torch.count_nonzero(g) == 0
    assert out.metrics["policy/vespo_phi_max"].item() == 0.0


def test_no_length_normalisation_unlike_gspo():
    # Prop. E.1: equal mean log-ratio 0.2 per token, lengths 1 and 4: W = e^0.2 vs e^0.8.
    lp = t([[0.2, 0.0, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2]])
    old = torch.zeros(2, 4, dtype=F64)
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    adv = t([[1.0, 0, 0, 0], [1.0, 1.0, 1.0, 1.0]])
    _, g = run("vespo", lp, old, adv, mask, aggregation="token-sum")
    assert g[0, 0].item() == pytest.approx(-phi(0.2, 2, 3), abs=1e-12)
    assert g[1, 0].item() == pytest.approx(-phi(0.8, 2, 3), abs=1e-12)
    assert g[0, 0].item() != pytest.approx(g[1, 0].item(), abs=1e-3)


def test_sign_of_the_sequence_advantage_picks_the_branch():
    lp, old, mask = t([[0.3, 0.0]]), t([[0.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    kw = dict(aggregation="token-sum", vespo_c1_pos=1.0, vespo_c2_pos=1.0, vespo_c1_neg=4.0, vespo_c2_neg=4.0)
    # Token advantages (2, -1): mean 0.5 >= 0, so c = (1, 1) weighs both tokens, each by its own A.
    _, g = run("vespo", lp, old, t([[2.0, -1.0]]), mask, **kw)
    p = phi(0.3, 1, 1)
    assert g[0].tolist() == pytest.approx([-2 * p, p], abs=1e-12)
    _, g = run("vespo", lp, old, t([[1.0, -3.0]]), mask, **kw)  # mean -1 < 0: c = (4, 4)
    p = phi(0.3, 4, 4)
    assert g[0].tolist() == pytest.approx([-p, 3 * p], abs=1e-12)


# --- the implicit surrogate (eq. 39-41) and the on-policy limit -----------------------------------


def surrogate(x, old, adv, mask, c):
    """(1/N) sum_i -A_i f(W_i), f(W) = e^c2 c2^-c1 Gamma(c1) P(c1, c2 W): f'(W) = phi(W) / W."""
    m = mask.to(F64)
    log_w = ((x - old) * m).sum(-1)
    seq_adv = (adv * m).sum(-1) / m.sum(-1)
    pos = seq_adv >= 0
    c1 = torch.where(pos, torch.tensor(c[0], dtype=F64), torch.tensor(c[2], dtype=F64))
    c2 = torch.where(pos, torch.tensor(c[1], dtype=F64), torch.tensor(c[3], dtype=F64))
    scale = torch.exp(c2 - c1 * torch.log(c2) + torch.lgamma(c1))
    f = scale * torch.special.gammainc(c1, c2 * torch.exp(log_w))
    return -(seq_adv * f).sum() / mask.shape[0]


@pytest.mark.parametrize("spread", [0.4, 2.0])
def test_gradient_is_that_of_the_incomplete_gamma_surrogate(spread):
    lp, old, adv, mask = random_batch(3, spread=spread)
    c = (2.0, 3.0, 3.0, 2.0)
    x = lp.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda y: surrogate(y, old, adv, mask, c), (x,))
    (g_ref,) = torch.autograd.grad(surrogate(x, old, adv, mask, c), x)
    _, g = run("vespo", lp, old, adv, mask, aggregation="seq-mean-token-sum")
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_on_policy_gradient_is_the_plain_policy_gradient(mode):
    # phi(1) = 1: at ratio 1 the gradient is -A grad log pi, aggregated like ppo_clip's.
    _, old, adv, mask = random_batch(0)
    kw = dict(aggregation=mode, norm_length=5)
    _, g_ref = run("ppo_clip", old, old, adv, mask, **kw)
    out, g = run("vespo", old, old, adv, mask, **kw)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    assert out.metrics["policy/vespo_phi_min"].item() == pytest.approx(1.0, abs=1e-15)


# --- invariants -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_padding_values_change_nothing(mode):
    assert_padding_changes_nothing("vespo", random_batch(1, spread=1.5), aggregation=mode, norm_length=5)


def test_permuting_sequences_permutes_gradients():
    assert_permuting_sequences_permutes_gradients("vespo", random_batch(5, spread=1.5))


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_micro_batches_with_global_counts_add_up_to_the_full_batch(mode):
    assert_micro_batches_add_up("vespo", random_batch(2, b=6, spread=1.5), mode)


def test_zero_advantage_sequences_contribute_nothing():
    lp, old, adv, mask = random_batch(6, spread=1.5)
    adv = adv.clone()
    adv[1] = 0.0
    _, g = run("vespo", lp, old, adv, mask)
    assert torch.count_nonzero(g[1]) == 0
    assert POLICY_LOSSES.get("vespo").vanishes_at_zero_advantage
