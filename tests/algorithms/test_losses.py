import math

import pytest
import torch
from loss_cases import F64, assert_micro_batches_add_up, run, t

from rlvr.algorithms.aggregation import AGGREGATIONS
from rlvr.algorithms.config import ALGORITHM_FIELDS, AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.covariance import token_covariance
from rlvr.algorithms.losses import POLICY_LOSS_TENSOR_ARGS, POLICY_LOSSES
from rlvr.errors import ConfigError, ShapeError, UnknownNameError
from rlvr.registry import hyperparameters

ALL_LOSSES = POLICY_LOSSES.names()

# Two sequences padded to T = 4: one response token with A = 1, three with A = 2.
MASK = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
ADV = torch.tensor([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 0.0]], dtype=F64)


def run_with(name, logprobs, old_logprobs, advantages, mask, **kw):
    """:func:`run` with only the keyword arguments the loss takes (shared settings for all losses)."""
    accepted = set(hyperparameters(POLICY_LOSSES.get(name), ())) | set(POLICY_LOSS_TENSOR_ARGS)
    return run(
        name, logprobs, old_logprobs, advantages, mask, **{k: v for k, v in kw.items() if k in accepted}
    )


def one_token(name, log_ratio, adv, **kw):
    """A batch of one response token with the given log-ratio and advantage."""
    return run(name, t([[log_ratio]]), t([[0.0]]), t([[adv]]), torch.ones(1, 1, dtype=torch.bool), **kw)


# --- registry and config ------------------------------------------------------------------


def test_every_hyperparameter_is_a_config_field_of_the_same_name():
    for name in ALL_LOSSES:
        fn = POLICY_LOSSES.get(name)
        params = hyperparameters(fn, POLICY_LOSS_TENSOR_ARGS)
        assert "aggregation" in params
        assert set(params) <= ALGORITHM_FIELDS, name
        assert set(hyperparameters_for(fn, AlgorithmConfig(), POLICY_LOSS_TENSOR_ARGS)) == set(params)


def test_unknown_loss_name_lists_the_valid_names():
    with pytest.raises(UnknownNameError, match="did you mean 'ppo_clip'") as err:
        POLICY_LOSSES.get("ppo_clipp")
    for name in ("ppo_clip", "gspo", "cispo", "kimi", "clip_cov", "kl_cov"):
        assert name in str(err.value)


# --- ratio 1: the clipped losses are minus the aggregated advantage --------------------------


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "clip_cov", "kl_cov"])
def test_ratio_one_gives_minus_the_aggregated_advantage(name, mode):
    expected = {
        "token-mean": -(1 + 6) / 4,  # four tokens
        "seq-mean-token-mean": -(1 / 1 + 6 / 3) / 2,
        "seq-mean-token-sum": -(1 + 6) / 2,
        "seq-mean-token-sum-norm": -(1 + 6) / (2 * 4),  # L = 4
        "token-sum": -(1 + 6),
    }[mode]
    lp = t([[-1.0, 0.0, 0.0, 0.0], [-0.5, -2.0, -0.1, 0.0]])
    out, _ = run(name, lp, lp, ADV, MASK, aggregation=mode, norm_length=4)
    assert out.loss.item() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["policy/ratio_mean"].item() == pytest.approx(1.0)
    assert out.metrics["policy/approx_kl"].item() == pytest.approx(0.0, abs=1e-15)


# --- PPO clip: exact switching points, clip-higher, dual clip -------------------------------


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "clip_cov"])
def test_clip_switches_exactly_at_one_minus_eps_low_and_one_plus_eps_high(name):
    kw = dict(eps_low=0.2, eps_high=0.28)
    d = 1e-7
    # A > 0: the upper bound 1.28 removes the gradient just above it, not just below.
    _, g_out = one_token(name, math.log(1.28 + d), 1.0, **kw)
    _, g_in = one_token(name, math.log(1.28 - d), 1.0, **kw)
    assert g_out.item() == 0.0
    assert g_in.item() == pytest.approx(-(1.28 - d))  # d(-r A)/dlogprob = -r A
    # A < 0: the lower bound 0.8.
    _, g_out = one_token(name, math.log(0.8 - d), -1.0, **kw)
    _, g_in = one_token(name, math.log(0.8 + d), -1.0, **kw)
    assert g_out.item() == 0.0
    assert g_in.item() == pytest.approx(0.8 + d)
    # The other side of each sign is never clipped (no dual clip): r = 0.5 with A > 0, r = 5 with A < 0.
    _, g = one_token(name, math.log(0.5), 1.0, **kw)
    assert g.item() == pytest.approx(-0.5)
    out, g = one_token(name, math.log(5.0), -1.0, **kw)
    assert out.loss.item() == pytest.approx(5.0) and g.item() == pytest.approx(5.0)


