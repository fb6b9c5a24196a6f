"""The critic's loss (PPO's clipped value loss or plain MSE) and the explained variance of its values.

Clipped value loss, per response token, with values V, old values V_old (the critic's values at
rollout time), returns R and clip range c (``value_clip``)::

    clipped:  0.5 * max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)
    mse:      0.5 * (V - R)^2

The clipped form is OpenAI baselines' PPO2 (``ppo2/model.py``: ``vf_loss = .5 * mean(maximum(...))``),
studied as "value function clipping", the first code-level optimization of Engstrom et al. 2020,
"Implementation Matters in Deep Policy Gradients" (arXiv 2005.12729); the PPO paper itself (arXiv
1707.06347 eq. 9) has the plain squared error (V - R)^2 with coefficient c1. rlvr follows the code:
the max (a pessimistic bound, like the policy's clip; the formula printed by Engstrom et al. takes a
min) and the factor 0.5, so that d loss / d V = V - R and ``mse`` and ``clipped`` agree wherever the
clip is inactive. Where the clipped term wins, V lies outside [V_old - c, V_old + c] on the far side
from R and the token's gradient is zero.

Worked example, c = 0.2, V_old = 0, R = 1: V = 0.5 -> max(0.25, (0.2 - 1)^2 = 0.64) -> 0.32 (clipped,
zero gradient); V = 0.1 -> max(0.81, 0.81) -> 0.405 (clip inactive, gradient V - R = -0.9).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from rlvr.algorithms.aggregation import aggregate
from rlvr.algorithms.checks import check_mask, check_same_shape, check_tensor
from rlvr.algorithms.outputs import LossOutput
from rlvr.distributed import all_reduce_sum
from rlvr.errors import ConfigError, ShapeError
from rlvr.registry import Registry

# A value-loss form: (values, old_values, returns, value_clip) -> (per-token loss [B, T], clipped [B, T] bool).
ValueLossForm = Callable[
    [torch.Tensor, torch.Tensor | None, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]
]

VALUE_LOSSES: Registry[ValueLossForm] = Registry("value loss")

VALUE_TENSOR_ARGS: tuple[str, ...] = (
    "values",
    "old_values",
    "returns",
    "mask",
    "num_tokens",
    "num_sequences",
    "norm_length",
)
"""Arguments of :func:`value_loss_fn` the loop supplies; the rest are config fields."""

CONSTANT_RETURNS_RTOL = 1e-8
"""Returns whose standard deviation is below this fraction of |mean| count as constant."""


@VALUE_LOSSES.register("clipped")
def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor | None, returns: torch.Tensor, value_clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    if old_values is None:
        raise ShapeError("value_loss 'clipped' needs old_values, the critic's values at rollout time")
    if not value_clip > 0:
        raise ConfigError(f"value_clip must be positive for value_loss 'clipped', got {value_clip!r}")
    change = values - old_values
    clipped_values = old_values + change.clamp(-value_clip, value_clip)
    unclipped_loss = (values - returns).square()
    clipped_loss = (clipped_values - returns).square()
    # Inside the window old + (v - old) can miss v by a rounding step, so the clipped term may
    # "win" by that step: a token counts as clipped only when its change leaves the window.
    clipped = (change.abs() > value_clip) & (clipped_loss > unclipped_loss)
    return 0.5 * torch.maximum(unclipped_loss, clipped_loss), clipped


@VALUE_LOSSES.register("mse")
def mse_value_loss(
    values: torch.Tensor, old_values: torch.Tensor | None, returns: torch.Tensor, value_clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return 0.5 * (values - returns).square(), torch.zeros(
        values.shape, dtype=torch.bool, device=values.device
    )


def value_loss_fn(
    *,
    values: torch.Tensor,
    old_values: torch.Tensor | None,
    returns: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    aggregation: str = "token-mean",
    value_loss: str = "clipped",
    value_clip: float = 0.2,
) -> LossOutput:
    """The critic loss, aggregated with ``aggregation`` (see the module doc for the formulas).

    ``values`` [B, T] are the critic's current (differentiable) values, ``old_values`` [B, T] its
    values at rollout time (may be None for ``mse``), ``returns`` [B, T] the value targets from the
    advantage estimator, ``mask`` [B, T] the response tokens. Padding values never matter, not even
    inf or nan. ``returns`` and ``old_values`` are targets: no gradient flows into them.

    Metrics (detached, 0-D): ``value/loss``; ``value/clipfrac`` (fraction of response tokens whose
    change ``V - V_old`` leaves the clip window and whose clipped term wins), ``value/mean`` and
    ``value/return_mean``: means over this call's response tokens (like the policy losses' metrics). The loss runs no collective (it is called
    once per micro-batch, whose number differs between ranks): the batch's explained variance is
    :func:`explained_variance`, which sums over ranks.
    """
    form = VALUE_LOSSES.get(value_loss)
    values = check_tensor(values, "values", 2)
    check_same_shape("values", values, old_values=old_values, returns=returns)
    check_mask(mask, "mask", tuple(values.shape))
    for name, t in (("values", values), ("old_values", old_values), ("returns", returns)):
        if t is not None and not t.dtype.is_floating_point:
            raise ShapeError(f"{name} must be a floating tensor, got dtype {t.dtype}")

    valid = mask.bool()

    def masked(t: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, t, torch.zeros_like(t))

    v, r = masked(values), masked(returns.detach())
    v_old = None if old_values is None else masked(old_values.detach())
    per_token, clipped = form(v, v_old, r, value_clip)
    per_token = masked(per_token)
    loss = aggregate(
        per_token,
        mask,
        aggregation,
        num_tokens=num_tokens,
        num_sequences=num_sequences,
        norm_length=norm_length,
    )

    def token_mean(t: torch.Tensor) -> torch.Tensor:
        return aggregate(t.detach().to(v.dtype), mask, "token-mean")

    metrics = {
        "value/loss": loss.detach(),
        "value/clipfrac": token_mean(clipped & valid),
        "value/mean": token_mean(v),
        "value/return_mean": token_mean(r),
    }
    return LossOutput(loss=loss, metrics=metrics)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over the response tokens of the global batch (summed over ranks).

    1 means the values predict the returns perfectly, 0 that they explain none of their variance
    (e.g. every value equals the mean return), negative that they do worse than that constant.
    Variances are population variances (the Bessel factor cancels in the ratio), computed in float64
    in two passes (means first) with :func:`rlvr.distributed.all_reduce_sum`.

    Undefined cases return 0.0 rather than nan (a nan metric reads as a failed step): no response
    token in the batch, or constant returns (standard deviation below ``CONSTANT_RETURNS_RTOL``
    times |mean|, exactly 0 when the mean is 0) -- common in RLVR, where a batch whose completions
    all score the same has constant returns when gamma = lambda = 1.

    >>> explained_variance(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 3.0]]), torch.ones(1, 2))
    0.75

    (R = (1, 3): Var[R] = 1; R - V = (0, 1): Var = 0.25; 1 - 0.25 / 1 = 0.75.)
    """
    values = check_tensor(values, "values", 2)
    check_same_shape("values", values, returns=returns)
    check_mask(mask, "mask", tuple(values.shape))
    m = mask.detach().to(torch.float64)
    r = torch.where(mask.bool(), returns.detach().to(torch.float64), 0.0)
    d = torch.where(mask.bool(), r - values.detach().to(torch.float64), 0.0)

    count, sum_r, sum_d = all_reduce_sum(torch.stack([m.sum(), r.sum(), d.sum()])).tolist()
    if count == 0:
        return 0.0
    mean_r, mean_d = sum_r / count, sum_d / count
    sq = torch.stack([((r - mean_r) * m).square().sum(), ((d - mean_d) * m).square().sum()])
    ss_r, ss_d = all_reduce_sum(sq).tolist()
    var_r, var_d = ss_r / count, ss_d / count
    if var_r <= (CONSTANT_RETURNS_RTOL * mean_r) ** 2:
        return 0.0
    ev = 1.0 - var_d / var_r
    return ev if math.isfinite(ev) else 0.0
