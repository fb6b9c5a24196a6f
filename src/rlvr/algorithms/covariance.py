"""Which tokens Clip-Cov and KL-Cov act on, chosen over the whole mini-batch on any number of ranks.

Cui et al. 2025 (arXiv 2505.22617, sec. 4) define the token covariance over the batch::

    Cov_t = (log pi(y_t) - mean log pi) * (A_t - mean A)        means over the batch's response tokens

Clip-Cov detaches k = max(1, floor(clip_cov_ratio * N)) tokens drawn uniformly from those with
clip_cov_lb <= Cov_t <= clip_cov_ub (and not already clipped by the PPO bounds); KL-Cov penalises
the k = max(1, floor(kl_cov_ratio * N)) tokens of largest Cov_t, N being the batch's response
tokens. The authors' code computes both per micro-batch on each rank, which makes the update depend
on how the batch is cut; here the means, N, the candidates and the choice are taken over the whole
mini-batch of every rank (sums through :func:`rlvr.distributed.all_reduce_sum`, candidates gathered
in the order of one process), so the choice is the same on 1 or N ranks and for any micro-batch size.

Tokens are ordered by (row position in the step, token index): ties of KL-Cov's ranking go to the
earlier token, and Clip-Cov's uniform draw permutes that order with the step's shared generator.

With ``all_ranks=False`` the same choice is made over the given tokens alone, with no collective:
that is what a loss called on its own does (the authors' per-call choice).
"""

from __future__ import annotations

import math

import torch

from rlvr.distributed import all_reduce_sum, gather_objects

SELECTION_ARGS = ("positions", "all_ranks")
"""Arguments of the selection functions, beyond a loss's tensors, that are not config hyperparameters."""

ROW_STRIDE = 1 << 24
"""Token keys are row_position * ROW_STRIDE + token index (responses are far shorter than 2**24)."""


def selection_count(fraction: float, n_tokens: int) -> int:
    """floor(fraction * N), at least 1 when fraction > 0 and there are tokens."""
    if fraction <= 0 or n_tokens == 0:
        return 0
    return max(1, math.floor(fraction * n_tokens))


def token_covariance(
    logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, all_ranks: bool = False
) -> torch.Tensor:
    """Cov_t [B, T] in float64: (logprob_t - mean logprob) (A_t - mean A), 0 off the mask.

    The means are over the response tokens of every rank (``all_ranks``) or of these tensors.
    """
    return _covariance(logprobs, advantages, mask.bool(), all_ranks)[0]


def _covariance(logprobs, advantages, keep, all_ranks: bool) -> tuple[torch.Tensor, int]:
    """Cov_t [B, T] (0 off the mask) and N, the number of response tokens the means are over."""
    m = keep.to(torch.float64)
    lp, adv = logprobs.detach().double() * m, advantages.detach().double() * m
    sums = torch.stack([lp.sum(), adv.sum(), m.sum()])
    sum_lp, sum_adv, n = (all_reduce_sum(sums) if all_ranks else sums).tolist()
    n_tokens = int(round(n))
    cov = (lp - sum_lp / max(n, 1.0)) * (adv - sum_adv / max(n, 1.0)) * m
    return cov, n_tokens


def _gather(obj: object, all_ranks: bool) -> list[object]:
    return gather_objects(obj) if all_ranks else [obj]


def _token_keys(positions: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    rows, width = shape
    return positions.long().view(rows, 1) * ROW_STRIDE + torch.arange(width).view(1, width)


def _mark(keys: torch.Tensor, chosen: set[int]) -> torch.Tensor:
    """Where ``keys`` is one of ``chosen`` (same shape as ``keys``)."""
    return torch.isin(keys, torch.tensor(sorted(chosen), dtype=keys.dtype))


def kl_cov_selection(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    generator: torch.Generator | None = None,
    kl_cov_ratio: float = 2e-3,
    all_ranks: bool = True,
) -> torch.Tensor:
    """The tokens [B, T] (bool) KL-Cov penalises: the k of largest Cov_t over all ranks (or, with
    ``all_ranks=False``, over these tokens)."""
    keep = mask.bool().cpu()
    cov, n_tokens = _covariance(logprobs.cpu(), advantages.cpu(), keep, all_ranks)
    keys = _token_keys(positions.cpu(), tuple(keep.shape))
    k = selection_count(kl_cov_ratio, n_tokens)
    # The k largest over all ranks are among each rank's own k largest: only those are gathered.
    # Order: Cov_t descending, then key ascending (keys are distinct, so the order is total).
    own_cov, own_keys = cov[keep], keys[keep]
    by_key = torch.argsort(own_keys, stable=True)
    own_cov, own_keys = own_cov[by_key], own_keys[by_key]
    top = torch.argsort(-own_cov, stable=True)[:k]
    mine = (own_cov[top].tolist(), own_keys[top].tolist())
    scored = [(c, key) for part in _gather(mine, all_ranks) for c, key in zip(*part, strict=True)]  # type: ignore[misc]
    scored.sort(key=lambda ck: (-ck[0], ck[1]))
    chosen = {key for _, key in scored[:k]}
    return _mark(keys, chosen).to(mask.device) & mask.bool()


def clip_cov_selection(
    *,
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    generator: torch.Generator | None = None,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_cov_ratio: float = 2e-4,
    clip_cov_lb: float = 1.0,
    clip_cov_ub: float = 5.0,
    all_ranks: bool = True,
) -> torch.Tensor:
    """The tokens [B, T] (bool) Clip-Cov detaches: k drawn uniformly from the window's candidates of
    all ranks (or, with ``all_ranks=False``, of these tokens), with ``generator`` (the same draws
    on every rank)."""
    keep = mask.bool().cpu()
    lp, old, adv = logprobs.detach().cpu(), old_logprobs.detach().cpu(), advantages.detach().cpu()
    cov, n_tokens = _covariance(lp, adv, keep, all_ranks)
    ratio = torch.exp(torch.where(keep, lp - old, 0.0))
    clipped = ((adv > 0) & (ratio > 1.0 + eps_high)) | ((adv < 0) & (ratio < 1.0 - eps_low))
    candidates = keep & ~clipped & (cov >= clip_cov_lb) & (cov <= clip_cov_ub)
    keys = _token_keys(positions.cpu(), tuple(keep.shape))
    everyone = sorted(k for part in _gather(keys[candidates].tolist(), all_ranks) for k in part)  # type: ignore[union-attr]
    k = min(selection_count(clip_cov_ratio, n_tokens), len(everyone))
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(len(everyone), generator=generator, device=device).tolist()
    chosen = {everyone[i] for i in order[:k]}
    return _mark(keys, chosen).to(mask.device) & mask.bool()