def test_ppo_worked_example_values_and_clip_fractions():
    # ratios 1.5, 0.5, 1.0 with A = 1, -1, 1; eps = 0.2.
    lp = t([[math.log(1.5), math.log(0.5), 0.0]])
    out, grad = run(
        "ppo_clip", lp, t([[0.0, 0.0, 0.0]]), t([[1.0, -1.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)
    )
    # token losses: -min(1.5, 1.2) = -1.2; -min(-0.5, -0.8) = 0.8; -1.0  -> mean (-1.2 + 0.8 - 1) / 3
    assert out.loss.item() == pytest.approx((-1.2 + 0.8 - 1.0) / 3)
    assert grad[0].tolist() == pytest.approx([0.0, 0.0, -1.0 / 3])
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["policy/clipfrac_high"] == pytest.approx(1 / 3)
    assert m["policy/clipfrac_low"] == pytest.approx(1 / 3)
    assert m["policy/ratio_max"] == pytest.approx(1.5) and m["policy/ratio_min"] == pytest.approx(0.5)
    # k3: ((1.5 - 1 - ln 1.5) + (0.5 - 1 - ln 0.5) + 0) / 3 = (0.094535 + 0.193147) / 3
    assert m["policy/approx_kl"] == pytest.approx((0.5 - math.log(1.5) - 0.5 - math.log(0.5)) / 3)
    assert "policy/clipfrac_dual" not in m
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_dual_clip_bounds_negative_advantage_tokens_by_c_times_abs_a():
    kw = dict(eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0)
    out, g = one_token("ppo_clip", math.log(5.0), -1.0, **kw)  # min(5 * 1, 3 * 1) = 3, flat
    assert out.loss.item() == pytest.approx(3.0) and g.item() == 0.0
    assert out.metrics["policy/clipfrac_dual"].item() == 1.0
    out, g = one_token("ppo_clip", math.log(2.0), -1.0, **kw)  # 2 < 3: the plain loss r |A| = 2
    assert out.loss.item() == pytest.approx(2.0) and g.item() == pytest.approx(2.0)
    assert out.metrics["policy/clipfrac_dual"].item() == 0.0
    out, g = one_token("ppo_clip", math.log(5.0), 2.0, **kw)  # A > 0: untouched, -1.2 * 2
    assert out.loss.item() == pytest.approx(-2.4) and g.item() == 0.0
    out, _ = one_token("ppo_clip", math.log(5.0), -1.0, eps_low=0.2, eps_high=0.2)  # off: no bound
    assert out.loss.item() == pytest.approx(5.0)
    with pytest.raises(ConfigError, match="clip_ratio_c must be > 1"):
        one_token("ppo_clip", 0.0, -1.0, clip_ratio_c=1.0)


# --- invariants shared by every loss -----------------------------------------------------


def _random_batch(seed, b=4, t_=5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t_, generator=g, dtype=F64) * 3
    lp = old + 0.4 * (torch.rand(b, t_, generator=g, dtype=F64) - 0.5)
    mask = torch.rand(b, t_, generator=g) > 0.3
    mask[:, 0] = True
    adv = torch.randn(b, 1, generator=g, dtype=F64).expand(b, t_) * mask
    return lp, old, adv, mask


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_zero_advantages_give_zero_gradient(name):
    lp, old, adv, mask = _random_batch(0)
    zero = torch.zeros_like(adv)
    kw = dict(clip_cov_ratio=1.0, clip_cov_lb=-1.0) if name == "clip_cov" else {}
    _, grad = run_with(name, old, old, zero, mask, **kw)  # on-policy: every loss
    assert torch.count_nonzero(grad) == 0
    if name not in ("kimi", "kl_cov"):  # these also pull the ratio back to 1 (their KL terms)
        _, grad = run_with(name, lp, old, zero, mask, **kw)
        assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_padding_values_never_change_loss_or_gradient(name, mode):
    lp, old, adv, mask = _random_batch(1)
    kw = dict(aggregation=mode, norm_length=5, clip_cov_ratio=0.3, clip_cov_lb=-10.0, kl_cov_ratio=0.3)
    out, grad = run_with(name, lp, old, adv, mask, generator=torch.Generator().manual_seed(3), **kw)
    junk = [float("nan"), float("inf"), -float("inf"), 1e6]
    noisy = [x.clone() for x in (lp, old, adv)]
    for i, x in enumerate(noisy):
        x[~mask] = torch.tensor(junk * 10, dtype=F64)[: int((~mask).sum())].roll(i)
    out2, grad2 = run_with(name, *noisy, mask, generator=torch.Generator().manual_seed(3), **kw)
    assert out2.loss.item() == pytest.approx(out.loss.item(), abs=1e-12)
    assert torch.allclose(grad, grad2, atol=1e-12)
    assert torch.count_nonzero(grad2[~mask]) == 0
    for key, value in out.metrics.items():
        assert out2.metrics[key].item() == pytest.approx(value.item(), abs=1e-12), key


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "cispo", "kimi"])
def test_micro_batches_with_global_counts_add_up_to_the_full_batch(name, mode):
    assert_micro_batches_add_up(name, _random_batch(2, b=6), mode)


