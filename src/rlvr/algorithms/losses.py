"""Policy surrogate losses: PPO clip (+ clip-higher, dual clip), GSPO, CISPO, Kimi k1.5, Clip-Cov, KL-Cov.

Every loss has the same signature, so the loop never special-cases one::

    fn(*, logprobs, old_logprobs, advantages, mask,            # [B, T] tensors
       num_tokens=None, num_sequences=None, norm_length=None,  # global denominators
       generator=None,                                          # random choices (Clip-Cov)
       aggregation="token-mean", <hyperparameters>) -> LossOutput

``logprobs`` are the current policy's (with gradient), ``old_logprobs`` the behaviour policy's
(no gradient), ``advantages`` are zero on padding and ``mask`` marks response tokens. Every keyword
that is not in :data:`POLICY_LOSS_TENSOR_ARGS` is a hyperparameter and a field of
:class:`~rlvr.algorithms.config.AlgorithmConfig` of the same name. The loss is a number to
*minimise* (minus the papers' objectives); ``num_tokens`` / ``num_sequences`` / ``norm_length`` go
to :func:`~rlvr.algorithms.aggregation.aggregate`.

Padding never matters: logprobs, old logprobs and advantages are replaced by 0 outside the mask
before any arithmetic, so a padded position contributes neither value nor gradient (nor NaN).

Metrics (detached 0-D tensors, means over this call's response tokens):
``policy/ratio_mean|max|min`` (the ratio the loss uses: per token, or per sequence for GSPO),
``policy/approx_kl``: the k3 estimator of KL(pi_old || pi_theta), mean of (r - 1) - log r with
r = pi_theta / pi_old, unbiased under samples of pi_old and never negative; and, where the loss
clips, ``policy/clipfrac_low|high|dual``: the fraction of tokens whose gradient that bound removes.
"""

from __future__ import annotations

import math

import torch

from rlvr.algorithms.aggregation import AGGREGATIONS, aggregate
from rlvr.algorithms.checks import check_mask, check_same_shape, check_tensor
from rlvr.algorithms.covariance import clip_cov_selection, kl_cov_selection
from rlvr.algorithms.outputs import LossOutput
from rlvr.errors import ConfigError, ShapeError
from rlvr.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")

POLICY_LOSS_TENSOR_ARGS: tuple[str, ...] = (
    "logprobs",
    "old_logprobs",
    "advantages",
    "mask",
    "num_tokens",
    "num_sequences",
    "norm_length",
    "generator",
    "token_selection",
)


# --- shared pieces ---------------------------------------------------------------------------


def _prepare(logprobs, old_logprobs, advantages, mask, aggregation):
    """Check the inputs; return (logprobs, old_logprobs, advantages) zeroed on padding, bool mask."""
    check_tensor(logprobs, "logprobs", 2)
    check_same_shape("logprobs", logprobs, old_logprobs=old_logprobs, advantages=advantages)
    check_mask(mask, "mask", tuple(logprobs.shape))
    for name, t in (("logprobs", logprobs), ("old_logprobs", old_logprobs), ("advantages", advantages)):
        if not t.dtype.is_floating_point:
            raise ShapeError(f"{name} must be a floating tensor, got dtype {t.dtype}")
    AGGREGATIONS.get(aggregation)  # an unknown mode fails before any arithmetic
    keep = mask.bool()
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    lp = torch.where(keep, logprobs, zero)
    old = torch.where(keep, old_logprobs.detach().to(logprobs.dtype), zero)
    adv = torch.where(keep, advantages.detach().to(logprobs.dtype), zero)
    return lp, old, adv, keep


def _check_number(name: str, value, *, minimum: float, strict: bool = False, maximum: float | None = None):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value!r}")


def _check_clip(eps_low, eps_high) -> None:
    _check_number("eps_low", eps_low, minimum=0.0)
    _check_number("eps_high", eps_high, minimum=0.0)


