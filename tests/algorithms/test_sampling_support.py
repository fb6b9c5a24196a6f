"""The top-k / top-p support replayed on the trainer side: truncated log-probabilities against
hand-computed values and an independent reference, their gradient, and -inf kept out of the losses."""

import math

import pytest
import torch

from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.entropy import token_logprobs
from rlvr.algorithms.losses import POLICY_LOSS_TENSOR_ARGS, POLICY_LOSSES
from rlvr.algorithms.sampling_support import (
    SamplingSupport,
    neutralize_outside_support,
    truncated_token_logprobs,
)
from rlvr.errors import ConfigError

F64 = torch.float64
NEG_INF = -math.inf
PROBS = [0.5, 0.25, 0.15, 0.1]


def every_token(probs, **kw):
    """The truncated logprob of each vocabulary token at one position: [V]."""
    v = len(probs)
    logits = torch.tensor(probs, dtype=F64).log().expand(1, v, v).contiguous()  # [1, T = V, V]
    return truncated_token_logprobs(logits, torch.arange(v)[None], **kw)[0]


def assert_logprobs(got, expected):
    assert got.dtype == F64
    for g, e in zip(got.tolist(), expected, strict=True):
        assert g == e if e == NEG_INF else g == pytest.approx(e, abs=1e-12)


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        # top_p 0.7: mass above the tokens (0, 0.5, 0.75, 0.9): the first two, renormalised by 0.75.
        ({"top_p": 0.7}, [math.log(2 / 3), math.log(1 / 3), NEG_INF, NEG_INF]),
        # top_k 2 alone: the same two tokens.
        ({"top_k": 2}, [math.log(2 / 3), math.log(1 / 3), NEG_INF, NEG_INF]),
        # top_k 3 renormalises to (0.5556, 0.2778, 0.1667); 0.8333 above the third: top_p 0.8 drops it,
        ({"top_k": 3, "top_p": 0.8}, [math.log(2 / 3), math.log(1 / 3), NEG_INF, NEG_INF]),
        # top_p 0.9 keeps it (0.8333 < 0.9): the three renormalised by 0.9.
        (
            {"top_k": 3, "top_p": 0.9},
            [math.log(0.5 / 0.9), math.log(0.25 / 0.9), math.log(0.15 / 0.9), NEG_INF],
        ),
        # top_p 0.3: the most likely token is always kept, probability 1.
        ({"top_p": 0.3}, [0.0, NEG_INF, NEG_INF, NEG_INF]),
        # nothing truncated: the plain log-probabilities.
        ({}, [math.log(p) for p in PROBS]),
    ],
)
def test_hand_computed_truncated_logprobs(kw, expected):
    assert_logprobs(every_token(PROBS, **kw), expected)


def test_temperature_is_applied_before_the_truncation():
    # softmax(log p / 2) is proportional to sqrt(p) = (0.7071, 0.5, 0.3873, 0.3162), total 1.9106:
    # (0.3701, 0.2617, 0.2027, 0.1655). The mass above the third is 0.6318 < 0.7, above the fourth
    # 0.8345 >= 0.7: three kept, each sqrt(p_i) / (0.7071 + 0.5 + 0.3873).
    kept = sum(math.sqrt(p) for p in PROBS[:3])
    expected = [math.log(math.sqrt(p) / kept) for p in PROBS[:3]] + [NEG_INF]
    assert_logprobs(every_token(PROBS, temperature=2.0, top_p=0.7), expected)


def test_ties_at_the_kth_logit_are_all_kept():
    # Logits (1, 1, 0, -1), top_k 1: both tokens at the largest value stay, each with 1/2.
    logits = torch.tensor([1.0, 1.0, 0.0, -1.0], dtype=F64).expand(1, 4, 4).contiguous()
    got = truncated_token_logprobs(logits, torch.arange(4)[None], top_k=1)[0]
    assert_logprobs(got, [math.log(0.5), math.log(0.5), NEG_INF, NEG_INF])