# --- gradient checks ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_kimi_gradcheck(mode):
    lp, old, adv, mask = _random_batch(4)

    def f(x):
        return POLICY_LOSSES.get("kimi")(
            logprobs=x, old_logprobs=old, advantages=adv, mask=mask, aggregation=mode, kimi_tau=0.3
        ).loss

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_gspo_gradcheck_with_sequence_constant_advantages(mode):
    # GSPO-token's gradient is the gradient of its value when A is constant within a sequence
    # (the value depends on each token only through the sequence's mean log-ratio).
    lp, old, adv, mask = _random_batch(5)

    def f(x):
        return POLICY_LOSSES.get("gspo")(
            logprobs=x,
            old_logprobs=old,
            advantages=adv,
            mask=mask,
            aggregation=mode,
            eps_low=0.05,
            eps_high=0.05,
        ).loss

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),))


def test_cispo_gradcheck_where_the_weight_is_truncated():
    # The weight is a stop-gradient: only where it is truncated (constant) is the value's
    # derivative the loss gradient; everywhere else test_cispo_gradient_formula checks it.
    lp, old, adv, mask = _random_batch(6)
    lp = old + 0.5  # r = e^0.5 = 1.65 > 1.2 everywhere

    def f(x):
        return POLICY_LOSSES.get("cispo")(logprobs=x, old_logprobs=old, advantages=adv, mask=mask).loss

    assert torch.autograd.gradcheck(f, (lp.clone().requires_grad_(True),))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_cispo_gradient_formula(mode):
    lp, old, adv, mask = _random_batch(7)
    lp = old + 0.6 * (torch.rand(lp.shape, generator=torch.Generator().manual_seed(0), dtype=F64) - 0.3)
    adv = torch.randn(adv.shape, generator=torch.Generator().manual_seed(1), dtype=F64) * mask  # per token
    _, grad = run("cispo", lp, old, adv, mask, aggregation=mode, eps_high=0.1)
    weight = torch.exp(lp - old).clamp(max=1.1)
    m = mask.to(F64)
    if mode == "token-mean":
        denominator = m.sum()
    else:  # |y_i| * number of sequences
        denominator = m.sum(-1, keepdim=True) * mask.shape[0]
    expected = -weight * adv * m / denominator
    assert torch.allclose(grad, expected, atol=1e-14)
    assert (torch.exp(lp - old)[mask] > 1.1).any()  # some weights were truncated, none dropped
    assert torch.count_nonzero(grad[mask & (adv != 0)]) == int((mask & (adv != 0)).sum())


def test_cispo_worked_example():
    out, g = run(
        "cispo", t([[-1.0]]), t([[-1.5]]), t([[2.0]]), torch.ones(1, 1, dtype=torch.bool), eps_high=0.2
    )
    # r = e^0.5 = 1.6487 -> weight 1.2; loss = -1.2 * 2 * (-1) = 2.4; gradient -1.2 * 2
    assert out.loss.item() == pytest.approx(2.4) and g.item() == pytest.approx(-2.4)
    assert out.metrics["policy/clipfrac_high"].item() == 1.0


