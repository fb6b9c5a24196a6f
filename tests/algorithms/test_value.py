import doctest
import math
import subprocess
import sys

import pytest
import torch

import rlvr.algorithms.value as value_module
from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.value import VALUE_LOSSES, VALUE_TENSOR_ARGS, explained_variance, value_loss_fn
from rlvr.errors import ConfigError, ShapeError, UnknownNameError

F64 = torch.float64

# Three response tokens with V_old = 0, R = 1, clip 0.2, and one padding position:
#   V =  0.5: max((0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64) = 0.64 -> 0.32, clipped term wins (no gradient)
#   V =  0.1: inside [-0.2, 0.2]: both 0.81 -> 0.405, gradient V - R = -0.9
#   V = -0.5: max(2.25, (-0.2-1)^2 = 1.44) = 2.25 -> 1.125, unclipped wins, gradient V - R = -1.5
VALUES = torch.tensor([[0.5, 0.1, -0.5, 7.0]], dtype=F64)
OLD = torch.tensor([[0.0, 0.0, 0.0, 7.0]], dtype=F64)
RETURNS = torch.tensor([[1.0, 1.0, 1.0, 7.0]], dtype=F64)
MASK = torch.tensor([[True, True, True, False]])


def _loss(values=VALUES, **kw):
    args = dict(values=values, old_values=OLD, returns=RETURNS, mask=MASK)
    return value_loss_fn(**{**args, **kw})


def test_clipped_value_loss_hand_case_values_gradients_and_metrics():
    v = VALUES.clone().requires_grad_(True)
    out = _loss(v)
    assert out.loss.item() == pytest.approx((0.32 + 0.405 + 1.125) / 3, abs=1e-15)  # token-mean
    out.loss.backward()
    torch.testing.assert_close(v.grad, torch.tensor([[0.0, -0.9 / 3, -1.5 / 3, 0.0]], dtype=F64))
    m = out.metrics
    assert m["value/loss"].item() == pytest.approx(out.loss.item(), abs=0)
    assert m["value/clipfrac"].item() == pytest.approx(1 / 3, abs=1e-15)  # only V = 0.5
    assert m["value/mean"].item() == pytest.approx((0.5 + 0.1 - 0.5) / 3, abs=1e-15)
    assert m["value/return_mean"].item() == pytest.approx(1.0, abs=1e-15)
    assert "value/explained_variance" not in m  # a batch metric (it sums over ranks), not a per-call one
    assert all(not t.requires_grad and t.dim() == 0 for t in m.values())


def test_mse_is_half_squared_error_and_needs_no_old_values():
    v = VALUES.clone().requires_grad_(True)
    out = _loss(v, value_loss="mse", old_values=None)
    assert out.loss.item() == pytest.approx(0.5 * (0.25 + 0.81 + 2.25) / 3, abs=1e-15)
    out.loss.backward()
    torch.testing.assert_close(v.grad, torch.tensor([[-0.5 / 3, -0.9 / 3, -1.5 / 3, 0.0]], dtype=F64))
    assert out.metrics["value/clipfrac"].item() == 0.0


@pytest.mark.parametrize(
    "value_clip,expected_loss,expected_grad,clipfrac",
    [
        (0.4, 0.5 * (0.4 - 1) ** 2, 0.0, 1.0),  # V = 0.5 outside [-0.4, 0.4]: clipped at 0.4, no gradient
        (0.6, 0.5 * (0.5 - 1) ** 2, 0.5 - 1, 0.0),  # inside [-0.6, 0.6]: plain 0.5 (V - R)^2
    ],
)
def test_clipping_switches_at_the_clip_range(value_clip, expected_loss, expected_grad, clipfrac):
    v = torch.tensor([[0.5]], dtype=F64, requires_grad=True)
    out = value_loss_fn(
        values=v, old_values=torch.zeros(1, 1, dtype=F64), returns=torch.ones(1, 1, dtype=F64),
        mask=torch.ones(1, 1, dtype=torch.bool), value_clip=value_clip,
    )  # fmt: skip
    assert out.loss.item() == pytest.approx(expected_loss, abs=1e-15)
    out.loss.backward()
    assert v.grad.item() == pytest.approx(expected_grad, abs=1e-15)
    assert out.metrics["value/clipfrac"].item() == clipfrac