def reference_support(z, top_k, top_p):
    """An independent nucleus: sort the tempered probabilities, keep while the mass above < top_p."""
    p = torch.softmax(z, -1)
    keep = torch.zeros_like(p, dtype=torch.bool)
    for row in range(p.shape[0]):
        order = sorted(range(p.shape[1]), key=lambda v: -p[row, v].item())
        if top_k:
            order = order[:top_k]
        mass = sum(p[row, v].item() for v in order)
        above = 0.0
        for v in order:
            if above < top_p * mass:
                keep[row, v] = True
            above += p[row, v].item()
    return keep


@pytest.mark.parametrize(("top_k", "top_p", "temperature"), [(5, 0.8, 1.0), (0, 0.6, 0.7), (3, 1.0, 1.3)])
def test_untruncated_minus_truncated_is_the_log_of_the_kept_mass(top_k, top_p, temperature):
    g = torch.Generator().manual_seed(0)
    logits = 2.0 * torch.randn(3, 6, 20, generator=g, dtype=F64)
    z = (logits / temperature).reshape(-1, 20)
    keep = reference_support(z, top_k, top_p)  # [18, 20]
    mass = torch.where(keep, torch.softmax(z, -1), 0.0).sum(-1)  # [18]
    for token in range(20):
        ids = torch.full((3, 6), token)
        truncated = truncated_token_logprobs(logits, ids, temperature=temperature, top_k=top_k, top_p=top_p)
        full = token_logprobs(logits, ids, temperature=temperature)
        inside = keep[:, token].reshape(3, 6)
        assert torch.equal(torch.isfinite(truncated), inside)
        torch.testing.assert_close(
            (full - truncated)[inside], mass.log().reshape(3, 6)[inside], rtol=0, atol=1e-12
        )


def test_gradient_is_that_of_the_renormalised_distribution_and_zero_outside():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 12, generator=g, dtype=F64)
    ids = torch.randint(0, 12, (2, 5), generator=g)
    ids[0, :3] = logits[0, :3].argmax(-1)  # surely inside
    kw = dict(temperature=0.8, top_k=6, top_p=0.7)
    weight = torch.randn(2, 5, generator=g, dtype=F64)

    x = logits.clone().requires_grad_()
    lp = truncated_token_logprobs(x, ids, **kw, chunk_size=3)  # blocks cut across rows
    assert (~torch.isfinite(lp)).any() and torch.isfinite(lp).any()
    inside = torch.isfinite(lp)
    torch.where(inside, lp * weight, 0.0).sum().backward()

    y = logits.clone().requires_grad_()
    z = y / 0.8
    keep = reference_support(z.detach().reshape(-1, 12), 6, 0.7).reshape(2, 5, 12)
    ref = z.gather(-1, ids[..., None]).squeeze(-1) - torch.logsumexp(torch.where(keep, z, NEG_INF), -1)
    torch.where(inside, ref * weight, 0.0).sum().backward()
    torch.testing.assert_close(lp[inside], ref[inside].detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(x.grad, y.grad, rtol=0, atol=1e-12)
    assert torch.isfinite(x.grad).all()
    assert (x.grad[~inside] == 0).all()  # a token outside the support: log pi_T is constant there


def test_gradcheck_inside_the_support():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 6, generator=g, dtype=F64)
    ids = logits.argmax(-1)  # the most likely token is always inside

    def fn(x):
        return truncated_token_logprobs(x, ids, top_k=4, top_p=0.9, temperature=1.5)

    assert torch.autograd.gradcheck(fn, (logits.clone().requires_grad_(),), eps=1e-6, atol=1e-8)


def test_chunking_and_float32_agree():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 7, 30, generator=g)
    ids = torch.randint(0, 30, (3, 7), generator=g)
    kw = dict(top_k=10, top_p=0.85, temperature=0.9)
    whole = truncated_token_logprobs(logits, ids, **kw)
    assert whole.dtype == torch.float32
    assert torch.equal(whole, truncated_token_logprobs(logits, ids, **kw, chunk_size=4))
    double = truncated_token_logprobs(logits.double(), ids, **kw)
    assert torch.equal(torch.isfinite(whole), torch.isfinite(double))
    finite = torch.isfinite(whole)
    torch.testing.assert_close(whole[finite].double(), double[finite], rtol=0, atol=1e-5)


