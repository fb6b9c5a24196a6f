import doctest
import inspect
import math

import pytest
import torch

import rlvr.algorithms.preference as preference_module
from rlvr.algorithms.preference import PREFERENCE_LOSSES, PREFERENCE_TENSOR_ARGS, sequence_logprobs
from rlvr.errors import ConfigError, ShapeError, UnknownNameError
from rlvr.registry import hyperparameters

F64 = torch.float64
ALL_LOSSES = PREFERENCE_LOSSES.names()


def t(values):
    return torch.tensor(values, dtype=F64)


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), by hand."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Two pairs (sequence log-prob sums). Log-ratios: chosen (1, 0), rejected (-1, 1); h = (2, -1).
PC, PR = t([-10.0, -5.0]), t([-12.0, -4.0])
RC, RR = t([-11.0, -5.0]), t([-11.0, -5.0])
H = (2.0, -1.0)


def run(name, pc, pr, rc=None, rr=None, **kw):
    """Loss output and the gradients with respect to policy_chosen and policy_rejected."""
    pc = pc.detach().clone().requires_grad_(True)
    pr = pr.detach().clone().requires_grad_(True)
    out = PREFERENCE_LOSSES.get(name)(
        policy_chosen=pc, policy_rejected=pr, reference_chosen=rc, reference_rejected=rr, **kw
    )
    g_chosen, g_rejected = torch.autograd.grad(out.loss, (pc, pr))
    return out, g_chosen, g_rejected


def run_any(name, pc, pr, rc, rr, **kw):
    """:func:`run` with the references only for the losses that read them."""
    if PREFERENCE_LOSSES.get(name).needs_reference:
        return run(name, pc, pr, rc, rr, **kw)
    return run(name, pc, pr, **kw)


def metrics(out):
    return {k: v.item() for k, v in out.metrics.items()}


# --- sequence_logprobs ------------------------------------------------------------------------


def test_sequence_logprobs_sums_and_averages_completion_tokens_only():
    lp = t([[-1.0, -3.0, -0.5], [-2.0, -0.25, -7.0], [-9.0, -9.0, -9.0]])
    mask = torch.tensor([[True, True, False], [False, True, True], [False, False, False]])
    assert sequence_logprobs(lp, mask, average=False).tolist() == [-4.0, -7.25, 0.0]
    assert sequence_logprobs(lp, mask, average=True).tolist() == [-2.0, -7.25 / 2, 0.0]  # empty row: 0
    # A float 0/1 mask gives the same.
    assert sequence_logprobs(lp, mask.to(F64), average=True).tolist() == [-2.0, -3.625, 0.0]


@pytest.mark.parametrize("average", [False, True])
def test_sequence_logprobs_ignores_nan_and_inf_in_padding_value_and_gradient(average):
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(3, 5, generator=g, dtype=F64) * 4
    mask = torch.rand(3, 5, generator=g) > 0.4
    mask[:, 0] = True
    noisy = lp.clone()
    noisy[~mask] = torch.tensor([math.nan, math.inf, -math.inf] * 5, dtype=F64)[: int((~mask).sum())]
    grads = []
    values = []
    for x in (lp, noisy):
        x = x.clone().requires_grad_(True)
        out = sequence_logprobs(x, mask, average=average)
        (grad,) = torch.autograd.grad(out.sum(), x)
        values.append(out.detach())
        grads.append(grad)
    assert torch.equal(values[0], values[1])
    assert torch.equal(grads[0], grads[1])
    assert not torch.isnan(grads[1]).any()
    assert torch.count_nonzero(grads[1][~mask]) == 0
    counts = mask.sum(-1, keepdim=True).to(F64)
    expected = mask.to(F64) / counts if average else mask.to(F64)
    torch.testing.assert_close(grads[1], expected, rtol=0, atol=1e-15)


def test_sequence_logprobs_refuses_integer_masks_and_wrong_shapes():
    lp = t([[-1.0, -2.0]])
    with pytest.raises(ShapeError, match="mask.bool"):
        sequence_logprobs(lp, torch.tensor([[1, 0]]), average=False)
    with pytest.raises(ShapeError, match=r"mask must have shape \(1, 2\)"):
        sequence_logprobs(lp, torch.tensor([[True]]), average=False)
    with pytest.raises(ShapeError, match="logprobs must be 2-D"):
        sequence_logprobs(t([-1.0]), torch.tensor([True]), average=False)