def _masked_mean(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    m = keep.to(x.dtype)
    return ((x * m).sum() / m.sum().clamp(min=1.0)).detach()


def _ratio_metrics(
    ratio: torch.Tensor, log_ratio: torch.Tensor, keep: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Ratio statistics and the k3 KL estimate over response tokens (1 and 0 when there are none)."""
    ratio, log_ratio = ratio.detach(), log_ratio.detach()
    one = torch.ones((), dtype=ratio.dtype, device=ratio.device)
    has_tokens = bool(keep.any())
    return {
        "policy/approx_kl": _masked_mean(torch.exp(log_ratio) - 1.0 - log_ratio, keep),
        "policy/ratio_mean": _masked_mean(ratio, keep) if has_tokens else one,
        "policy/ratio_max": ratio[keep].max() if has_tokens else one,
        "policy/ratio_min": ratio[keep].min() if has_tokens else one,
    }


def _clipped_surrogate(ratio, adv, eps_low, eps_high):
    """Per-token -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) and where each bound is active."""
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    r = ratio.detach()
    high = (adv > 0) & (r > 1.0 + eps_high)  # the clip removes the gradient of these tokens
    low = (adv < 0) & (r < 1.0 - eps_low)
    return torch.maximum(unclipped, clipped), low, high


def _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics) -> LossOutput:
    loss = aggregate(
        values,
        keep,
        aggregation,
        num_tokens=num_tokens,
        num_sequences=num_sequences,
        norm_length=norm_length,
    )
    return LossOutput(loss=loss, metrics=metrics)


# --- PPO clip ---------------------------------------------------------------------------------


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    generator: torch.Generator | None = None,
    aggregation: str = "token-mean",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_ratio_c: float | None = None,
) -> LossOutput:
    """PPO's clipped surrogate with separate lower/upper ranges and an optional dual clip.

    PPO (Schulman et al. 2017, arXiv 1707.06347, eq. 7) with DAPO's decoupled clip-higher
    (arXiv 2503.14476, eq. 10: eps_low = 0.2, eps_high = 0.28); per response token, with
    r = exp(logprobs - old_logprobs)::

        l_t = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)

    Dual-clip PPO (Ye et al. 2020, arXiv 1912.09729), only when ``clip_ratio_c`` (c > 1) is
    set: the objective max(min(r A, clip(r) A), c A) for A < 0 bounds the loss of a negative
    token by -c A = c |A| however large r grows::

        l_t = min(l_t, -c A)   where A < 0

    Dual clip is its own setting, never implied by another (DAPO has none).

    Worked example, eps = 0.2, one token, A = 1: r = 1.5 -> l = -min(1.5, 1.2) = -1.2 with zero
    gradient; r = 1.1 -> l = -1.1, dl/dr = -1. A = -1, c = 3: r = 5 -> l = min(5, 3) = 3.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_clip(eps_low, eps_high)
    if clip_ratio_c is not None:
        _check_number("clip_ratio_c", clip_ratio_c, minimum=1.0, strict=True)
    log_ratio = lp - old  # [B, T]
    ratio = torch.exp(log_ratio)
    values, low, high = _clipped_surrogate(ratio, adv, eps_low, eps_high)
    metrics = _ratio_metrics(ratio, log_ratio, keep)
    metrics["policy/clipfrac_low"] = _masked_mean(low.to(lp.dtype), keep)
    metrics["policy/clipfrac_high"] = _masked_mean(high.to(lp.dtype), keep)
    if clip_ratio_c is not None:
        dual = (adv < 0) & (ratio.detach() > clip_ratio_c)
        values = torch.where(adv < 0, torch.minimum(values, -clip_ratio_c * adv), values)
        metrics["policy/clipfrac_dual"] = _masked_mean(dual.to(lp.dtype), keep)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


# --- GSPO -------------------------------------------------------------------------------------


