"""Rollout/trainer mismatch: importance weights and masks between the sampler and the trainer.

The rollout engine samples from a behaviour policy mu whose log-probabilities (``rollout_logprobs``)
differ from the trainer's recomputation pi_old (``old_logprobs``) of the same weights: half-precision
decoding, kernels that differ, or ``rollout.generate_ahead`` (weights one update older). PPO's ratio
pi_theta / pi_old then corrects for the wrong distribution; the corrections here reweight or drop
tokens by the rollout/trainer log-ratio of each response token::

    delta_t = old_logprobs_t - rollout_logprobs_t = log(pi_old(y_t) / mu(y_t))

All corrections end as a stop-gradient weight ``w_t >= 0`` per token (0 where a mask drops it) that
multiplies the token's advantage: ``A'_t = w_t * A_t``. For losses positively homogeneous in the
per-token advantage (:data:`WEIGHTABLE_LOSSES`) this is the token's loss multiplied by ``w_t``; the
denominators of the aggregation do not change (a dropped token still counts, as in the papers'
objectives, which multiply the summand by the mask). The KL, entropy and LM terms are not weighted.

Every mask is applied with ``torch.where``, never by multiplying by 0: a stale log-probability of
``-inf`` gives ``delta_t = +inf``, and ``inf * 0`` would be NaN. A token whose log-ratio is undefined
(both log-probabilities ``-inf``) gets weight 0.

Settings (fields of :class:`~rlvr.algorithms.config.AlgorithmConfig`; all off by default):

``mismatch_is`` = ``token`` (TIS): ``w_t = min(exp(delta_t), C)``; ``sequence``: one weight per
sequence from the product of its ratios, ``w_i = min(exp(sum_t delta_t), C)``; ``geometric``: from
their geometric mean, ``w_i = min(exp(mean_t delta_t), C)``. ``C = mismatch_is_cap``.

``mismatch_mask`` = ``token`` (MIS / IcePop): drop token t unless
``mismatch_mask_low <= exp(delta_t) <= mismatch_mask_high``; ``sequence``: drop every token of
sequence i unless its product ratio ``exp(sum_t delta_t)`` lies in the band; ``geometric``: the same
with the geometric mean ``exp(mean_t delta_t)``.

``mismatch_opsm_delta`` = delta_opsm (DeepSeek-V3.2's off-policy sequence mask, arXiv 2512.02556,
sec. 3, the mask M_{i,t}): drop token t of sequence i when ``A_t < 0`` and the sequence's mean
per-token log-ratio between the rollout and the *current* policy exceeds the threshold::

    (1 / |y_i|) * sum_t (rollout_logprobs_t - logprobs_t) > delta_opsm

(a k1 estimate of KL(mu || pi_theta) under mu's samples). It reads the current log-probabilities,
so it is evaluated in every micro-batch of the update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rlvr.algorithms.checks import check_mask, check_same_shape, check_tensor
from rlvr.errors import ConfigError

MISMATCH_TENSOR_ARGS: tuple[str, ...] = (
    "old_logprobs",
    "rollout_logprobs",
    "logprobs",
    "advantages",
    "mask",
)

MISMATCH_LEVELS: tuple[str, ...] = ("none", "token", "sequence", "geometric")
"""Values of ``mismatch_is`` and ``mismatch_mask``."""

WEIGHTABLE_LOSSES: frozenset[str] = frozenset({"ppo_clip", "gspo", "cispo"})
"""Policy losses whose per-token loss is w * (its loss) when the advantage A_t becomes w * A_t
(w >= 0): the corrections act through the advantage, so only these accept them."""


@dataclass
class MismatchOutput:
    """``weights`` [B, T]: the stop-gradient token weights (0 on padding and dropped tokens);
    ``advantages`` [B, T]: the weighted advantages; ``metrics``: detached 0-D tensors."""

    weights: torch.Tensor
    advantages: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def _is_number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def check_mismatch_settings(
    mismatch_is: str = "none",
    mismatch_is_cap: float = 2.0,
    mismatch_mask: str = "none",
    mismatch_mask_low: float = 0.5,
    mismatch_mask_high: float = 2.0,
    mismatch_opsm_delta: float | None = None,
) -> None:
    """Raise ConfigError naming the ``algorithm.*`` key of a setting out of range.

    The bounds keep every correction the identity when the rollout and the trainer agree
    (ratio 1): ``C >= 1`` and ``low <= 1 <= high``.
    """
    for key, value in (("mismatch_is", mismatch_is), ("mismatch_mask", mismatch_mask)):
        if value not in MISMATCH_LEVELS:
            raise ConfigError(f"algorithm.{key} must be one of {', '.join(MISMATCH_LEVELS)}, got {value!r}")
    if not _is_number(mismatch_is_cap) or mismatch_is_cap < 1.0:
        raise ConfigError(f"algorithm.mismatch_is_cap must be a finite number >= 1, got {mismatch_is_cap!r}")
    if not _is_number(mismatch_mask_low) or not 0.0 <= mismatch_mask_low <= 1.0:
        raise ConfigError(f"algorithm.mismatch_mask_low must be in [0, 1], got {mismatch_mask_low!r}")
    if not _is_number(mismatch_mask_high) or mismatch_mask_high < 1.0:
        raise ConfigError(
            f"algorithm.mismatch_mask_high must be a finite number >= 1, got {mismatch_mask_high!r}"
        )
    if mismatch_opsm_delta is not None and (not _is_number(mismatch_opsm_delta) or mismatch_opsm_delta < 0):
        raise ConfigError(
            f"algorithm.mismatch_opsm_delta must be None or a finite number >= 0, got {mismatch_opsm_delta!r}"
        )


def mismatch_enabled(mismatch_is: str, mismatch_mask: str, mismatch_opsm_delta: float | None) -> bool:
    """True when any correction is on."""
    return mismatch_is != "none" or mismatch_mask != "none" or mismatch_opsm_delta is not None


def needs_trainer_logprobs(mismatch_is: str, mismatch_mask: str) -> bool:
    """True when a correction compares the rollout's log-probabilities with the trainer's, so the
    trainer must recompute the old log-probabilities (and keep the rollout's beside them)."""
    return mismatch_is != "none" or mismatch_mask != "none"


def mismatch_log_ratio(
    old_logprobs: torch.Tensor, rollout_logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """delta_t = old_logprobs_t - rollout_logprobs_t on response tokens, 0 on padding.

    ``-inf`` log-probabilities give ``+-inf``; both ``-inf`` give NaN (see :func:`token_is_weights`).
    Example: old = -1.0, rollout = -1.5 -> delta = 0.5 (the trainer finds the token e^0.5 times likelier).
    """
    keep = mask.bool()
    dtype = torch.promote_types(old_logprobs.dtype, rollout_logprobs.dtype)
    zero = torch.zeros((), dtype=dtype, device=old_logprobs.device)
    old = torch.where(keep, old_logprobs.detach().to(dtype), zero)
    rollout = torch.where(keep, rollout_logprobs.detach().to(dtype), zero)
    return torch.where(keep, old - rollout, zero)


def sequence_log_ratio(log_ratio: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """Per sequence [B]: ``sequence``: sum_t delta_t (the log of the product of the token ratios);
    ``geometric``: mean_t delta_t (the log of their geometric mean). A sequence with no response
    tokens gets 0. Example: delta = (0.2, 0.4) -> sum 0.6, mean 0.3."""
    keep = mask.bool()
    total = torch.where(keep, log_ratio, torch.zeros((), dtype=log_ratio.dtype, device=log_ratio.device)).sum(
        -1
    )
    if level == "sequence":
        return total
    if level == "geometric":
        return total / keep.sum(-1).clamp(min=1).to(log_ratio.dtype)
    raise ConfigError(f"sequence_log_ratio: level must be 'sequence' or 'geometric', got {level!r}")


def _per_token(log_ratio: torch.Tensor, mask: torch.Tensor, level: str) -> torch.Tensor:
    """The log-ratio each token's correction reads: its own (``token``) or its sequence's."""
    if level == "token":
        return log_ratio
    return sequence_log_ratio(log_ratio, mask, level)[:, None].expand_as(log_ratio)


def truncated_is_weights(
    log_ratio: torch.Tensor, mask: torch.Tensor, level: str, cap: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncated importance weights ``min(exp(l), cap)`` [B, T] with ``l`` the token's log-ratio
    (``token``) or its sequence's (``sequence``, ``geometric``), and where the cap was active.

    TIS: Yao et al., "Your Efficient RL Framework Secretly Brings You Off-Policy RL Training" (2025
    blog), which weights each token's policy gradient by ``min(pi_old / mu, C)``. The sequence
    forms weight all tokens of a sequence with one truncated ratio. Computed as ``exp(min(l, log cap))``
    so a ratio of ``+inf`` gives ``cap``; a NaN log-ratio gives weight 0. Padding gets 0.

    Worked example, cap = 2, token level, delta = (0.5, -0.5, 1.0):
    weights = (e^0.5, e^-0.5, 2) = (1.6487, 0.6065, 2.0), truncated = (no, no, yes).
    """
    keep = mask.bool()
    lr = _per_token(log_ratio, mask, level)
    zero = torch.zeros((), dtype=lr.dtype, device=lr.device)
    weights = torch.exp(lr.clamp(max=math.log(cap)))
    valid = keep & ~torch.isnan(lr)
    return torch.where(valid, weights, zero), valid & (lr > math.log(cap))


def masked_is_keep(
    log_ratio: torch.Tensor, mask: torch.Tensor, level: str, low: float, high: float
) -> torch.Tensor:
    """Tokens [B, T] (bool) that the masked-IS band keeps: ``low <= exp(l) <= high`` for the token's
    log-ratio (``token``, MIS / IcePop) or its sequence's (``sequence``, ``geometric``).

    IcePop (Ring-1T report, arXiv 2510.18855) drops from the gradient the tokens whose
    training/inference probability ratio pi_train / pi_infer falls outside [alpha, beta]; here
    ``alpha = mismatch_mask_low``, ``beta = mismatch_mask_high``. Compared in log space (no overflow);
    NaN log-ratios and padding are not kept.

    Worked example, band [0.5, 2], token level, delta = (0.5, -1.0, 0.6931): ratios (1.6487, 0.3679,
    2.0) -> kept (yes, no, yes). Sequence level over those three: sum = 0.1931, ratio 1.213 -> kept.
    """
    keep = mask.bool()
    lr = _per_token(log_ratio, mask, level)
    lo = -math.inf if low == 0 else math.log(low)
    return keep & (lr >= lo) & (lr <= math.log(high))


def opsm_keep(
    rollout_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    delta: float,
) -> torch.Tensor:
    """Tokens [B, T] (bool) that DeepSeek-V3.2's off-policy sequence mask keeps.

    arXiv 2512.02556, sec. 3 ("Off-Policy Sequence Masking"): M_{i,t} = 0 when A_{i,t} < 0 and
    (1 / |o_i|) sum_t log(pi_old(o_t) / pi_theta(o_t)) > delta, else 1, where pi_old is the policy
    that sampled the data (here the rollout's log-probabilities) and pi_theta the current policy
    (here ``logprobs``, detached). Sequences with A >= 0 are never masked.

    Worked example, delta = 0.1, one sequence, rollout = (-1.0, -2.0), current = (-1.2, -2.2): the
    mean log-ratio is 0.2 > 0.1, so its tokens are dropped if A < 0 and kept if A >= 0.
    """
    keep = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    diff = torch.where(keep, rollout_logprobs.detach().to(logprobs.dtype) - logprobs.detach(), zero)
    kl = diff.sum(-1) / keep.sum(-1).clamp(min=1).to(logprobs.dtype)  # [B]
    off_policy = kl[:, None] > delta  # NaN compares False: not masked
    return keep & ~((advantages.detach() < 0) & off_policy)


def _mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(keep, x, zero).sum() / keep.sum().clamp(min=1).to(x.dtype)


def mismatch_metrics(log_ratio: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rollout-vs-trainer statistics over the finite log-ratios of response tokens (0 if none):
    ``mismatch/log_ratio_mean`` (mean delta_t), ``mismatch/abs_log_ratio_max`` (max |delta_t|),
    ``mismatch/k3_kl`` (mean of (r - 1) - log r with r = exp(delta_t): the k3 estimate of
    KL(mu || pi_old) under mu's samples, >= 0) and ``mismatch/nonfinite_fraction``."""
    keep = mask.bool()
    lr = log_ratio.detach().double()
    finite = keep & torch.isfinite(lr)
    zero = torch.zeros((), dtype=lr.dtype, device=lr.device)
    safe = torch.where(finite, lr, zero)
    return {
        "mismatch/log_ratio_mean": _mean(safe, finite),
        "mismatch/abs_log_ratio_max": safe.abs().max() if bool(finite.any()) else zero,
        "mismatch/k3_kl": _mean(torch.expm1(safe) - safe, finite),
        "mismatch/nonfinite_fraction": _mean((keep & ~finite).double(), keep),
    }


def mismatch_correction(
    *,
    old_logprobs: torch.Tensor,
    rollout_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    mismatch_is: str = "none",
    mismatch_is_cap: float = 2.0,
    mismatch_mask: str = "none",
    mismatch_mask_low: float = 0.5,
    mismatch_mask_high: float = 2.0,
    mismatch_opsm_delta: float | None = None,
) -> MismatchOutput:
    """All configured corrections at once: ``w_t = is_t * [mis keeps t] * [opsm keeps t]``.

    ``old_logprobs``: the trainer's pi_old; ``rollout_logprobs``: the sampler's mu; ``logprobs``: the
    current policy's (only OPSM reads them; detached). Returns the weights, the weighted advantages
    ``where(w > 0 kept, w * A, 0)`` and metrics: :func:`mismatch_metrics`, plus, for each correction
    that is on, the fraction of response tokens it touched: ``mismatch/is_truncated_fraction``
    (tokens whose weight, or whose sequence's weight, hit the cap), ``mismatch/is_weight_mean``,
    ``mismatch/masked_fraction`` (tokens dropped by the band, for the sequence levels the tokens of
    the dropped sequences) and ``mismatch/opsm_masked_fraction``.

    With every setting off the weights are 1 on response tokens and the advantages are returned
    unchanged (zeroed on padding). Worked example, token TIS with cap 2 and token MIS with band
    [0.5, 2], delta = (0.5, -1.0), A = (1, 1): weights (1.6487, 0) -> A' = (1.6487, 0).
    """
    check_tensor(old_logprobs, "old_logprobs", 2)
    check_same_shape(
        "old_logprobs",
        old_logprobs,
        rollout_logprobs=rollout_logprobs,
        logprobs=logprobs,
        advantages=advantages,
    )
    check_mask(mask, "mask", tuple(old_logprobs.shape))
    check_mismatch_settings(
        mismatch_is,
        mismatch_is_cap,
        mismatch_mask,
        mismatch_mask_low,
        mismatch_mask_high,
        mismatch_opsm_delta,
    )
    keep = mask.bool()
    dtype = torch.promote_types(  # the weights are never rounded to a lower precision
        advantages.dtype, torch.promote_types(old_logprobs.dtype, rollout_logprobs.dtype)
    )
    log_ratio = mismatch_log_ratio(old_logprobs, rollout_logprobs, mask)
    metrics = mismatch_metrics(log_ratio, mask)
    one = torch.ones((), dtype=dtype, device=keep.device)
    weights = torch.where(keep, one, torch.zeros((), dtype=dtype, device=keep.device))
    kept = keep
    if mismatch_is != "none":
        is_w, truncated = truncated_is_weights(log_ratio, mask, mismatch_is, mismatch_is_cap)
        weights = is_w.to(dtype)
        metrics["mismatch/is_truncated_fraction"] = _mean(truncated.double(), keep)
        metrics["mismatch/is_weight_mean"] = _mean(is_w.double(), keep)
    if mismatch_mask != "none":
        band = masked_is_keep(log_ratio, mask, mismatch_mask, mismatch_mask_low, mismatch_mask_high)
        metrics["mismatch/masked_fraction"] = _mean((keep & ~band).double(), keep)
        kept = kept & band
    if mismatch_opsm_delta is not None:
        rollout = torch.where(
            keep, rollout_logprobs.detach(), torch.zeros((), dtype=rollout_logprobs.dtype, device=keep.device)
        )
        opsm = opsm_keep(rollout, logprobs, advantages, mask, mismatch_opsm_delta)
        metrics["mismatch/opsm_masked_fraction"] = _mean((keep & ~opsm).double(), keep)
        kept = kept & opsm
    zero = torch.zeros((), dtype=dtype, device=keep.device)
    weights = torch.where(kept, weights, zero)
    if mismatch_is == "none":  # masks only: the kept advantages pass bit for bit
        new_adv = torch.where(kept, advantages.detach(), zero)
    else:
        new_adv = torch.where(kept, advantages.detach() * weights, zero)
    return MismatchOutput(weights=weights, advantages=new_adv, metrics=metrics)