# --- hand-computed values on a two-pair batch --------------------------------------------------


def test_dpo_hand_computed_values_metrics_and_gradients():
    out, g_c, g_r = run("dpo", PC, PR, RC, RR, beta=0.1)
    # L_i = -log sigmoid(0.1 h_i) = softplus(-0.1 h_i): softplus(-0.2) = 0.598139, softplus(0.1) = 0.744397.
    expected = (softplus(-0.2) + softplus(0.1)) / 2  # 0.671268
    assert out.loss.item() == pytest.approx(expected, abs=1e-15)
    assert expected == pytest.approx(0.6712677646, abs=1e-9)
    m = metrics(out)
    assert m["preference/loss"] == pytest.approx(expected, abs=1e-15)
    assert m["preference/reward_chosen"] == pytest.approx(0.1 * (1 + 0) / 2, abs=1e-15)  # 0.05
    assert m["preference/reward_rejected"] == pytest.approx(0.1 * (-1 + 1) / 2, abs=1e-15)  # 0
    assert m["preference/reward_margin"] == pytest.approx(0.1 * (2 - 1) / 2, abs=1e-15)  # 0.05
    assert m["preference/accuracy"] == 0.5  # pair 0: 0.1 > -0.1; pair 1: 0 < 0.1
    assert "preference/sft_nll" not in m
    # dL/dpc_i = -beta sigmoid(-beta h_i) / B: -0.05 * 0.450166 = -0.022508, -0.05 * 0.524979 = -0.026249.
    want = [-0.1 * sigmoid(-0.2) / 2, -0.1 * sigmoid(0.1) / 2]
    assert g_c.tolist() == pytest.approx(want, abs=1e-15)
    assert g_r.tolist() == pytest.approx([-w for w in want], abs=1e-15)
    assert all(v.dim() == 0 and not v.requires_grad for v in out.metrics.values())