# --- GSPO -------------------------------------------------------------------------------------


def test_gspo_equals_ppo_clip_when_every_sequence_has_one_token():
    lp, old, adv, _ = _random_batch(8, b=6, t_=1)
    lp = old + t([[0.5], [-0.5], [0.1], [-0.1], [0.3], [0.0]])
    adv = t([[1.0], [-1.0], [2.0], [-0.5], [-1.0], [1.0]])
    mask = torch.ones(6, 1, dtype=torch.bool)
    kw = dict(eps_low=0.2, eps_high=0.28, aggregation="token-mean")
    a, ga = run("gspo", lp, old, adv, mask, **kw)
    b, gb = run("ppo_clip", lp, old, adv, mask, **kw)
    assert a.loss.item() == pytest.approx(b.loss.item(), abs=1e-14)
    assert torch.allclose(ga, gb, atol=1e-14)


def test_gspo_matches_the_sequence_level_objective_with_sequence_advantages():
    lp, old, adv, mask = _random_batch(9)
    eps_low, eps_high = 0.03, 0.04
    out, grad = run("gspo", lp, old, adv, mask, eps_low=eps_low, eps_high=eps_high)

    x = lp.clone().requires_grad_(True)
    m = mask.to(F64)
    s = torch.exp(((x - old) * m).sum(-1) / m.sum(-1))  # [B], s_i of GSPO sec. 4.1
    a = adv[:, 0]
    j = torch.minimum(s * a, s.clamp(1 - eps_low, 1 + eps_high) * a).mean()  # (1/G) sum_i
    (g_ref,) = torch.autograd.grad(-j, x)
    assert out.loss.item() == pytest.approx(-j.item(), abs=1e-14)
    assert torch.allclose(grad, g_ref, atol=1e-14)
    clipped = (s.detach() > 1 + eps_high) & (a > 0) | (s.detach() < 1 - eps_low) & (a < 0)
    assert clipped.any() and (~clipped).any()  # both regimes are exercised


