"""KL divergence to the reference policy: per-token estimators, the KL loss term, and KL-in-reward.

With samples ``y ~ pi`` and ``log_ratio = log pi(y) - log pi_ref(y)``, Schulman's estimators of
KL(pi || pi_ref) ("Approximating KL Divergence", 2020, http://joschu.net/blog/kl-approx.html; there
``r = pi_ref(y) / pi(y)``, so ``log r = -log_ratio``) are, per token::

    k1  = log_ratio                                   unbiased, high variance, can be negative
    k2  = 0.5 * log_ratio**2                          biased, low variance, >= 0
    k3  = exp(-log_ratio) - 1 + log_ratio             unbiased, low variance, >= 0   (= r - 1 - log r)
    abs = |log_ratio|                                 not from the blog: a heuristic some frameworks offer

Worked example, log pi = -1, log pi_ref = -2 (log_ratio = 1)::

    k1 = 1,  k2 = 0.5,  k3 = e^-1 - 1 + 1 = 0.3679,  abs = 1

Used as a *loss* (differentiated through log pi with the samples held fixed), the expected gradient
under on-policy samples is: k1 -> 0 (E_pi[grad log pi] = 0); k2 -> grad KL(pi || pi_ref);
k3 -> grad KL(pi_ref || pi), the reverse direction. (Derivation: a loss f(log_ratio) has expected
gradient E_pi[f'(log_ratio) grad log pi]; f' = log_ratio gives the score-function gradient of
KL(pi || pi_ref), f' = 1 - pi_ref/pi gives -E_pi_ref[grad log pi].) tests/algorithms/test_kl.py checks
these by exact enumeration.

The clamp (ALGORITHM-TRAPS 8): ``kl_clamp`` clamps the per-token *value* to [-kl_clamp, kl_clamp],
and a clamped token has zero gradient. For k3 with the default 10 this happens once
``x = log pi_ref - log pi`` satisfies ``e^x - x - 1 > 10``, i.e. ``x > 2.610869`` (pi_ref more than
13.6x more likely than pi) or ``x < -10.999983`` (pi more than ~60,000x more likely than pi_ref):
those tokens are no longer pulled back toward the reference.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from rlvr.algorithms.advantages import outcome_to_token_rewards
from rlvr.algorithms.aggregation import aggregate
from rlvr.algorithms.checks import check_mask, check_same_shape, check_tensor
from rlvr.algorithms.outputs import LossOutput
from rlvr.errors import ConfigError, ShapeError
from rlvr.registry import Registry

KL_ESTIMATORS: Registry[Callable[[torch.Tensor], torch.Tensor]] = Registry("KL estimator")

KL_TENSOR_ARGS: tuple[str, ...] = (
    "logprobs",
    "ref_logprobs",
    "mask",
    "num_tokens",
    "num_sequences",
    "norm_length",
)
"""Arguments of :func:`kl_penalty` / :func:`kl_loss` the loop supplies; the rest are config fields."""
FOLD_KL_TENSOR_ARGS: tuple[str, ...] = ("rewards", "kl", "mask")
"""Arguments of :func:`fold_kl_into_rewards` the loop supplies; ``kl_coef`` is a config field."""


@KL_ESTIMATORS.register("k1")
def k1(log_ratio: torch.Tensor) -> torch.Tensor:
    """log pi - log pi_ref."""
    return log_ratio


@KL_ESTIMATORS.register("k2")
def k2(log_ratio: torch.Tensor) -> torch.Tensor:
    """0.5 * (log pi - log pi_ref)^2."""
    return 0.5 * log_ratio.square()


@KL_ESTIMATORS.register("k3")
def k3(log_ratio: torch.Tensor) -> torch.Tensor:
    """pi_ref/pi - 1 - log(pi_ref/pi), written exp(-log_ratio) - 1 + log_ratio (expm1 for precision)."""
    return torch.expm1(-log_ratio) + log_ratio


@KL_ESTIMATORS.register("abs")
def abs_(log_ratio: torch.Tensor) -> torch.Tensor:
    """|log pi - log pi_ref|."""
    return log_ratio.abs()


def _check_floating(x: torch.Tensor, name: str) -> None:
    if not x.dtype.is_floating_point:
        raise ShapeError(f"{name} must be a floating tensor, got dtype {x.dtype}")


def kl_penalty(
    *,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_estimator: str = "k3",
    kl_clamp: float | None = 10.0,
) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) estimate [B, T], clamped to [-kl_clamp, kl_clamp], zero on padding.

    ``logprobs`` [B, T] are log pi of the sampled tokens (differentiable), ``ref_logprobs`` [B, T] those
    of the reference model, ``mask`` [B, T] the response tokens. Padding positions may hold any
    value, even inf or nan: they are replaced before any arithmetic, so neither the result nor the
    gradient sees them. ``kl_clamp=None`` disables the clamp.

    >>> lp = torch.tensor([[-1.0, -3.0]]); ref = torch.tensor([[-2.0, -3.0]])
    >>> kl_penalty(logprobs=lp, ref_logprobs=ref, mask=torch.tensor([[True, False]]))
    tensor([[0.3679, 0.0000]])
    """
    estimator = KL_ESTIMATORS.get(kl_estimator)
    if kl_clamp is not None and not kl_clamp > 0:
        raise ConfigError(f"kl_clamp must be a positive number or None, got {kl_clamp!r}")
    check_tensor(logprobs, "logprobs", 2)
    check_same_shape("logprobs", logprobs, ref_logprobs=ref_logprobs)
    check_mask(mask, "mask", tuple(logprobs.shape))
    _check_floating(logprobs, "logprobs")
    _check_floating(ref_logprobs, "ref_logprobs")

    valid = mask.bool()
    # Zero the log-ratio on padding first: every estimator is 0 at 0, and the gradient never
    # passes through padding values (an inf there would otherwise give 0 * inf = nan).
    log_ratio = torch.where(valid, logprobs - ref_logprobs, torch.zeros_like(logprobs))
    kl = estimator(log_ratio)
    if kl_clamp is not None:
        kl = kl.clamp(min=-kl_clamp, max=kl_clamp)
    return torch.where(valid, kl, torch.zeros_like(kl))