def test_dpo_label_smoothing_hand_computed_and_zero_is_plain_dpo():
    out, g_c, _ = run("dpo", PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    # (1 - eps) softplus(-x) + eps softplus(x), x = 0.1 h: pair 0: 0.9 * 0.598139 + 0.1 * 0.798139 = 0.618139;
    # pair 1: 0.9 * 0.744397 + 0.1 * 0.644397 = 0.734397; mean 0.676268 (= plain DPO + eps * mean(x)).
    p0 = 0.9 * softplus(-0.2) + 0.1 * softplus(0.2)
    p1 = 0.9 * softplus(0.1) + 0.1 * softplus(-0.1)
    assert out.loss.item() == pytest.approx((p0 + p1) / 2, abs=1e-15)
    assert out.loss.item() == pytest.approx(0.6712677646 + 0.1 * 0.05, abs=1e-9)
    # dL/dpc_i = -beta (sigmoid(-x_i) - eps) / B.
    want = [-0.1 * (sigmoid(-0.2) - 0.1) / 2, -0.1 * (sigmoid(0.1) - 0.1) / 2]
    assert g_c.tolist() == pytest.approx(want, abs=1e-15)
    # The limit eps = 0 is eq. 7 exactly, value and gradient.
    plain, gp_c, gp_r = run("dpo", PC, PR, RC, RR, beta=0.1)
    zero, gz_c, gz_r = run("dpo", PC, PR, RC, RR, beta=0.1, label_smoothing=0.0)
    assert zero.loss.item() == plain.loss.item()
    assert torch.equal(gz_c, gp_c) and torch.equal(gz_r, gp_r)
    tiny, _, _ = run("dpo", PC, PR, RC, RR, beta=0.1, label_smoothing=1e-12)
    assert tiny.loss.item() == pytest.approx(plain.loss.item(), abs=1e-12)


def test_ipo_hand_computed_values_metrics_and_gradients():
    out, g_c, g_r = run("ipo", PC, PR, RC, RR, ipo_tau=0.1)
    # target 1 / (2 * 0.1) = 5: (2 - 5)^2 = 9, (-1 - 5)^2 = 36, mean 22.5.
    assert out.loss.item() == pytest.approx(22.5, abs=1e-12)
    m = metrics(out)
    assert m["preference/reward_chosen"] == pytest.approx(0.5)  # unscaled log-ratios (1, 0)
    assert m["preference/reward_rejected"] == pytest.approx(0.0)  # (-1, 1)
    assert m["preference/reward_margin"] == pytest.approx(0.5)  # mean h
    assert m["preference/accuracy"] == 0.5
    # dL/dpc_i = 2 (h_i - 5) / B = (-3, -6).
    assert g_c.tolist() == pytest.approx([-3.0, -6.0], abs=1e-12)
    assert g_r.tolist() == pytest.approx([3.0, 6.0], abs=1e-12)
    # tau = 0.25: target 2, losses (0, 9), mean 4.5; the first pair sits on its target: no gradient.
    out, g_c, _ = run("ipo", PC, PR, RC, RR, ipo_tau=0.25)
    assert out.loss.item() == pytest.approx(4.5, abs=1e-12)
    assert g_c.tolist() == pytest.approx([0.0, -3.0], abs=1e-12)


def test_simpo_hand_computed_values_metrics_and_gradients():
    # Per-token mean log-probs (SimPO's input).
    pc, pr = t([-1.0, -0.5]), t([-1.5, -0.4])
    out, g_c, g_r = run("simpo", pc, pr, beta=2.0, simpo_gamma=1.0)
    # x_i = 2 (pc - pr) - 1 = (0, -1.2): softplus(0) = log 2 = 0.693147, softplus(1.2) = 1.463282;
    # mean 1.078215.
    expected = (math.log(2.0) + softplus(1.2)) / 2
    assert out.loss.item() == pytest.approx(expected, abs=1e-15)
    assert expected == pytest.approx(1.0782148, abs=1e-7)
    m = metrics(out)
    assert m["preference/reward_chosen"] == pytest.approx(-1.5)  # 2 * (-1, -0.5)
    assert m["preference/reward_rejected"] == pytest.approx(-1.9)  # 2 * (-1.5, -0.4)
    assert m["preference/reward_margin"] == pytest.approx(0.4)  # gamma not subtracted
    assert m["preference/accuracy"] == 0.5
    # dL/dpc_i = -beta sigmoid(-x_i) / B = (-2 * 0.5 / 2, -2 * sigmoid(1.2) / 2) = (-0.5, -0.768525).
    assert g_c.tolist() == pytest.approx([-0.5, -sigmoid(1.2)], abs=1e-15)
    assert g_r.tolist() == pytest.approx([0.5, sigmoid(1.2)], abs=1e-15)
    # gamma = 0: plain Bradley-Terry on the length-normalised rewards: softplus(-1), softplus(0.2).
    out, _, _ = run("simpo", pc, pr, beta=2.0, simpo_gamma=0.0)
    assert out.loss.item() == pytest.approx((softplus(-1.0) + softplus(0.2)) / 2, abs=1e-15)


def test_sft_term_is_the_per_token_nll_of_the_chosen_answer():
    lengths = torch.tensor([4, 5])  # integer token counts, as mask.sum(-1) gives them
    out, g_c, g_r = run("dpo", PC, PR, RC, RR, beta=0.1, sft_coef=0.5, chosen_lengths=lengths)
    # NLL_i = -pc_i / |y_w|: (10 / 4, 5 / 5) = (2.5, 1), mean 1.75; loss = 0.671268 + 0.5 * 1.75 = 1.546268.
    assert out.loss.item() == pytest.approx(0.6712677646 + 0.5 * 1.75, abs=1e-9)
    m = metrics(out)
    assert m["preference/sft_nll"] == pytest.approx(1.75, abs=1e-15)
    assert m["preference/loss"] == pytest.approx(out.loss.item(), abs=1e-15)
    # The extra gradient on pc_i is -sft_coef / (|y_w| B): (-0.0625, -0.05); rejected is untouched.
    want = [-0.1 * sigmoid(-0.2) / 2 - 0.0625, -0.1 * sigmoid(0.1) / 2 - 0.05]
    assert g_c.tolist() == pytest.approx(want, abs=1e-15)
    assert g_r.tolist() == pytest.approx([0.1 * sigmoid(-0.2) / 2, 0.1 * sigmoid(0.1) / 2], abs=1e-15)
    # IPO takes sums too: 22.5 + 1.0 * 1.75.
    out, _, _ = run("ipo", PC, PR, RC, RR, sft_coef=1.0, chosen_lengths=lengths.to(F64))
    assert out.loss.item() == pytest.approx(24.25, abs=1e-12)
    # SimPO's inputs are already per-token means: NLL = -pc = (1, 0.5), mean 0.75; no lengths needed.
    pc, pr = t([-1.0, -0.5]), t([-1.5, -0.4])
    base, _, _ = run("simpo", pc, pr)
    out, g_c, _ = run("simpo", pc, pr, sft_coef=2.0)
    assert out.loss.item() == pytest.approx(base.loss.item() + 2.0 * 0.75, abs=1e-15)
    assert g_c.tolist() == pytest.approx([-0.5 - 1.0, -sigmoid(1.2) - 1.0], abs=1e-15)


def test_sft_term_needs_positive_chosen_lengths_for_summed_logprobs():
    with pytest.raises(ConfigError, match="sft_coef > 0 with preference loss 'dpo' needs chosen_lengths"):
        run("dpo", PC, PR, RC, RR, sft_coef=1.0)
    with pytest.raises(ShapeError, match="chosen_lengths must be positive"):
        run("dpo", PC, PR, RC, RR, sft_coef=1.0, chosen_lengths=torch.tensor([3, 0]))
    with pytest.raises(ShapeError, match="chosen_lengths has shape"):
        run("ipo", PC, PR, RC, RR, sft_coef=1.0, chosen_lengths=torch.tensor([3, 4, 5]))
    out, _, _ = run("dpo", PC, PR, RC, RR, sft_coef=0.0)  # off: no lengths needed
    assert "preference/sft_nll" not in out.metrics


# --- properties shared by every loss ----------------------------------------------------------


def _random_pairs(seed, b=6):
    g = torch.Generator().manual_seed(seed)
    rc = -torch.rand(b, generator=g, dtype=F64) * 20 - 1
    rr = -torch.rand(b, generator=g, dtype=F64) * 20 - 1
    pc = rc + torch.randn(b, generator=g, dtype=F64)
    pr = rr + torch.randn(b, generator=g, dtype=F64)
    return pc, pr, rc, rr


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradient_pushes_chosen_up_and_rejected_down(name):
    pc, pr, rc, rr = _random_pairs(0)
    # IPO only below its target 1/(2 tau) = 5 nats, which these margins (|h| < 5) are.
    assert ((pc - rc) - (pr - rr)).abs().max() < 5
    for kw in ({}, {"label_smoothing": 0.1} if name == "dpo" else {}):
        _, g_c, g_r = run_any(name, pc / 10, pr / 10, rc / 10, rr / 10, **kw)
        assert (g_c < 0).all() and (g_r > 0).all()  # descent raises log pi(y_w), lowers log pi(y_l)


def test_ipo_pushes_back_once_the_margin_exceeds_its_target():
    # h = 8 > 1 / (2 * 0.1) = 5: the chosen log-prob is pushed down, the rejected one up.
    out, g_c, g_r = run("ipo", t([-2.0]), t([-10.0]), t([-2.0]), t([-2.0]), ipo_tau=0.1)
    assert out.loss.item() == pytest.approx(9.0)
    assert g_c.item() == pytest.approx(6.0) and g_r.item() == pytest.approx(-6.0)


@pytest.mark.parametrize("b", [1, 3])
def test_dpo_at_equal_policy_and_reference_is_log2_with_gradient_beta_over_2(b):
    pc, pr, _, _ = _random_pairs(1, b=b)
    beta = 0.3
    out, g_c, g_r = run("dpo", pc, pr, pc.clone(), pr.clone(), beta=beta)
    assert out.loss.item() == pytest.approx(math.log(2.0), abs=1e-15)
    # |dL_i/dpc_i| = beta sigmoid(-0) = beta / 2, divided by the B pairs of the mean.
    assert torch.allclose(g_c, torch.full((b,), -beta / 2 / b, dtype=F64), rtol=0, atol=1e-15)
    assert torch.allclose(g_r, torch.full((b,), beta / 2 / b, dtype=F64), rtol=0, atol=1e-15)
    m = metrics(out)
    assert m["preference/reward_margin"] == 0.0 and m["preference/accuracy"] == 0.0  # ties are not wins


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_permuting_the_pairs_changes_nothing(name):
    pc, pr, rc, rr = _random_pairs(2)
    lengths = torch.arange(3, 9)
    kw = dict(sft_coef=0.3, chosen_lengths=lengths)
    out, g_c, g_r = run_any(name, pc, pr, rc, rr, **kw)
    perm = torch.tensor([4, 0, 5, 2, 1, 3])
    kw["chosen_lengths"] = lengths[perm]
    out_p, gp_c, gp_r = run_any(name, pc[perm], pr[perm], rc[perm], rr[perm], **kw)
    assert out_p.loss.item() == pytest.approx(out.loss.item(), abs=1e-13)
    assert torch.allclose(gp_c, g_c[perm], atol=1e-15) and torch.allclose(gp_r, g_r[perm], atol=1e-15)
    for key, value in out.metrics.items():
        assert out_p.metrics[key].item() == pytest.approx(value.item(), abs=1e-13), key


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_micro_batches_with_num_pairs_add_up_to_the_full_batch(name):
    pc, pr, rc, rr = _random_pairs(3)
    lengths = torch.arange(3, 9)
    full, g_c, g_r = run_any(name, pc, pr, rc, rr, sft_coef=0.5, chosen_lengths=lengths)
    parts = [
        run_any(name, pc[s], pr[s], rc[s], rr[s], sft_coef=0.5, chosen_lengths=lengths[s], num_pairs=6)
        for s in (slice(0, 2), slice(2, 3), slice(3, 6))
    ]
    assert sum(p[0].loss.item() for p in parts) == pytest.approx(full.loss.item(), abs=1e-13)
    assert torch.allclose(torch.cat([p[1] for p in parts]), g_c, atol=1e-15)
    assert torch.allclose(torch.cat([p[2] for p in parts]), g_r, atol=1e-15)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_gradcheck_in_float64(name):
    pc, pr, rc, rr = _random_pairs(4, b=3)
    fn = PREFERENCE_LOSSES.get(name)
    refs = dict(reference_chosen=rc, reference_rejected=rr) if fn.needs_reference else {}
    kw = dict(label_smoothing=0.2) if name == "dpo" else {}

    def loss(c, r):
        return fn(
            policy_chosen=c, policy_rejected=r, sft_coef=0.3, chosen_lengths=t([3, 4, 5]), **refs, **kw
        ).loss

    inputs = (pc.clone().requires_grad_(True), pr.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(loss, inputs)
    if name == "dpo":  # plain eq. 7 too
        assert torch.autograd.gradcheck(
            lambda c, r: fn(policy_chosen=c, policy_rejected=r, **refs).loss, inputs
        )


def test_reference_log_probs_receive_no_gradient():
    rc, rr = RC.clone().requires_grad_(True), RR.clone().requires_grad_(True)
    out = PREFERENCE_LOSSES.get("dpo")(
        policy_chosen=PC.clone().requires_grad_(True),
        policy_rejected=PR.clone().requires_grad_(True),
        reference_chosen=rc,
        reference_rejected=rr,
    )
    out.loss.backward()
    assert rc.grad is None and rr.grad is None


@pytest.mark.parametrize("name", ["dpo", "simpo"])
def test_huge_margins_stay_finite(name):
    big = t([1e4, -1e4])
    out, g_c, _ = run_any(name, big, -big, torch.zeros(2, dtype=F64), torch.zeros(2, dtype=F64), beta=1.0)
    assert math.isfinite(out.loss.item()) and torch.isfinite(g_c).all()
    assert out.loss.item() == pytest.approx(2e4 / 2 + (1.0 if name == "simpo" else 0.0) / 2, rel=1e-12)


def test_an_empty_batch_gives_zero_not_nan():
    empty = torch.zeros(0, dtype=F64)
    out = PREFERENCE_LOSSES.get("dpo")(
        policy_chosen=empty, policy_rejected=empty, reference_chosen=empty, reference_rejected=empty
    )
    assert out.loss.item() == 0.0
    assert all(v.item() == 0.0 for v in out.metrics.values())


# --- registry, signature, errors --------------------------------------------------------------


def test_registry_lists_the_losses_and_hints_the_nearest_name():
    assert ALL_LOSSES == ["dpo", "ipo", "simpo"]
    with pytest.raises(UnknownNameError, match="unknown preference loss 'dpoo'; did you mean 'dpo'") as err:
        PREFERENCE_LOSSES.get("dpoo")
    assert "valid: dpo, ipo, simpo" in str(err.value)
    with pytest.raises(UnknownNameError, match="did you mean 'simpo'"):
        PREFERENCE_LOSSES.get("sim_po")


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_one_signature_every_hyperparameter_keyword_only_with_a_default(name):
    fn = PREFERENCE_LOSSES.get(name)
    params = inspect.signature(fn).parameters
    assert all(p.kind is p.KEYWORD_ONLY for p in params.values())
    assert set(PREFERENCE_TENSOR_ARGS) <= set(params)
    hp = hyperparameters(fn, PREFERENCE_TENSOR_ARGS)
    assert "sft_coef" in hp and hp["sft_coef"] == 0.0
    assert all(v is not inspect.Parameter.empty for v in hp.values())
    assert isinstance(fn.average_logprobs, bool) and isinstance(fn.needs_reference, bool)
    assert fn.average_logprobs == (name == "simpo") and fn.needs_reference == (name != "simpo")


@pytest.mark.parametrize(
    "name, kw, message",
    [
        ("dpo", {"beta": 0.0}, "beta must be > 0.0"),
        ("dpo", {"beta": -1.0}, "beta must be > 0.0"),
        ("dpo", {"beta": math.nan}, "beta must be a finite number"),
        ("dpo", {"beta": True}, "beta must be a finite number"),
        ("dpo", {"label_smoothing": 0.5}, "label_smoothing must be < 0.5"),
        ("dpo", {"label_smoothing": -0.1}, "label_smoothing must be >= 0.0"),
        ("dpo", {"sft_coef": -1.0}, "sft_coef must be >= 0.0"),
        ("ipo", {"ipo_tau": 0.0}, "ipo_tau must be > 0.0"),
        ("ipo", {"ipo_tau": math.inf}, "ipo_tau must be a finite number"),
        ("simpo", {"beta": 0.0}, "beta must be > 0.0"),
        ("simpo", {"simpo_gamma": -0.5}, "simpo_gamma must be >= 0.0"),
    ],
)
def test_bad_hyperparameters_are_errors_that_name_them(name, kw, message):
    with pytest.raises(ConfigError, match=message):
        run_any(name, PC, PR, RC, RR, **kw)


@pytest.mark.parametrize("name", ["dpo", "ipo"])
def test_a_missing_reference_is_an_error_naming_the_loss(name):
    with pytest.raises(ConfigError, match=f"preference loss '{name}' needs reference_chosen") as err:
        run(name, PC, PR, RC, None)
    assert "reference-free losses: simpo" in str(err.value)
    with pytest.raises(ConfigError, match=f"'{name}'"):
        run(name, PC, PR)


def test_a_reference_given_to_a_reference_free_loss_is_refused():
    with pytest.raises(ConfigError, match="'simpo' is reference-free"):
        run("simpo", PC, PR, RC, RR)


def test_shapes_and_dtypes_are_checked():
    with pytest.raises(ShapeError, match="policy_rejected has shape"):
        run("dpo", PC, t([-1.0, -2.0, -3.0]), RC, RR)
    with pytest.raises(ShapeError, match="reference_chosen has shape"):
        run("dpo", PC, PR, t([-1.0]), RR)
    with pytest.raises(ShapeError, match="policy_chosen must be 1-D"):
        run("dpo", PC[None], PR[None], RC[None], RR[None])
    with pytest.raises(ShapeError, match="reference_rejected must be a floating tensor"):
        PREFERENCE_LOSSES.get("dpo")(
            policy_chosen=PC, policy_rejected=PR, reference_chosen=RC, reference_rejected=torch.tensor([1, 2])
        )


def test_float32_inputs_with_float64_references_compute_in_the_policy_dtype():
    out = PREFERENCE_LOSSES.get("dpo")(
        policy_chosen=PC.float(), policy_rejected=PR.float(), reference_chosen=RC, reference_rejected=RR
    )
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(0.6712677646, abs=1e-6)


def test_docstring_examples_run():
    assert doctest.testmod(preference_module, extraglobs={"torch": torch}).failed == 0