@POLICY_LOSSES.register("gspo")
def gspo(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    generator: torch.Generator | None = None,
    aggregation: str = "seq-mean-token-mean",
    eps_low: float = 3e-4,
    eps_high: float = 4e-4,
) -> LossOutput:
    """GSPO: one length-normalised sequence ratio, clipped per sequence, in its GSPO-token form.

    GSPO (Zheng et al. 2025, arXiv 2507.18071, sec. 4.1, the definition of s_i(theta)) replaces
    the token ratios by the geometric mean of a sequence's ratios::

        s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|) = exp(mean_t (logprobs - old_logprobs))

    and sec. 4.3 (GSPO-token) shares it with every token while letting per-token advantages
    through: s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)], numerically s_i, with gradient
    s_i * grad log pi(y_it)::

        l_t = -min(s_it A_t, clip(s_it, 1 - eps_low, 1 + eps_high) A_t)

    With advantages constant within each sequence and ``seq-mean-token-mean`` this is the GSPO
    objective itself (value and gradient). The paper averages per sequence
    (``seq-mean-token-mean``); under ``token-mean`` long sequences weigh more. The paper's ranges
    are 3e-4 / 4e-4 (the defaults here; the config's defaults are PPO's, a preset sets these). The
    log-ratio is not clamped (the paper has no clamp); a non-finite loss is the loop's to skip.
    Metrics ``policy/ratio_*`` and the clip fractions are those of s_i, counted per token.

    Worked example, eps = (0.2, 0.2), one sequence of 2 tokens, A = 1, log-ratios (0.3, 0.1):
    s = exp(0.2) = 1.2214 > 1.2, so l = -1.2 for both tokens and the gradient is zero.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_clip(eps_low, eps_high)
    values, metrics = gspo_token_terms(lp, old, adv, keep, eps_low, eps_high)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


def gspo_token_terms(
    lp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    keep: torch.Tensor,
    eps_low: float,
    eps_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO-token's per-token terms ``-min(s_it A_t, clip(s_it) A_t)`` [B, T] and its metrics (the
    ratios and clip fractions of s_i, counted per token), from :func:`_prepare`'s tensors; shared
    with LUSPO, which scales them by the response length."""
    m = keep.to(lp.dtype)
    log_ratio = lp - old  # [B, T]
    seq_log_ratio = (log_ratio * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [B]
    seq_ratio = torch.exp(seq_log_ratio.detach())  # [B], sg[s_i]
    token_ratio = seq_ratio[:, None] * torch.exp(lp - lp.detach())  # [B, T], value s_i
    values, low, high = _clipped_surrogate(token_ratio, adv, eps_low, eps_high)
    metrics = _ratio_metrics(seq_ratio[:, None].expand_as(lp), log_ratio, keep)
    metrics["policy/clipfrac_low"] = _masked_mean(low.to(lp.dtype), keep)
    metrics["policy/clipfrac_high"] = _masked_mean(high.to(lp.dtype), keep)
    return values, metrics


# --- CISPO ------------------------------------------------------------------------------------


@POLICY_LOSSES.register("cispo")
def cispo(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    generator: torch.Generator | None = None,
    aggregation: str = "token-mean",
    eps_high: float = 0.2,
) -> LossOutput:
    """CISPO: REINFORCE with a stop-gradient importance weight truncated from above.

    MiniMax-M1 (arXiv 2506.13585, sec. 3.1, the J_CISPO objective)::

        l_t = -sg(min(r_t, 1 + eps_high)) * A_t * logprobs_t,   r_t = exp(logprobs - old_logprobs)

    Every token keeps its gradient (nothing is dropped as in PPO's clip); the weight only
    scales it: d l_t / d logprobs_t = -min(r_t, 1 + eps_high) * A_t. The loss *value* is not a
    surrogate ratio (it contains the log-probability), so only its gradient is meaningful. The
    paper imposes no lower bound (its eps_low^IS is set large); clipping from below is a variant
    and not offered. The paper normalises by the total token count (``token-mean``).
    ``policy/clipfrac_high`` is the fraction of tokens whose weight was truncated.

    Worked example, eps_high = 0.2, one token, logprob = -1, old = -1.5, A = 2: r = e^0.5 = 1.6487
    -> weight 1.2, l = -1.2 * 2 * (-1) = 2.4, dl/dlogprob = -2.4.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_number("eps_high", eps_high, minimum=0.0)
    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    weight = ratio.detach().clamp(max=1.0 + eps_high)
    values = -weight * adv * lp
    metrics = _ratio_metrics(ratio, log_ratio, keep)
    metrics["policy/clipfrac_high"] = _masked_mean((ratio.detach() > 1.0 + eps_high).to(lp.dtype), keep)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


# --- Kimi k1.5 --------------------------------------------------------------------------------


@POLICY_LOSSES.register("kimi")
def kimi(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    generator: torch.Generator | None = None,
    aggregation: str = "seq-mean-token-mean",
    kimi_tau: float = 0.1,
) -> LossOutput:
    """Kimi k1.5's squared loss of online policy mirror descent, one term per sequence.

    Kimi k1.5 (arXiv 2501.12599, sec. 2.3.2, the surrogate loss L(theta) with tau log Z
    approximated by the mean reward of the k samples)::

        L_i = (r_i - mean_j r_j - tau * log(pi(y_i|x) / pi_old(y_i|x)))^2

    where the log-ratio is the sum of (logprobs - old_logprobs) over the response tokens. There
    is no 1/2 factor; the paper's update direction (its gradient formula, with tau/2) is
    -1/(2 tau) times the gradient of this loss, a constant the learning rate absorbs. The
    advantage A_i = r_i - mean_j r_j is read from ``advantages`` as the masked mean over the
    sequence's response tokens (it is constant there for the kimi estimator).

    Aggregation: L_i is shared by every response token of sequence i and then aggregated like
    any per-token loss. ``seq-mean-token-mean`` (the default here) gives (1/N) sum_i L_i, the
    paper's average over samples; ``token-mean`` weighs sequence i by its length.

    Worked example, tau = 0.1, one sequence, A = 1, token log-ratios (0.5, 1.5): log-ratio 2,
    L = (1 - 0.1 * 2)^2 = 0.64, dL/dlogprobs_t = -2 * 0.1 * 0.8 = -0.16 for each token.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_number("kimi_tau", kimi_tau, minimum=0.0, strict=True)
    m = keep.to(lp.dtype)
    log_ratio = lp - old  # [B, T]
    seq_log_ratio = (log_ratio * m).sum(-1)  # [B], log pi(y|x) / pi_old(y|x)
    seq_adv = (adv * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [B]
    seq_loss = (seq_adv - kimi_tau * seq_log_ratio) ** 2  # [B]
    values = seq_loss[:, None].expand_as(lp)
    metrics = _ratio_metrics(torch.exp(log_ratio), log_ratio, keep)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


# --- Clip-Cov and KL-Cov ----------------------------------------------------------------------


def _per_call(lp, old, adv, keep, generator) -> dict:
    """Arguments of the token choice of rlvr.algorithms.covariance over this call's tokens only."""
    rows = torch.arange(keep.shape[0])
    return dict(
        logprobs=lp,
        old_logprobs=old,
        advantages=adv,
        mask=keep,
        positions=rows,
        generator=generator,
        all_ranks=False,
    )


@POLICY_LOSSES.register("clip_cov")
def clip_cov(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    generator: torch.Generator | None = None,
    token_selection: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
) -> LossOutput:
    """Clip-Cov: stop the gradient of a few random tokens whose covariance is in a window.

    Cui et al. 2025 (arXiv 2505.22617, sec. 4, Clip-Cov). With
    Cov_t = (logprob_t - mean logprob) (A_t - mean A), means over the response tokens
    (:func:`rlvr.algorithms.covariance.token_covariance`), the candidates are response tokens with
    clip_cov_lb <= Cov_t <= clip_cov_ub whose gradient the PPO clip has not already removed (as
    in the authors' code);
    k = max(1, floor(clip_cov_ratio * N)) of them (N response tokens of this call) are drawn
    uniformly without replacement with ``generator``, and their log-probabilities are detached
    (stop-gradient, as in the paper): their loss *value* stays, their gradient is zero.
    Multiplying their loss by zero instead would give the same gradient and a different value.
    The other tokens get the clipped PPO loss of :func:`ppo_clip` (eps_low / eps_high, no dual
    clip); the authors' 7B recipe sets eps_low = eps_high = 1 (an almost unclipped r A).
    Paper values: clip_cov_ratio 2e-4, window [1, 5].

    ``token_selection`` [B, T] (bool), when given, names the detached tokens instead: the training
    loop chooses them over the whole mini-batch of all ranks
    (:func:`rlvr.algorithms.covariance.clip_cov_selection`), so that the update does not depend on
    the micro-batch split; without it the choice is made over this call's tokens, as above.

    ``policy/clip_cov_frac`` is the fraction of response tokens detached.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_clip(eps_low, eps_high)
    _check_number("clip_cov_ratio", clip_cov_ratio, minimum=0.0, maximum=1.0)
    _check_number("clip_cov_lb", clip_cov_lb, minimum=-math.inf)
    _check_number("clip_cov_ub", clip_cov_ub, minimum=-math.inf)
    if clip_cov_ub < clip_cov_lb:
        raise ConfigError(f"clip_cov_ub ({clip_cov_ub}) must be >= clip_cov_lb ({clip_cov_lb})")
    if token_selection is None:
        token_selection = clip_cov_selection(
            **_per_call(lp, old, adv, keep, generator),
            eps_low=eps_low,
            eps_high=eps_high,
            clip_cov_ratio=clip_cov_ratio,
            clip_cov_lb=clip_cov_lb,
            clip_cov_ub=clip_cov_ub,
        )
    check_same_shape("logprobs", logprobs, token_selection=token_selection)
    detached = token_selection.bool() & keep

    lp_used = torch.where(detached, lp.detach(), lp)
    log_ratio = lp_used - old
    values, low, high = _clipped_surrogate(torch.exp(log_ratio), adv, eps_low, eps_high)
    metrics = _ratio_metrics(torch.exp(log_ratio), log_ratio, keep)
    metrics["policy/clipfrac_low"] = _masked_mean(low.to(lp.dtype), keep)
    metrics["policy/clipfrac_high"] = _masked_mean(high.to(lp.dtype), keep)
    metrics["policy/clip_cov_frac"] = _masked_mean(detached.to(lp.dtype), keep)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


@POLICY_LOSSES.register("kl_cov")
def kl_cov(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    generator: torch.Generator | None = None,
    token_selection: torch.Tensor | None = None,
    aggregation: str = "token-mean",
    kl_cov_ratio: float = 2e-3,
    kl_cov_coef: float = 1.0,
) -> LossOutput:
    """KL-Cov: a KL penalty on the tokens with the largest covariance.

    Cui et al. 2025 (arXiv 2505.22617, sec. 4, KL-Cov). The k = max(1, floor(kl_cov_ratio * N))
    response tokens with the largest Cov_t (:func:`rlvr.algorithms.covariance.token_covariance`; a
    tie goes to the earlier token in row-major order) get a penalty beta * KL(pi_old || pi_theta) on
    top of the importance-weighted surrogate -r A, which is not clipped (the paper writes KL-Cov on
    r_t A_t and the authors' code has no ratio clip: the penalty takes its place). The per-token KL is estimated, as in the
    authors' code, by |logprobs - old_logprobs|::

        l_t = -r_t A_t + kl_cov_coef * |logprobs_t - old_logprobs_t| * [t in top-k]

    Paper values: kl_cov_ratio 2e-3 (Qwen2.5-7B; 2e-4 for 32B), kl_cov_coef (beta) 1.

    Worked example, 4 tokens with Cov (3, -1, 0.5, 2), ratio 0.25 -> k = 1: only the first token
    is penalised; with log-ratio 0.1 there its loss is -e^0.1 A + 0.1.
    ``token_selection`` [B, T] (bool), when given, names the penalised tokens instead: the training
    loop ranks the tokens of the whole mini-batch of all ranks
    (:func:`rlvr.algorithms.covariance.kl_cov_selection`); without it the top-k is over this call.

    ``policy/kl_cov_frac`` is the fraction of response tokens penalised.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_number("kl_cov_ratio", kl_cov_ratio, minimum=0.0, maximum=1.0)
    _check_number("kl_cov_coef", kl_cov_coef, minimum=0.0)
    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    if token_selection is None:
        token_selection = kl_cov_selection(
            **_per_call(lp, old, adv, keep, generator), kl_cov_ratio=kl_cov_ratio
        )
    check_same_shape("logprobs", logprobs, token_selection=token_selection)
    penalised = token_selection.bool() & keep
    values = -adv * ratio + kl_cov_coef * log_ratio.abs() * penalised.to(lp.dtype)
    metrics = _ratio_metrics(ratio, log_ratio, keep)
    metrics["policy/kl_cov_frac"] = _masked_mean(penalised.to(lp.dtype), keep)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


# The loop asks a loss for ``select_tokens``, the function that chooses its tokens over the batch.
clip_cov.select_tokens = clip_cov_selection  # type: ignore[attr-defined]
kl_cov.select_tokens = kl_cov_selection  # type: ignore[attr-defined]

# Losses whose every token term is a multiple of its advantage: a token with A = 0 adds exactly 0
# to the loss and to its gradient, so the loop may leave completions with A = 0 everywhere out of
# the forward and backward passes (training.skip_zero_advantage). Not kimi (its square holds the
# log-ratio) nor kl_cov (its penalty holds |log-ratio|, and a token with A = 0 may be chosen).
for _loss in (ppo_clip, gspo, cispo, clip_cov):
    _loss.vanishes_at_zero_advantage = True  # type: ignore[attr-defined]

# DPPO, SAPO and GMPO live in their own module and register into POLICY_LOSSES on import.
# VESPO and LUSPO (sequence-level objectives) likewise.
from rlvr.algorithms import sequence_objectives as _sequence_objectives  # noqa: E402,F401
from rlvr.algorithms import surrogates as _surrogates  # noqa: E402,F401