def test_bad_settings_name_them():
    logits, ids = torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(ConfigError, match="top_p"):
        truncated_token_logprobs(logits, ids, top_p=0.0)
    with pytest.raises(ConfigError, match="top_k"):
        truncated_token_logprobs(logits, ids, top_k=-1)
    with pytest.raises(ConfigError, match="top_k"):
        SamplingSupport(top_k=1.5)  # type: ignore[arg-type]
    assert SamplingSupport(top_p=0.9).truncates and not SamplingSupport().truncates


# --- -inf never reaches a loss --------------------------------------------------------------------


def test_neutralize_replaces_both_sides_by_one_stand_in_without_gradient():
    lp = torch.tensor([[-1.0, NEG_INF, -2.0, NEG_INF, -0.5]], dtype=F64, requires_grad=True)
    old = torch.tensor([[-1.5, -3.0, NEG_INF, NEG_INF, -0.7]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1, 0]], dtype=torch.bool)
    new_lp, new_old, outside = neutralize_outside_support(lp, old, mask)
    # the old logprob when finite, else the current one, else 0; untouched where both are finite
    assert new_lp.tolist() == [[-1.0, -3.0, -2.0, 0.0, -0.5]]
    assert new_old.tolist() == [[-1.5, -3.0, -2.0, 0.0, -0.7]]
    assert outside.tolist() == [[False, True, True, True, False]]
    new_lp.sum().backward()
    assert lp.grad.tolist() == [[1.0, 0.0, 0.0, 0.0, 1.0]]


@pytest.mark.parametrize("name", POLICY_LOSSES.names())
def test_every_policy_loss_stays_finite_with_tokens_outside_the_support(name):
    g = torch.Generator().manual_seed(4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[2, 3:] = False
    old = -torch.rand(3, 5, generator=g, dtype=F64) * 3
    lp = (old + 0.1 * torch.randn(3, 5, generator=g, dtype=F64)).requires_grad_()
    adv = torch.tensor([[1.0], [-1.0], [0.5]], dtype=F64).expand(3, 5) * mask
    outside = torch.zeros(3, 5, dtype=torch.bool)
    outside[0, 1] = outside[1, 2] = outside[2, 4] = True  # the last one is padding
    current = torch.where(outside, NEG_INF, lp)  # left the support after an update
    stale_old = old.clone()
    stale_old[1, 0] = NEG_INF  # a recomputed old logprob outside the trainer's support
    fn = POLICY_LOSSES.get(name)
    hp = hyperparameters_for(fn, AlgorithmConfig(), POLICY_LOSS_TENSOR_ARGS)
    safe_lp, safe_old, _ = neutralize_outside_support(current, stale_old, mask)
    kw = dict(logprobs=safe_lp, old_logprobs=safe_old, advantages=adv, mask=mask, **hp)
    select = getattr(fn, "select_tokens", None)
    if select is not None:
        from rlvr.algorithms.covariance import SELECTION_ARGS

        select_hp = hyperparameters_for(
            select, AlgorithmConfig(), (*POLICY_LOSS_TENSOR_ARGS, *SELECTION_ARGS)
        )
        kw["token_selection"] = select(
            logprobs=safe_lp.detach(),
            old_logprobs=safe_old,
            advantages=adv,
            mask=mask,
            positions=torch.arange(3),
            generator=torch.Generator().manual_seed(0),
            **select_hp,
        )
    out = fn(**kw, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    (grad,) = torch.autograd.grad(out.loss, lp, allow_unused=True)
    if grad is not None:
        assert torch.isfinite(grad).all()
        assert (grad[outside] == 0).all() and grad[1, 0] == 0  # no gradient through a replaced token
