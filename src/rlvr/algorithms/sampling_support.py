"""The support a token was sampled from under top-k / top-p, and its log-probability there.

The rollout draws each token from ``softmax(logits / temperature)`` restricted to the ``top_k`` most
likely tokens, then to the top-p nucleus of that renormalised distribution
(:func:`rlvr.rollout.sampling.sample_next_token`). The policy that produced the data is therefore
the *truncated* distribution::

    pi_T(v) = pi(v) / M    for v in the kept set S,   0 outside        M = sum_{u in S} pi(u)

so log pi_T(y) = log pi(y) - log M. An importance ratio of untruncated probabilities
pi_theta(y) / pi_old(y) is 1 before the first update, yet the tokens came from pi_T: the gradient
is that of a different policy, scaled by the kept mass M (about 0.9 at top_p = 0.8). With
``algorithm.replay_sampling_support`` the rollout records log pi_T of the token it drew and the
trainer computes log pi_T from its own logits with the same truncation (this module), so the ratio
is that of the distributions the data came from.

:func:`truncate_weights` is the one definition of the kept set, used by the sampler and by
:func:`truncated_token_logprobs` alike, so the two apply the same rules:

* **top-k**: keep every token whose scaled logit is >= the k-th largest (ties at the k-th value are
  all kept); ``top_k = 0`` or ``top_k >= V`` keeps all.
* **top-p**: on the (top-k renormalised) weights, keep a token when the mass ranked above it is
  below ``top_p`` of the total (Holtzman et al. 2020, arXiv 1904.09751, sec. 3.1). The most likely
  token is always kept; between equal weights the order of ``torch.topk`` decides.
* A token whose weight underflows to 0 in float32 (``exp(z - max z) == 0``) is outside the support.

Both sides compute in float32 from float32 logits (float64 logits stay float64), dividing by the
temperature after the upcast, as the sampler does. Rollout and trainer logits that differ in the
last bits (a cached decode against a full forward) can put a token on different sides of a top-p
boundary; the trainer then gives it ``-inf`` (:func:`neutralize_outside_support` keeps that out of
the losses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd.function import once_differentiable

from rlvr.algorithms.checks import check_mask, check_tensor
from rlvr.algorithms.entropy import (
    DEFAULT_CHUNK_SIZE,
    _blocks,
    _check_logits,
    _check_token_ids,
    _compute_dtype,
    _scaled,
)
from rlvr.errors import ConfigError

NUCLEUS_FIRST_TRY = 1024
"""The nucleus is looked for among this many heaviest tokens before the whole vocabulary is sorted."""


@dataclass(frozen=True)
class SamplingSupport:
    """The truncation of the rollout's sampler: ``top_k`` (0: off) and ``top_p`` (1: off)."""

    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check_support(self.top_k, self.top_p)

    @property
    def truncates(self) -> bool:
        """False when neither top-k nor top-p removes a token (the support is the vocabulary)."""
        return self.top_k > 0 or self.top_p < 1.0


def check_support(top_k: int, top_p: float) -> None:
    """Raise :class:`ConfigError` naming ``top_k`` or ``top_p`` when out of range."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
        raise ConfigError(f"top_k must be an integer >= 0 (0 turns it off), got {top_k!r}")
    if isinstance(top_p, bool) or not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise ConfigError(f"top_p must be in (0, 1] (1 turns it off), got {top_p!r}")


def nucleus_weights(weights: torch.Tensor, top_p: float, first_try: int = NUCLEUS_FIRST_TRY) -> torch.Tensor:
    """``weights`` [A, V] with every token outside the top-p nucleus of its row set to 0.

    A token is kept when the mass ranked above it is below ``top_p`` of the row's total. The
    nucleus is looked for among the ``first_try`` heaviest tokens first (a partial sort, much
    cheaper than sorting a large vocabulary); only when they hold less than ``top_p`` of some row's
    mass is the whole vocabulary sorted. Example: weights (0.5, 0.25, 0.15, 0.1), top_p 0.7: the
    mass above the tokens is (0, 0.5, 0.75, 0.9), so the first two are kept.
    """
    vocab = weights.shape[-1]
    total = weights.sum(dim=-1, keepdim=True)  # [A, 1]
    k = min(first_try, vocab)
    while True:
        heaviest, index = torch.topk(weights, k, dim=-1)  # [A, k], descending
        cumulative = heaviest.cumsum(dim=-1)
        if k == vocab or bool((cumulative[:, -1:] >= top_p * total).all()):
            break  # every token beyond the k heaviest has at least top_p of the mass above it
        k = vocab
    keep = (cumulative - heaviest) < top_p * total
    return torch.zeros_like(weights).scatter(-1, index, heaviest * keep)


def truncate_weights(weights: torch.Tensor, scaled: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The sampler's weights [A, V] (``exp(scaled - max)``, non-negative) with every token outside the
    top-k, then top-p, support set to 0; ``scaled`` [A, V] are the tempered logits they came from."""
    if top_k and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[:, -1:]
        weights = weights.masked_fill(scaled < kth, 0.0)
    if top_p < 1.0:
        weights = nucleus_weights(weights, top_p)
    return weights


def _support_block(z: torch.Tensor, token_ids: torch.Tensor, top_k: int, top_p: float):
    """For tempered logits ``z`` [N, V] and tokens [N]: (truncated logprobs [N], -inf outside; the
    kept weights [N, V]; their sums [N, 1]; whether each token is kept [N])."""
    shift = z.amax(dim=-1, keepdim=True)
    weights = truncate_weights((z - shift).exp(), z, top_k, top_p)
    kept_sum = weights.sum(dim=-1, keepdim=True)
    index = token_ids[:, None]
    kept = (weights.gather(-1, index) > 0).squeeze(-1)
    logprob = (z.gather(-1, index) - shift - kept_sum.log()).squeeze(-1)  # the sampler's formula
    return torch.where(kept, logprob, -torch.inf), weights, kept_sum, kept