def kl_loss(
    *,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    aggregation: str = "token-mean",
    kl_estimator: str = "k3",
    kl_clamp: float | None = 10.0,
) -> LossOutput:
    """The KL term of the loss (``kl_placement="loss"``), unweighted: the loop adds ``kl_coef * loss``.

    GRPO (DeepSeekMath, arXiv 2402.03300 eq. 3) adds ``beta * D_KL`` with the k3 estimator (its
    eq. 4) to the per-token objective; the per-token estimates of :func:`kl_penalty` are aggregated
    with ``aggregation`` like the policy loss (``num_tokens`` / ``num_sequences`` / ``norm_length``
    as in :func:`rlvr.algorithms.aggregation.aggregate`).

    Metrics: ``kl/mean``, the mean of the estimates over this call's response tokens (like the
    policy losses' metrics, it ignores ``num_tokens``).
    """
    kl = kl_penalty(
        logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask, kl_estimator=kl_estimator, kl_clamp=kl_clamp
    )
    loss = aggregate(
        kl, mask, aggregation, num_tokens=num_tokens, num_sequences=num_sequences, norm_length=norm_length
    )
    kl_mean = aggregate(kl.detach(), mask, "token-mean")
    return LossOutput(loss=loss, metrics={"kl/mean": kl_mean})


def fold_kl_into_rewards(
    *,
    rewards: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> torch.Tensor:
    """Token rewards [B, T] with the KL penalty folded in (``kl_placement="reward"``).

    InstructGPT (Ouyang et al. 2022, arXiv 2203.02155 eq. 2) and REINFORCE++ (arXiv 2501.03262,
    "token-level KL penalty") reward each token with::

        r(s_t, a_t) = 1[t is the last response token] * r(x, y) - kl_coef * KL_t

    ``rewards`` is either the outcome reward [B], placed on the last response token of each row (the
    last position where ``mask`` is true; a row without response tokens gets nothing), or already
    token rewards [B, T]. ``kl`` [B, T] is the per-token estimate, usually
    ``kl_penalty(..., kl_estimator="k1")`` of the rollout policy against the reference as in
    REINFORCE++. The result is a reward, not a loss: ``kl`` is detached. Zero on padding.

    >>> fold_kl_into_rewards(rewards=torch.tensor([1.0]), kl=torch.tensor([[0.5, 0.5, 9.0]]),
    ...                      mask=torch.tensor([[True, True, False]]), kl_coef=0.1)
    tensor([[-0.0500,  0.9500,  0.0000]])
    """
    if not (isinstance(kl_coef, (int, float)) and kl_coef >= 0):
        raise ConfigError(f"kl_coef must be a non-negative number, got {kl_coef!r}")
    check_tensor(kl, "kl", 2)
    check_mask(mask, "mask", tuple(kl.shape))
    _check_floating(kl, "kl")
    check_tensor(rewards, "rewards", (1, 2))
    _check_floating(rewards, "rewards")
    valid = mask.bool()
    dtype = torch.promote_types(rewards.dtype, kl.dtype)

    if rewards.dim() == 1:
        if rewards.shape[0] != kl.shape[0]:
            raise ShapeError(f"rewards has {rewards.shape[0]} entries but kl has {kl.shape[0]} rows")
        token_rewards = outcome_to_token_rewards(rewards.to(dtype), valid)
    else:
        check_same_shape("kl", kl, rewards=rewards)
        token_rewards = rewards.to(dtype)

    kl_term = torch.where(valid, kl.detach().to(dtype), torch.zeros((), dtype=dtype, device=kl.device))
    folded = token_rewards - kl_coef * kl_term
    return torch.where(valid, folded, torch.zeros_like(folded))