def test_clipped_loss_gradcheck_away_from_the_kinks():
    torch.manual_seed(2)
    old = torch.randn(3, 4, dtype=F64)
    returns = torch.randn(3, 4, dtype=F64)
    values = (old + 0.5 * torch.randn(3, 4, dtype=F64)).requires_grad_(True)
    mask = torch.rand(3, 4) > 0.2

    def f(v):
        return value_loss_fn(values=v, old_values=old, returns=returns, mask=mask, value_clip=0.3).loss

    assert torch.autograd.gradcheck(f, (values,))


@pytest.mark.parametrize("value_loss", ["clipped", "mse"])
def test_padding_values_even_nan_change_nothing(value_loss):
    v = VALUES.clone().requires_grad_(True)
    base = _loss(v, value_loss=value_loss)
    base.loss.backward()
    bad_values = VALUES.clone()
    bad_values[0, 3] = math.nan
    bad = bad_values.requires_grad_(True)
    old, ret = OLD.clone(), RETURNS.clone()
    old[0, 3], ret[0, 3] = math.inf, -math.inf
    out = value_loss_fn(values=bad, old_values=old, returns=ret, mask=MASK.double(), value_loss=value_loss)
    out.loss.backward()
    assert out.loss.item() == base.loss.item()
    torch.testing.assert_close(bad.grad, v.grad, rtol=0, atol=0)
    for key in ("value/mean", "value/return_mean", "value/clipfrac"):
        assert out.metrics[key].item() == base.metrics[key].item()


def test_micro_batches_with_global_counts_add_up():
    torch.manual_seed(1)
    values, old, returns = (torch.randn(6, 5, dtype=F64) for _ in range(3))
    mask = torch.rand(6, 5) > 0.3
    mask[:, 0] = True
    full = value_loss_fn(values=values, old_values=old, returns=returns, mask=mask)
    parts = [
        value_loss_fn(
            values=values[i : i + 2],
            old_values=old[i : i + 2],
            returns=returns[i : i + 2],
            mask=mask[i : i + 2],
            num_tokens=mask.sum(),
        )  # fmt: skip
        for i in (0, 2, 4)
    ]
    assert sum(p.loss for p in parts).item() == pytest.approx(full.loss.item(), abs=1e-14)
    # Metrics are means over each call's own tokens: a token-weighted average recovers the whole.
    weights = [mask[i : i + 2].sum().item() / mask.sum().item() for i in (0, 2, 4)]
    for key in ("value/clipfrac", "value/mean", "value/return_mean"):
        combined = sum(w * p.metrics[key] for w, p in zip(weights, parts, strict=True))
        assert combined.item() == pytest.approx(full.metrics[key].item(), abs=1e-14)


def test_explained_variance_perfect_constant_and_hand_case():
    returns = torch.tensor([[1.0, 3.0, 2.0], [4.0, 0.0, 9.0]], dtype=F64)
    mask = torch.tensor([[True, True, True], [True, False, False]])  # R = (1, 3, 2, 4): mean 2.5
    assert explained_variance(returns, returns, mask) == 1.0
    mean_prediction = torch.full_like(returns, 2.5)
    assert explained_variance(mean_prediction, returns, mask) == pytest.approx(0.0, abs=1e-15)
    # V = R + (0.5, -0.5, 0.5, -0.5): Var[R - V] = 0.25; Var[R] = (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    noisy = returns + torch.tensor([[0.5, -0.5, 0.5], [-0.5, 99.0, 99.0]], dtype=F64)
    assert explained_variance(noisy, returns, mask) == pytest.approx(1 - 0.25 / 1.25, abs=1e-15)
    # Worse than the constant: negative.
    assert explained_variance(-returns, returns, mask) < 0