def test_gspo_worked_example_clips_the_whole_sequence():
    # log-ratios (0.3, 0.1): s = exp(0.2) = 1.2214 > 1.2 -> loss -1.2, no gradient on either token
    out, g = run("gspo", t([[0.3, 0.1]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool),
                 eps_low=0.2, eps_high=0.2)  # fmt: skip
    assert out.loss.item() == pytest.approx(-1.2) and torch.count_nonzero(g) == 0
    assert out.metrics["policy/ratio_mean"].item() == pytest.approx(math.exp(0.2))
    assert out.metrics["policy/clipfrac_high"].item() == 1.0


# --- Kimi -------------------------------------------------------------------------------------


def test_kimi_worked_example():
    # tau = 0.1, A = 1, log-ratios 0.5 + 1.5 = 2: L = (1 - 0.2)^2 = 0.64, dL/dlogprob = -2 * 0.1 * 0.8
    out, g = run("kimi", t([[0.5, 1.5]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]), torch.ones(1, 2, dtype=torch.bool),
                 kimi_tau=0.1, aggregation="seq-mean-token-mean")  # fmt: skip
    assert out.loss.item() == pytest.approx(0.64)
    assert g[0].tolist() == pytest.approx([-0.16, -0.16])


def test_kimi_reads_the_sequence_advantage_as_the_masked_mean():
    # Left padding, token advantages 1 and 3 -> A = 2; log-ratio 0 -> L = 2^2 = 4
    lp = t([[9.0, -1.0, -2.0]])
    out, _ = run("kimi", lp, lp, t([[5.0, 1.0, 3.0]]), torch.tensor([[False, True, True]]), kimi_tau=0.1)
    assert out.loss.item() == pytest.approx(4.0)


def test_kimi_is_per_sequence_and_aggregation_weighs_sequences():
    # Sequence 1: one token, A = 1, log-ratio 1 -> L1 = (1 - 0.5)^2 = 0.25 (tau = 0.5)
    # Sequence 2: three tokens, A = 2, log-ratios 1, 1, 0 -> L2 = (2 - 0.5 * 2)^2 = 1
    lp = t([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    old = torch.zeros_like(lp)
    kw = dict(kimi_tau=0.5)
    out, _ = run("kimi", lp, old, ADV, MASK, aggregation="seq-mean-token-mean", **kw)
    assert out.loss.item() == pytest.approx((0.25 + 1) / 2)  # the paper's mean over samples
    out, _ = run("kimi", lp, old, ADV, MASK, aggregation="token-mean", **kw)
    assert out.loss.item() == pytest.approx((0.25 + 3 * 1) / 4)  # long sequences weigh more


# --- Clip-Cov and KL-Cov ----------------------------------------------------------------------

# One sequence of 6 tokens: centred logprobs (2, 2, 2, -2, -2, -2), centred A (1, 3, 0.5, -1.5, -0.5, -2.5)
COV_LP = t([[0.0, 0.0, 0.0, -4.0, -4.0, -4.0]])
COV_ADV = t([[1.0, 3.0, 0.5, -1.5, -0.5, -2.5]])  # mean 0
COV_MASK = torch.ones(1, 6, dtype=torch.bool)
COV = [2.0, 6.0, 1.0, 3.0, 1.0, 5.0]  # (lp - mean lp) * (A - mean A)


def test_token_covariance_hand_values():
    assert token_covariance(COV_LP, COV_ADV, COV_MASK).tolist() == [COV]


def test_clip_cov_detaches_exactly_the_tokens_the_generator_chooses():
    kw = dict(eps_low=0.2, eps_high=0.2, clip_cov_ratio=0.5, clip_cov_lb=1.0, clip_cov_ub=5.0)
    out, grad = run(
        "clip_cov", COV_LP, COV_LP, COV_ADV, COV_MASK, generator=torch.Generator().manual_seed(0), **kw
    )
    candidates = torch.tensor([0, 2, 3, 4, 5])  # Cov in [1, 5]; token 1 (Cov 6) is outside
    chosen = candidates[torch.randperm(5, generator=torch.Generator().manual_seed(0))[:3]]  # floor(0.5 * 6)
    ref, g_ref = run("ppo_clip", COV_LP, COV_LP, COV_ADV, COV_MASK, eps_low=0.2, eps_high=0.2)
    detached = torch.zeros(6, dtype=torch.bool)
    detached[chosen] = True
    assert torch.count_nonzero(grad[0, detached]) == 0
    assert torch.equal(grad[0, ~detached], g_ref[0, ~detached])  # -A / 6, all non-zero
    assert torch.count_nonzero(g_ref) == 6
    assert out.loss.item() == pytest.approx(ref.loss.item())  # stop-gradient keeps the value
    assert out.metrics["policy/clip_cov_frac"].item() == pytest.approx(3 / 6)


def test_clip_cov_skips_tokens_the_ppo_clip_already_removed():
    old = COV_LP.clone()
    old[0, 0] -= math.log(2.0)  # token 0: r = 2, A = 1 > 0: clipped by PPO, not a candidate
    out, grad = run(
        "clip_cov", COV_LP, old, COV_ADV, COV_MASK, clip_cov_ratio=1.0, clip_cov_lb=1.0, clip_cov_ub=5.0
    )
    # all remaining candidates (tokens 2, 3, 4, 5) are detached; token 1 (Cov 6) keeps -A / 6
    assert grad[0].tolist() == pytest.approx([0.0, -3.0 / 6, 0.0, 0.0, 0.0, 0.0])
    assert out.metrics["policy/clip_cov_frac"].item() == pytest.approx(4 / 6)
    assert out.metrics["policy/clipfrac_high"].item() == pytest.approx(1 / 6)


def test_kl_cov_penalises_exactly_the_top_tokens():
    old = COV_LP - 0.1  # log-ratio 0.1 everywhere
    out, grad = run("kl_cov", COV_LP, old, COV_ADV, COV_MASK, kl_cov_ratio=0.34, kl_cov_coef=2.0)
    # k = floor(0.34 * 6) = 2: Cov 6 (token 1) and 5 (token 5).
    top = torch.tensor([False, True, False, False, False, True])
    r = math.exp(0.1)
    expected_grad = (-COV_ADV[0] * r + 2.0 * top.to(F64)) / 6  # d(-r A + 2 |log r|)/dlogprob, token-mean
    assert grad[0].tolist() == pytest.approx(expected_grad.tolist())
    # value: sum(-A r) = 0 (A sums to 0) plus 2 * 0.1 on each of the 2 tokens, over 6 tokens
    assert out.loss.item() == pytest.approx(2 * 2.0 * 0.1 / 6)
    assert out.metrics["policy/kl_cov_frac"].item() == pytest.approx(2 / 6)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_bad_tensors_raise_shape_errors_naming_the_argument(name):
    lp, old, adv, mask = _random_batch(10)
    with pytest.raises(ShapeError, match="old_logprobs"):
        run(name, lp, old[:, :3], adv, mask)
    with pytest.raises(ShapeError, match="advantages"):
        run(name, lp, old, adv[:2], mask)
    with pytest.raises(ShapeError, match="mask must be a bool or floating"):
        run(name, lp, old, adv, mask.long())
    with pytest.raises(ShapeError, match="mask must have shape"):
        run(name, lp, old, adv, mask[:, :2])
    with pytest.raises(ShapeError, match="logprobs must be 2-D"):
        run(name, lp[0], old[0], adv[0], mask[0])
    with pytest.raises(UnknownNameError, match="did you mean 'token-mean'"):
        run(name, lp, old, adv, mask, aggregation="token_mean")


@pytest.mark.parametrize(
    "name,kw,field",
    [
        ("ppo_clip", dict(eps_low=-0.1), "eps_low"),
        ("ppo_clip", dict(eps_high=float("nan")), "eps_high"),
        ("gspo", dict(eps_high=-1e-4), "eps_high"),
        ("cispo", dict(eps_high=-0.5), "eps_high"),
        ("clip_cov", dict(eps_low=-0.2), "eps_low"),
        ("ppo_clip", dict(clip_ratio_c=0.5), "clip_ratio_c"),
        ("kimi", dict(kimi_tau=0.0), "kimi_tau"),
        ("clip_cov", dict(clip_cov_ratio=1.5), "clip_cov_ratio"),
        ("clip_cov", dict(clip_cov_lb=5.0, clip_cov_ub=1.0), "clip_cov_ub"),
        ("kl_cov", dict(kl_cov_ratio=-0.1), "kl_cov_ratio"),
        ("kl_cov", dict(kl_cov_coef="1"), "kl_cov_coef"),
    ],
)
def test_bad_hyperparameters_raise_config_errors_naming_the_field(name, kw, field):
    lp, old, adv, mask = _random_batch(11)
    with pytest.raises(ConfigError, match=field):
        run(name, lp, old, adv, mask, **kw)


def test_batch_selection_of_one_call_is_the_losses_own_choice():
    """In one process over one call, the batch-wide choice (rlvr.algorithms.covariance) picks the
    tokens the loss picks itself: the same candidates in the same order, the same generator draws."""
    from rlvr.algorithms.covariance import clip_cov_selection, kl_cov_selection

    torch.manual_seed(0)
    lp = -torch.rand(3, 5, dtype=torch.float64) * 3
    old = lp + 0.05 * torch.randn(3, 5, dtype=torch.float64)
    adv = torch.randn(3, 5, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.float64)
    positions = torch.arange(3)
    for loss, select, hp in (
        (
            POLICY_LOSSES.get("clip_cov"),
            clip_cov_selection,
            dict(clip_cov_ratio=0.3, clip_cov_lb=-9.0, clip_cov_ub=9.0),
        ),
        (POLICY_LOSSES.get("kl_cov"), kl_cov_selection, dict(kl_cov_ratio=0.3)),
    ):
        chosen = select(
            logprobs=lp,
            old_logprobs=old,
            advantages=adv,
            mask=mask,
            positions=positions,
            generator=torch.Generator().manual_seed(5),
            **hp,
        )
        assert int(chosen.sum()) == 3  # floor(0.3 * 10 tokens)
        assert not (chosen & ~mask.bool()).any()
        grads = []
        for extra in ({"generator": torch.Generator().manual_seed(5)}, {"token_selection": chosen}):
            x = lp.clone().requires_grad_(True)
            loss(logprobs=x, old_logprobs=old, advantages=adv, mask=mask, **hp, **extra).loss.backward()
            grads.append(x.grad)
        # Detached (Clip-Cov) or penalised (KL-Cov) tokens show in the gradient: the same tokens.
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-15)
        other = chosen.clone()
        other[1, 4], other[0, 0] = ~other[1, 4], ~other[0, 0]
        x = lp.clone().requires_grad_(True)
        loss(
            logprobs=x, old_logprobs=old, advantages=adv, mask=mask, **hp, token_selection=other
        ).loss.backward()
        assert not torch.allclose(x.grad, grads[0])  # the comparison can tell choices apart
