"""Sequence-level policy objectives: VESPO and LUSPO.

Same signature and conventions as :mod:`rlvr.algorithms.losses` (they register into the same
:data:`~rlvr.algorithms.losses.POLICY_LOSSES`): ``logprobs`` with gradient, ``old_logprobs`` of
the behaviour policy, ``advantages`` and ``mask`` [B, T]; padding is zeroed before any arithmetic;
the loss is a number to minimise. Both weigh a whole response by one sequence-level quantity:

* ``vespo``: a smooth kernel of the *unnormalised* sequence importance weight W = prod_t r_t
  scales the REINFORCE gradient of the response (Shen et al. 2026, arXiv 2602.10693, eq. 20);
* ``luspo``: GSPO's clipped sequence objective with each response's term multiplied by its length
  |y_i| (Liu et al. 2026, arXiv 2602.05261, eq. 7).

At ratio 1 (on-policy) both have the gradient of the plain policy gradient -A * grad log pi(y|x),
summed over the response's tokens (tests/algorithms/test_vespo.py, test_luspo.py).
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
    gspo_token_terms,
)
from rlvr.algorithms.outputs import LossOutput

# --- VESPO ------------------------------------------------------------------------------------------


def vespo_kernel(log_w: torch.Tensor, c1: torch.Tensor | float, c2: torch.Tensor | float) -> torch.Tensor:
    """phi(W) = W^c1 * exp(c2 (1 - W)) from log W, evaluated in log space (VESPO sec. 3.3).

    log phi = c1 log W + c2 (1 - W); phi(1) = 1. A huge log W gives W = inf and phi = 0, a very
    negative one gives phi = 0, both the kernel's limits (no NaN, no clamp).
    """
    return torch.exp(c1 * log_w + c2 * (1.0 - torch.exp(log_w)))


@POLICY_LOSSES.register("vespo")
def vespo(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    generator: torch.Generator | None = None,
    aggregation: str = "seq-mean-token-sum",
    vespo_c1_pos: float = 2.0,
    vespo_c2_pos: float = 3.0,
    vespo_c1_neg: float = 3.0,
    vespo_c2_neg: float = 2.0,
) -> LossOutput:
    """VESPO: a smooth kernel of the sequence importance weight scales the REINFORCE gradient.

    Shen et al. 2026, "VESPO: Variational Sequence-level Soft Policy Optimization" (arXiv
    2602.10693). With W_i = pi(y_i|x) / pi_old(y_i|x) = exp(sum_t (logprobs - old_logprobs)), the
    product of the token ratios with *no* length normalisation (eq. 5), the gradient estimator is
    eq. 20::

        grad J = E[ phi(W) * A * grad log pi(y|x) ],   phi(W) = W^c1 * exp(c2 (1 - W))

    the shifted form (sec. 3.3) of the closed-form kernel W^alpha exp(-lambda W) of eq. 17, with
    phi(1) = 1. (c1, c2) depend on the sign of the sequence's advantage: (vespo_c1_pos,
    vespo_c2_pos) = (2, 3) for A >= 0 and (vespo_c1_neg, vespo_c2_neg) = (3, 2) for A < 0, the
    paper's values for every experiment (sec. 4.1). phi is a stop-gradient weight and the loss, as
    in the paper's pseudocode (appendix I), is::

        l_t = -sg(phi(W_i)) * A_t * logprobs_t

    so d l_t / d logprobs_t = -phi(W_i) A_t: the gradient of the implicit surrogate
    E[f(W) A] with f'(W) = phi(W) / W (eq. 39-41, an incomplete gamma function). The loss *value*
    holds the log-probability (like CISPO's): only its gradient is meaningful. log phi is computed
    in log space (c1 log W + c2 (1 - W)) and not clamped; the authors' code clamps the token and
    sequence log-ratios to [-20, 20], which changes nothing but phi ~ 0.

    The sign that picks (c1, c2) is that of the masked mean of ``advantages`` over the response
    (the sequence advantage of eq. 20; token-varying advantages still weigh their own tokens).
    Aggregation: eq. 20 sums the token gradients of a response and averages over responses, which
    is ``seq-mean-token-sum`` (the default here); the authors' scripts use ``token-mean``, which
    differs by the batch's mean response length (a per-batch constant).

    Metrics: ``policy/vespo_phi_mean|max|min`` and ``policy/vespo_log_w_mean|max|min`` (per
    sequence, counted per token), beside the token ratio metrics.

    Worked example, one sequence of 2 tokens, A = 1, token log-ratios (0.1, 0.2): log W = 0.3,
    W = 1.349859, log phi = 2 * 0.3 + 3 * (1 - 1.349859) = -0.449576, phi = 0.637898; under
    ``seq-mean-token-sum`` dl/dlogprobs_t = -0.637898 for both tokens. With A = -1 (c = (3, 2)),
    phi = exp(0.9 - 0.699718) = 1.221748 and the gradient is +1.221748.
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    for name, value in (
        ("vespo_c1_pos", vespo_c1_pos),
        ("vespo_c2_pos", vespo_c2_pos),
        ("vespo_c1_neg", vespo_c1_neg),
        ("vespo_c2_neg", vespo_c2_neg),
    ):
        _check_number(name, value, minimum=0.0, strict=True)
    m = keep.to(lp.dtype)
    log_ratio = lp - old  # [B, T]
    log_w = (log_ratio.detach() * m).sum(-1)  # [B], log W_i
    seq_adv = (adv * m).sum(-1) / m.sum(-1).clamp(min=1.0)  # [B]
    positive = seq_adv >= 0

    def pick(pos: float, neg: float) -> torch.Tensor:  # in lp's dtype, no float32 round trip
        return torch.where(positive, torch.full_like(seq_adv, pos), torch.full_like(seq_adv, neg))

    c1, c2 = pick(vespo_c1_pos, vespo_c1_neg), pick(vespo_c2_pos, vespo_c2_neg)
    phi = vespo_kernel(log_w, c1, c2)  # [B], no gradient
    values = -phi[:, None] * adv * lp
    metrics = _ratio_metrics(torch.exp(log_ratio), log_ratio, keep)
    phi_t, log_w_t = phi[:, None].expand_as(lp), log_w[:, None].expand_as(lp)
    has_tokens = bool(keep.any())
    for key, x, empty in (("phi", phi_t, 1.0), ("log_w", log_w_t, 0.0)):
        fill = torch.full((), empty, dtype=lp.dtype, device=lp.device)
        metrics[f"policy/vespo_{key}_mean"] = _masked_mean(x, keep) if has_tokens else fill
        metrics[f"policy/vespo_{key}_max"] = x[keep].max() if has_tokens else fill
        metrics[f"policy/vespo_{key}_min"] = x[keep].min() if has_tokens else fill
    return _finish(values, keep, aggregation, num_tokens, num_sequences, norm_length, metrics)


# --- LUSPO ------------------------------------------------------------------------------------------


@POLICY_LOSSES.register("luspo")
def luspo(
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
    luspo_eps_low: float = 2e-3,
    luspo_eps_high: float = 2.5e-3,
) -> LossOutput:
    """LUSPO: GSPO's clipped sequence objective, each response's term scaled by its length.

    Liu et al. 2026, "Length-Unbiased Sequence Policy Optimization" (arXiv 2602.05261), eq. 7::

        J = E[ (1/G) sum_i min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i) * |y_i| ]

    with GSPO's length-normalised ratio s_i = exp(mean_t (logprobs - old_logprobs)) (eq. 6). Its
    gradient (eq. 8, clip omitted) is s_i A_i sum_t grad log pi(y_it): the 1/|y_i| that GSPO's
    gradient carries (eq. 9) is gone, so a long response's tokens weigh as much as a short one's.
    rlvr uses the GSPO-token form of :func:`~rlvr.algorithms.losses.gspo` (value s_i, gradient
    s_i grad log pi(y_it), per-token advantages pass through) and multiplies it by |y_i|, the
    number of response tokens of the row::

        l_t = -|y_i| * min(s_it A_t, clip(s_it, 1 - luspo_eps_low, 1 + luspo_eps_high) A_t)

    shared by the tokens of sequence i like any per-sequence loss; ``seq-mean-token-mean`` (the
    default) then gives exactly eq. 7 (value and gradient), and equals ``gspo`` under
    ``seq-mean-token-sum``. Under ``token-mean`` a sequence would weigh |y_i|^2. The paper's clip
    ranges are eps_low = 2e-3, eps_high = 2.5e-3 (sec. 5.1, with DAPO's clip-higher), the defaults.
    No clamp of the log-ratio. Metrics as ``gspo``'s: ``policy/ratio_*`` and the clip fractions
    are those of s_i, counted per token.

    Worked example, one sequence of 2 tokens, A = 1, token log-ratios (0.001, 0.001):
    s = e^0.001 = 1.0010005 (inside [0.998, 1.0025]), l = -2 * 1.0010005 = -2.002001 and
    dl/dlogprobs_t = -1.0010005 for each token (GSPO's is half that). At ratio 1, sequences of
    1 and 3 tokens with A = 1 give -(1 + 3) / 2 = -2 (GSPO: -1).
    """
    lp, old, adv, keep = _prepare(logprobs, old_logprobs, advantages, mask, aggregation)
    _check_number("luspo_eps_low", luspo_eps_low, minimum=0.0, maximum=1.0)
    _check_number("luspo_eps_high", luspo_eps_high, minimum=0.0)
    values, metrics = gspo_token_terms(lp, old, adv, keep, luspo_eps_low, luspo_eps_high)
    length = keep.to(lp.dtype).sum(-1)  # [B], |y_i|
    return _finish(
        values * length[:, None], keep, aggregation, num_tokens, num_sequences, norm_length, metrics
    )


for _loss in (vespo, luspo):  # every token term is a multiple of its advantage
    _loss.vanishes_at_zero_advantage = True  # type: ignore[attr-defined]