def test_explained_variance_undefined_cases_return_zero_not_nan():
    mask = torch.ones(2, 3, dtype=torch.bool)
    constant = torch.full((2, 3), 0.1, dtype=F64)  # 0.1 is not exact in binary: the mean has rounding
    assert explained_variance(torch.randn(2, 3, dtype=F64), constant, mask) == 0.0
    assert explained_variance(torch.randn(2, 3, dtype=F64), torch.zeros(2, 3, dtype=F64), mask) == 0.0
    assert explained_variance(torch.randn(2, 3, dtype=F64), torch.randn(2, 3, dtype=F64), ~mask) == 0.0


EV_WORKER = """
import sys, torch, torch.distributed as dist
from rlvr.algorithms.value import explained_variance
rank, store, out_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
values, returns, mask = torch.load(out_dir + "/batch.pt")
rows = slice(3 * rank, 3 * rank + 3)
torch.save(explained_variance(values[rows], returns[rows], mask[rows]), out_dir + f"/rank{rank}.pt")
dist.barrier()  # both ranks done before either leaves the group
dist.destroy_process_group()
"""


def test_explained_variance_on_two_ranks_equals_one_rank(tmp_path):
    torch.manual_seed(4)
    returns = torch.randn(6, 5, dtype=F64)
    values = returns + 0.5 * torch.randn(6, 5, dtype=F64)
    mask = torch.rand(6, 5) > 0.3
    mask[3:, 2:] = False  # the ranks hold different numbers of tokens
    torch.save((values, returns, mask), tmp_path / "batch.pt")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", EV_WORKER, str(r), str(tmp_path / "store"), str(tmp_path)],
            stderr=subprocess.PIPE,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    whole = explained_variance(values, returns, mask)
    local = explained_variance(values[:3], returns[:3], mask[:3])
    for r in range(2):
        assert torch.load(tmp_path / f"rank{r}.pt") == pytest.approx(whole, abs=1e-12)
    assert abs(local - whole) > 1e-3  # the global value really differs from a rank's own


def test_hyperparameters_are_config_fields():
    cfg = AlgorithmConfig()
    assert hyperparameters_for(value_loss_fn, cfg, VALUE_TENSOR_ARGS) == {
        "aggregation": cfg.aggregation,
        "value_loss": "clipped",
        "value_clip": 0.2,
    }
    assert set(VALUE_LOSSES.names()) == {"clipped", "mse"}


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(UnknownNameError, match="unknown value loss 'clip'; did you mean 'clipped'"):
        _loss(value_loss="clip")
    with pytest.raises(ShapeError, match="needs old_values"):
        _loss(old_values=None)
    with pytest.raises(ConfigError, match="value_clip must be positive"):
        _loss(value_clip=0.0)
    with pytest.raises(ShapeError, match="returns has shape"):
        _loss(returns=RETURNS[:, :2])
    with pytest.raises(ShapeError, match="values must be a floating"):
        _loss(values=VALUES.long())
    with pytest.raises(ShapeError, match="mask must be a bool or floating"):
        _loss(mask=MASK.int())


def test_docstring_examples():
    assert doctest.testmod(value_module, extraglobs={"torch": torch}).failed == 0


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_clipfrac_counts_no_token_inside_the_clip_window(dtype):
    # Values far inside the window (|V - V_old| <= 20 against a clip of 100): V_old + (V - V_old)
    # rounds away from V for some of them, and where that makes the clipped term larger by one
    # rounding step it must still not count as clipped.
    g = torch.Generator().manual_seed(0)
    old = (torch.rand(64, 256, generator=g, dtype=F64) * 2 - 1).to(dtype)
    values = (torch.rand(64, 256, generator=g, dtype=F64) * 20 - 10).to(dtype)
    returns = (torch.randn(64, 256, generator=g, dtype=F64) * 3).to(dtype)
    rounded = old + (values - old).clamp(-100.0, 100.0)
    assert ((rounded - returns).square() > (values - returns).square()).any()  # the hazard is present
    mask = torch.ones(64, 256, dtype=torch.bool)
    out = value_loss_fn(values=values, old_values=old, returns=returns, mask=mask, value_clip=100.0)
    assert out.metrics["value/clipfrac"].item() == 0.0
