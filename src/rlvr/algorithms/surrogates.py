"""Policy losses without PPO's ratio clip: DPPO (Binary-TV, Binary-KL), SAPO and GMPO.

Same signature and conventions as :mod:`rlvr.algorithms.losses` (they register into the same
:data:`~rlvr.algorithms.losses.POLICY_LOSSES`): ``logprobs`` with gradient, ``old_logprobs`` of
the behaviour policy, ``advantages`` and ``mask`` [B, T]; padding is zeroed before any arithmetic;
the loss is a number to minimise. At ratio 1 (on-policy) each of them has the gradient of the plain
policy gradient -A * grad log pi, aggregated like ``ppo_clip``'s (tests/algorithms/test_surrogates.py).
"""

from __future__ import annotations

import torch

from rlvr.algorithms.losses import (
    POLICY_LOSSES,
    _check_number,
    _finish,
    _masked_mean,
    _prepare,
    _ratio_metrics,
)
from rlvr.algorithms.outputs import LossOutput

# --- DPPO -------------------------------------------------------------------------------------------


def _binary_tv(p: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Signed Binary-TV p - mu: the TV distance between (mu, 1 - mu) and (p, 1 - p), with its sign."""
    return p - mu


def _binary_kl(lp: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """KL((mu, 1 - mu) || (p, 1 - p)) = mu log(mu / p) + (1 - mu) log((1 - mu) / (1 - p)), mu = e^old."""
    mu = torch.exp(old)
    rest = torch.where(mu < 1.0, (1.0 - mu) * (torch.log1p(-mu) - torch.log1p(-torch.exp(lp))), 0.0)
    return mu * (old - lp) + rest


def _dppo(lp, old, adv, keep, outside, aggregation, num_tokens, num_sequences, norm_length, cap):
    """l_t = -[t inside] * sg(min(r_t, cap)) * A_t * logprobs_t, with the metrics of both DPPO losses."""
    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    inside = (~outside & keep).to(lp.dtype)
    weight = ratio.detach().clamp(max=cap)
    values = -inside * weight * adv * lp
    metrics = _ratio_metrics(ratio, log_ratio, keep)
    metrics["policy/clipfrac_high"] = _masked_mean((outside & (adv > 0)).to(lp.dtype), keep)
    metrics["policy/clipfrac_low"] = _masked_mean((outside & (adv < 0)).to(lp.dtype), keep)
    metrics["policy/ratio_capped"] = _masked_mean((ratio.detach() > cap).to(lp.dtype), keep)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


def _check_dppo(dppo_delta_low, dppo_delta_high, dppo_ratio_cap) -> None:
    _check_number("dppo_delta_low", dppo_delta_low, minimum=0.0)
    _check_number("dppo_delta_high", dppo_delta_high, minimum=0.0)
    _check_number("dppo_ratio_cap", dppo_ratio_cap, minimum=1.0)


@POLICY_LOSSES.register("dppo_tv")
def dppo_tv(
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
    dppo_delta_low: float = 0.2,
    dppo_delta_high: float = 0.2,
    dppo_ratio_cap: float = 20.0,
) -> LossOutput:
    """DPPO-Binary-TV: a trust region on the change of the sampled token's probability.

    Qi et al. 2026, "Rethinking the Trust Region in LLM Reinforcement Learning" (arXiv 2602.04879).
    With p = pi(y_t), mu = pi_old(y_t) and the Binary-TV divergence |p - mu| (the TV distance of the
    two-outcome distributions {y_t, not y_t}), a token's gradient is masked when the update has
    already moved its probability past delta *in the direction its advantage pushes*::

        outside_t = (A_t > 0 and p - mu > dppo_delta_high) or (A_t < 0 and p - mu < -dppo_delta_low)
        l_t       = -[not outside_t] * sg(min(r_t, dppo_ratio_cap)) * A_t * logprobs_t

    so d l_t / d logprobs_t = -r_t A_t inside the region (PPO's unclipped gradient) and 0 outside.
    Moving back toward mu is never masked. The truncated stop-gradient weight is the paper's
    sec. 5.4 (truncated importance sampling with a large threshold) as in the authors' code,
    whose cap is 20. The loss *value* holds the log-probability (like CISPO's): only its gradient
    is meaningful. Exact equation numbers of the paper were not available to this implementation;
    the masks follow the authors' released code (sail-sg/Stable-RL). Defaults delta = 0.2 for TV
    follow the recommendation of a widely used port, not a value read in the paper.

    Metrics: ``policy/clipfrac_high|low`` the fraction of tokens masked with A > 0 | A < 0,
    ``policy/ratio_capped`` the fraction whose weight was truncated.

    Worked example, delta = 0.2, one token with A = 1: mu = 0.5, p = 0.6 -> inside, weight r = 1.2,
    l = -1.2 * log 0.6 = 0.6130, dl/dlogprob = -1.2; p = 0.75 -> p - mu = 0.25 > 0.2: gradient 0.
    With A = -1 the same p = 0.75 is inside (the update moves p up, against nothing it must bound).
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_dppo(dppo_delta_low, dppo_delta_high, dppo_ratio_cap)
    with torch.no_grad():
        tv = _binary_tv(torch.exp(lp), torch.exp(old))
        outside = ((adv > 0) & (tv > dppo_delta_high)) | ((adv < 0) & (tv < -dppo_delta_low))
    return _dppo(
        lp, old, adv, keep, outside, aggregation, num_tokens, num_sequences, norm_length, dppo_ratio_cap
    )


@POLICY_LOSSES.register("dppo_kl")
def dppo_kl(
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
    dppo_delta_low: float = 0.2,
    dppo_delta_high: float = 0.2,
    dppo_ratio_cap: float = 20.0,
) -> LossOutput:
    """DPPO-Binary-KL: :func:`dppo_tv` with the Binary-KL divergence in place of Binary-TV.

    Qi et al. 2026 (arXiv 2602.04879). With p = pi(y_t), mu = pi_old(y_t)::

        D_t       = mu log(mu / p) + (1 - mu) log((1 - mu) / (1 - p))      KL of {y_t, not y_t}
        outside_t = (A_t > 0 and p > mu and D_t > dppo_delta_high) or (A_t < 0 and p < mu and D_t > dppo_delta_low)
        l_t       = -[not outside_t] * sg(min(r_t, dppo_ratio_cap)) * A_t * logprobs_t

    D is computed exactly (log1p; mu = 1 gives the first term only, p = 1 gives +inf); the authors'
    code adds 1e-8 inside the second logarithm. The KL thresholds are much smaller than TV's (a
    widely used port recommends 0.05); the config's shared default 0.2 is TV's, so set
    ``dppo_delta_low`` / ``dppo_delta_high`` when choosing this loss.

    Worked example, delta = 0.05, A = 1, mu = 0.5, p = 0.7: D = 0.5 ln(0.5/0.7) + 0.5 ln(0.5/0.3)
    = -0.16824 + 0.25541 = 0.08718 > 0.05 -> masked; p = 0.6: D = 0.02014 -> inside.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_dppo(dppo_delta_low, dppo_delta_high, dppo_ratio_cap)
    with torch.no_grad():
        kl = _binary_kl(lp, old)
        up, down = lp > old, lp < old
        outside = ((adv > 0) & up & (kl > dppo_delta_high)) | ((adv < 0) & down & (kl > dppo_delta_low))
    return _dppo(
        lp, old, adv, keep, outside, aggregation, num_tokens, num_sequences, norm_length, dppo_ratio_cap
    )


# --- SAPO -------------------------------------------------------------------------------------------


@POLICY_LOSSES.register("sapo")
def sapo(
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
    sapo_tau_pos: float = 1.0,
    sapo_tau_neg: float = 1.05,
) -> LossOutput:
    """SAPO: a smooth sigmoid gate on the token ratio in place of the hard clip.

    Gao et al. 2025, "Soft Adaptive Policy Optimization" (arXiv 2511.20347): the objective
    (1/G) sum_i (1/|y_i|) sum_t f(r_it) A_it with the soft gate::

        f(r) = (4 / tau) * sigmoid(tau * (r - 1))      tau = sapo_tau_pos if A > 0 else sapo_tau_neg
        l_t  = -f(r_t) * A_t

    f'(r) = 4 sigmoid(.)(1 - sigmoid(.)), which is 1 at r = 1: on-policy the gradient is exactly the
    policy gradient -A grad log pi (the loss *value* there is -2 A / tau). Away from r = 1 the
    gradient decays smoothly instead of dropping to zero at a clip boundary; a larger tau decays
    faster. The paper makes the negative-advantage temperature the larger one, to damp negative
    tokens more; the defaults 1.0 / 1.05 are those of the widely used ports (the exact values
    of the paper's runs were not available to this implementation). The temperature is chosen per
    token by the sign of its advantage (per sequence in the paper; the same when A is constant
    along a sequence). The paper averages tokens per sequence, then sequences (the default
    ``seq-mean-token-mean``). The log-ratio is not clamped; the ports clamp it to [-20, 20].

    Worked example, tau = 1, one token, A = 1, r = 2: sigmoid(1) = 0.73106, l = -4 * 0.73106
    = -2.92423, dl/dlogprob = -4 * 0.73106 * 0.26894 * 2 = -1.57290.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_number("sapo_tau_pos", sapo_tau_pos, minimum=0.0, strict=True)
    _check_number("sapo_tau_neg", sapo_tau_neg, minimum=0.0, strict=True)
    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    tau = torch.where(adv > 0, sapo_tau_pos, sapo_tau_neg).to(lp.dtype)
    gate = (4.0 / tau) * torch.sigmoid(tau * (ratio - 1.0))
    values = -gate * adv
    metrics = _ratio_metrics(ratio, log_ratio, keep)
    slope = 4.0 * torch.sigmoid(tau * (ratio - 1.0)) * torch.sigmoid(-tau * (ratio - 1.0))
    metrics["policy/sapo_gate_slope"] = _masked_mean(slope.detach(), keep)  # 1 on-policy
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


# --- GMPO -------------------------------------------------------------------------------------------


@POLICY_LOSSES.register("gmpo")
def gmpo(
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
    gmpo_eps_low: float = 0.4,
    gmpo_eps_high: float = 0.4,
) -> LossOutput:
    """GMPO: the geometric mean of the token ratios, clipped per token in log space.

    Zhao et al. 2025, "Geometric-Mean Policy Optimization" (arXiv 2507.20673): GRPO's arithmetic
    mean of the token terms r_t A is replaced by their geometric mean, with PPO's pessimistic clip
    applied to each token's log-ratio before the mean. With s = sign(A_i), A_i the sequence's
    advantage (the mean of ``advantages`` over its response tokens) and x_t = log r_t::

        x~_t = s * min(s * x_t, s * clip(x_t, -gmpo_eps_low, gmpo_eps_high))
        L_i  = -A_i * exp(mean_t x~_t)          = -A_i * (prod_t r~_t)^(1/|y_i|)

    A token clipped on the side its advantage pushes has zero gradient; the other side is never
    clipped. L_i is shared by every response token of sequence i and aggregated like any per-token
    loss: ``seq-mean-token-mean`` (the default) is the paper's (1/G) sum_i. Under every aggregation
    the gradient at ratio 1 equals ``ppo_clip``'s: sequence i's weight in the aggregate times
    |y_i| cancels the 1/|y_i| of the mean. The paper's range is (e^-0.4, e^0.4) (its experiments),
    the defaults here. Token-varying advantages are reduced to their sequence mean.

    Worked example, eps = 0.4, one sequence of 2 tokens, A = 1, x = (0.6, -0.2): x~ = (0.4, -0.2),
    L = -exp(0.1) = -1.10517; the first token's gradient is 0, the second's -1.10517 / 2.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_number("gmpo_eps_low", gmpo_eps_low, minimum=0.0)
    _check_number("gmpo_eps_high", gmpo_eps_high, minimum=0.0)
    m = keep.to(lp.dtype)
    length = m.sum(-1).clamp(min=1.0)  # [B]
    seq_adv = (adv * m).sum(-1) / length  # [B]
    sign = torch.sign(seq_adv)[:, None]  # [B, 1]
    log_ratio = lp - old  # [B, T]
    clipped = log_ratio.clamp(-gmpo_eps_low, gmpo_eps_high)
    used = sign * torch.minimum(sign * log_ratio, sign * clipped)
    seq_ratio = torch.exp((used * m).sum(-1) / length)  # [B]
    values = (-seq_adv * seq_ratio)[:, None].expand_as(lp)
    metrics = _ratio_metrics(torch.exp(log_ratio), log_ratio, keep)
    x = log_ratio.detach()
    metrics["policy/clipfrac_high"] = _masked_mean(((sign > 0) & (x > gmpo_eps_high)).to(lp.dtype), keep)
    metrics["policy/clipfrac_low"] = _masked_mean(((sign < 0) & (x < -gmpo_eps_low)).to(lp.dtype), keep)
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


for _loss in (dppo_tv, dppo_kl, sapo, gmpo):  # every token term is a multiple of its advantage
    _loss.vanishes_at_zero_advantage = True  # type: ignore[attr-defined]