class _ChunkedSupportLogprobs(torch.autograd.Function):
    """log pi_T(y) = z_y - log sum_{v in S} e^{z_v} with z = logits / tau and S the kept set;
    d log pi_T(y) / dz_v = [v = y] - pi_T(v) inside S, 0 outside; 0 everywhere when y is outside S."""

    @staticmethod
    def forward(ctx, logits, token_ids, temperature, top_k, top_p, chunk_size):
        batch, length, vocab = logits.shape
        dtype = _compute_dtype(logits.dtype)
        logprobs = torch.empty(batch, length, dtype=dtype, device=logits.device)
        for rows, cols in _blocks(batch, length, chunk_size):
            z = _scaled(logits[rows, cols], temperature, dtype).reshape(-1, vocab)
            lp, _, _, _ = _support_block(z, token_ids[rows, cols].reshape(-1), top_k, top_p)
            logprobs[rows, cols] = lp.view(logits[rows, cols].shape[:2])
        ctx.save_for_backward(logits, token_ids)
        ctx.settings = (temperature, top_k, top_p, chunk_size)
        return logprobs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs):
        logits, token_ids = ctx.saved_tensors
        temperature, top_k, top_p, chunk_size = ctx.settings
        vocab = logits.shape[-1]
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        dtype = _compute_dtype(logits.dtype)
        for rows, cols in _blocks(logits.shape[0], logits.shape[1], chunk_size):
            shape = logits[rows, cols].shape
            z = _scaled(logits[rows, cols], temperature, dtype).reshape(-1, vocab)
            ids = token_ids[rows, cols].reshape(-1, 1)
            _, weights, kept_sum, kept = _support_block(z, ids.squeeze(-1), top_k, top_p)
            g = grad_logprobs[rows, cols].reshape(-1, 1).to(dtype)
            g = torch.where(kept[:, None], g, torch.zeros((), dtype=dtype, device=g.device)) / temperature
            block = weights.div_(kept_sum).mul_(-g).scatter_add_(-1, ids, g)
            grad[rows, cols] = block.view(shape)
        return grad, None, None, None, None, None


def truncated_token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """log pi_T [B, T] at ``token_ids`` [B, T]: the log-probability under ``softmax(logits /
    temperature)`` truncated to its top-k, then top-p support and renormalised (the distribution
    :func:`rlvr.rollout.sampling.sample_next_token` draws from). ``-inf`` where the token is outside
    the support. Chunked and differentiable like :func:`rlvr.algorithms.entropy.token_logprobs`
    (same pairing of ``logits[b, t]`` with ``token_ids[b, t]``, no shift); the support is a
    selection, so the gradient is that of the renormalised distribution on it, and 0 for a token
    outside it. With ``top_k = 0`` and ``top_p = 1`` it equals ``token_logprobs``.

    Example: probabilities (0.5, 0.25, 0.15, 0.1), top_p 0.7 keeps the first two (mass above them
    0 and 0.5 < 0.7; 0.75 >= 0.7): log-probabilities (log 2/3, log 1/3, -inf, -inf). With top_k 3 and
    top_p 0.8 the top-3 renormalised masses (0.5556, 0.2778, 0.1667) have 0.8333 >= 0.8 above the
    third, so the same two are kept. Against ``token_logprobs`` the kept tokens differ by the log of
    the kept mass: log 0.5 - log 2/3 = log 0.75.
    """
    logits = _check_logits(logits, temperature, chunk_size)
    token_ids = _check_token_ids(token_ids, logits)
    check_support(top_k, top_p)
    return _ChunkedSupportLogprobs.apply(
        logits, token_ids.long(), float(temperature), int(top_k), float(top_p), chunk_size
    )


def neutralize_outside_support(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``-inf`` truncated log-probabilities out of the policy loss: (logprobs, old_logprobs,
    outside [B, T] bool, on response tokens).

    A token outside the truncated support of the current policy (it left the nucleus after an
    update, or sits on a top-p boundary the trainer's logits put it past) has log pi_T = -inf, and
    so may a recomputed old log-probability. Losses compute ``logprobs - old_logprobs``,
    ``0 * logprobs`` and the like, where ``-inf`` turns into NaN. Where either side is not finite
    both are replaced (``torch.where``, never a product with 0) by one stand-in, the old
    log-probability when it is finite, else the current one, else 0, without gradient: the ratio of
    such a token is 1 and it adds nothing to the gradient (its true truncated gradient is 0 too:
    log pi_T is constant outside the support). Padding is treated the same way.
    """
    check_tensor(logprobs, "logprobs", 2)
    check_mask(mask, "mask", tuple(logprobs.shape))
    old = old_logprobs.detach().to(logprobs.dtype)
    current_ok, old_ok = torch.isfinite(logprobs), torch.isfinite(old)
    zero = torch.zeros((), dtype=logprobs.dtype, device=logprobs.device)
    stand_in = torch.where(old_ok, old, torch.where(current_ok, logprobs.detach(), zero))
    replaced = ~(current_ok & old_ok)
    return (
        torch.where(replaced, stand_in, logprobs),
        torch.where(replaced, stand_in, old),
        replaced & mask.bool(),
    )
