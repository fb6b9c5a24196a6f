"""SPO, Segment Policy Optimization (Guo et al., arXiv 2505.23564): segment-level advantages.

SPO-chain, the paper's variant for short chains of thought, in three parts:

1. **Partition at cut points** (:func:`spo_cut_points`). A token sampled with probability below a
   threshold rho (``spo_threshold``, 0.9) is a *cutpoint*: a place where the reasoning could have
   gone another way. Every ``spo_interval``-th cutpoint (the 1st, the (1 + int)-th, ...; int = 5 in
   the paper's main SPO-chain runs) starts a new segment, so each segment holds ``int`` cutpoints.
   The segment starts *at* the cutpoint token: its state is the prompt plus the tokens before it.
2. **Monte Carlo values** at the segment starts. ``V(s)`` is the mean reward of K completions that
   continue the state ``s`` (``spo_continuations``; the training loop samples them,
   :mod:`rlvr.training.segment_values`). At the prompt the value is the mean reward of the
   prompt's group (the group's samples are K' independent completions of that state), and at the
   end of a completion it is the completion's own reward.
3. **Segment advantages** (:func:`spo_segment_advantages`): chain-based estimation,
   ``A_k = V(s_{t_{k+1}}) - V(s_{t_k})``, the value gained over segment k; every token of the
   segment gets it. With the probability mask (``spo_prob_mask``, the paper's SPO-chain choice)
   only the cutpoint tokens (probability < rho) keep it, and the other tokens leave the policy loss
   (:attr:`AdvantageOutput.loss_mask`).

The estimator ``spo`` registers into :data:`~rlvr.algorithms.advantages.ADVANTAGES` with the same
signature as every estimator plus two tensors the loop passes to it (``takes_cut_values``):
``sampling_logprobs`` [B, T] (the rollout's logprobs, which define the cutpoints) and
``cut_values`` [B, T] (the Monte Carlo values at the cut points, anything elsewhere).

SPO-tree, the paper's variant for long chains of thought, samples each prompt's completions as a
tree of fixed-length segments (:mod:`rlvr.training.spo_tree`); every segment is then a row whose
group is its siblings and whose reward is its node's value, and the same estimator (with
``spo_tree`` set: no cut points) gives ``V(node) - V(parent)``.
"""

from __future__ import annotations

import math

import torch

from rlvr.algorithms.advantages import ADVANTAGES, F64, _floating, _output, _prepare, sequence_outcomes
from rlvr.algorithms.checks import check_same_shape, check_tensor
from rlvr.algorithms.outputs import AdvantageOutput
from rlvr.distributed import all_reduce_sum
from rlvr.errors import ConfigError

SPO_TENSOR_ARGS: tuple[str, ...] = ("sampling_logprobs", "cut_values")
"""The tensors the loop passes to an estimator whose ``takes_cut_values`` is true."""


def check_spo_settings(spo_threshold: float, spo_interval: int, spo_max_cuts: int | None) -> None:
    """Raise ConfigError naming the ``algorithm.spo_*`` key of a value out of range."""
    if (
        isinstance(spo_threshold, bool)
        or not isinstance(spo_threshold, (int, float))
        or not 0 < spo_threshold <= 1
    ):
        raise ConfigError(f"algorithm.spo_threshold must be a probability in (0, 1], got {spo_threshold!r}")
    if isinstance(spo_interval, bool) or not isinstance(spo_interval, int) or spo_interval < 1:
        raise ConfigError(f"algorithm.spo_interval must be an integer >= 1, got {spo_interval!r}")
    if spo_max_cuts is not None and (
        isinstance(spo_max_cuts, bool) or not isinstance(spo_max_cuts, int) or spo_max_cuts < 0
    ):
        raise ConfigError(f"algorithm.spo_max_cuts must be an integer >= 0 or None, got {spo_max_cuts!r}")


def low_probability_tokens(logprobs: torch.Tensor, mask: torch.Tensor, spo_threshold: float) -> torch.Tensor:
    """The paper's cutpoints [B, T] bool: response tokens sampled with probability < rho.

    Compared in log space in float64: ``log p < log(rho)``; padding is never a cutpoint.
    """
    return mask.bool() & (logprobs.detach().to(F64) < math.log(spo_threshold))


def spo_cut_points(
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    spo_threshold: float = 0.9,
    spo_interval: int = 5,
    spo_max_cuts: int | None = None,
) -> torch.Tensor:
    """SPO-chain's cutpoint-based partition (arXiv 2505.23564, SPO-chain, and its Figure 1): the
    response positions [B, T] bool where a new segment starts, each needing a Monte Carlo value::

        cutpoints  c_1 < c_2 < ...       the response tokens with p(y_t) < rho   (rho = spo_threshold)
        cuts       c_1, c_{1+int}, c_{1+2 int}, ...                             (int = spo_interval)

    A segment starts at its cut token: its state ``s_t`` is the prompt plus response tokens
    ``0 .. t-1``, so the continuations re-sample the uncertain token itself. A cut at position 0 is
    the prompt state, whose value is the group mean: it is not returned (it still counts as the
    first cutpoint, so the partition after it is the paper's). ``spo_max_cuts`` keeps only the first
    that many cuts of a row (None: no cap, the paper's); the rest of the row is its last segment.

    Example, rho = 0.9, int = 2, token probabilities (0.99, 0.72, 1.0, 0.85, 1.0, 0.56, 0.92, 0.23,
    0.98, 0.11): cutpoints at 1, 3, 5, 7, 9; cuts at 1, 5, 9 (the 1st, 3rd and 5th cutpoints), so the
    segments are [0, 1), [1, 5), [5, 9), [9, 10). With spo_max_cuts = 1 only the cut at 1 is kept.
    """
    check_spo_settings(spo_threshold, spo_interval, spo_max_cuts)
    logprobs = _floating(check_tensor(logprobs, "logprobs", 2), "logprobs")
    mask = check_tensor(mask, "mask", 2)
    check_same_shape("mask", mask, logprobs=logprobs)
    low = low_probability_tokens(logprobs, mask, spo_threshold)
    rank_among_low = low.long().cumsum(dim=1) - 1  # 0 for the first cutpoint of the row
    cuts = low & (rank_among_low % spo_interval == 0)
    cuts[:, 0] = False  # the prompt state: its value is the group mean
    if spo_max_cuts is not None:
        cuts = cuts & (cuts.long().cumsum(dim=1) <= spo_max_cuts)
    return cuts


def _group_min_and_shifted_mean(outcomes: torch.Tensor, group_ids: torch.Tensor):
    """Per completion [B], float64: its group's lowest reward ``min_g`` and ``mean_g(r - min_g)``.

    The group mean is their sum. SPO works with every value shifted by ``min_g`` (advantages are
    differences of values, so the shift cancels): a completion with no cut then gets
    ``(r - min_g) - mean_g(r - min_g)``, bit for bit Dr. GRPO's, and a group of equal rewards
    exactly 0.
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    empty = torch.zeros(groups, dtype=F64, device=outcomes.device)
    low = empty.scatter_reduce(0, inverse, outcomes, reduce="amin", include_self=False)
    counts = empty.index_add(0, inverse, torch.ones_like(outcomes))
    shifted_mean = empty.index_add(0, inverse, outcomes - low[inverse]) / counts
    return low[inverse], shifted_mean[inverse]


def spo_segment_advantages(
    outcomes: torch.Tensor,
    start_values: torch.Tensor,
    cuts: torch.Tensor,
    cut_values: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Chain-based segment advantages (arXiv 2505.23564, SPO-chain; Figure 2a) [B, T], float64::

        V(s_{t_0}) = start_values            the prompt state (the group's mean reward)
        V(s_{t_k}) = cut_values[t_k]         the cuts t_1 < ... < t_K of the row (Monte Carlo)
        V(s_{t_{K+1}}) = outcomes            the end of the completion (its own reward)
        A_t = V(s_{t_{k+1}}) - V(s_{t_k})    for every response token t with t_k <= t < t_{k+1}

    The advantages of a row's segments telescope: they sum to ``outcome - start_value``. A row with
    no cut is one segment with ``A = outcome - start_value``, the Dr. GRPO advantage when the start
    value is the group mean. Padding gets 0; ``cut_values`` off the cuts are never read.

    Example: start value 2/3, cuts at 2 and 5 with values 1/3 and 1, outcome 1, six tokens:
    A = (-1/3, -1/3, 2/3, 2/3, 2/3, 0).
    """
    mask = mask.bool()
    cuts = cuts.bool() & mask
    values = torch.where(cuts, cut_values.detach().to(F64), 0.0)
    batch, width = mask.shape
    # V at the start of the segment holding each token: the last cut at or before it, else the start.
    start = torch.empty(batch, width, dtype=F64, device=mask.device)
    carry = start_values.to(F64).clone()
    for t in range(width):
        carry = torch.where(cuts[:, t], values[:, t], carry)
        start[:, t] = carry
    # V at its end: the first cut after it, else the outcome.
    end = torch.empty_like(start)
    carry = outcomes.to(F64).clone()
    for t in range(width - 1, -1, -1):
        end[:, t] = carry
        carry = torch.where(cuts[:, t], values[:, t], carry)
    return torch.where(mask, end - start, 0.0)


@ADVANTAGES.register("spo")
def spo(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    sampling_logprobs: torch.Tensor | None = None,
    cut_values: torch.Tensor | None = None,
    spo_threshold: float = 0.9,
    spo_interval: int = 5,
    spo_max_cuts: int | None = None,
    spo_prob_mask: bool = True,
    spo_tree: tuple[int, ...] = (),
) -> AdvantageOutput:
    """SPO-chain (Guo et al., arXiv 2505.23564): segment advantages from Monte Carlo values::

        cuts    = spo_cut_points(sampling_logprobs, mask)          every int-th token with p < rho
        A_t     = V(end of t's segment) - V(start of t's segment)  V(prompt) = mean_g(r), V(end) = r_i
        M_t     = 1[p(y_t) < rho]                                  the probability mask (spo_prob_mask)
        A_t    <- M_t * A_t, and tokens with M_t = 0 leave the policy loss (``loss_mask``)

    ``sampling_logprobs`` [B, T] are the logprobs the completions were sampled with (they define the
    cutpoints; the loop passes the rollout's); ``cut_values`` [B, T] hold ``V(s_t)`` at the cuts,
    the mean reward of ``spo_continuations`` completions that continue the prompt plus tokens
    ``0 .. t-1`` (filled by :func:`rlvr.training.segment_values.estimate_cut_values`). The start
    value is the group mean, so a completion with no cut (and no probability mask) gets
    ``r_i - mean_g``, exactly Dr. GRPO's advantage.

    Example, one group with rewards (1, 0, 1), rho = 0.9, int = 1, no probability mask; completion
    0 has probabilities (0.95, 0.5, 0.99) and V = 1/3 at its cut (position 1): mean 2/3, so
    A = (1/3 - 2/3, 1 - 1/3, 1 - 1/3) = (-1/3, 2/3, 2/3); a completion with no cut and reward 0 gets
    -2/3 on every token. With the probability mask completion 0 keeps only A_1 = 2/3.

    SPO-tree (``spo_tree`` not empty, :mod:`rlvr.training.spo_tree`): every row is one segment of
    a prompt's tree, its reward the node's value ``V(n)`` and its group the node's siblings, so the
    group mean is ``V(parent)`` and ``A = V(n) - V(parent)`` (the paper's Figure 2b); there are no
    cut points (``cut_values`` is not read) and the probability mask applies the same way.

    Metrics: ``spo/cuts_per_completion``, ``spo/segments_per_completion`` (cuts + 1, over
    completions with a response token) and, with the mask, ``spo/prob_mask_tokens`` (the share of
    response tokens the policy loss keeps), all ranks.
    """
    rewards, mask, group_ids, _, dtype = _prepare("spo", rewards, mask, group_ids, values)
    if sampling_logprobs is None or cut_values is None:
        raise ConfigError(
            "algorithm.advantage 'spo' needs sampling_logprobs and cut_values [B, T]: the training loop "
            "samples the continuations at the cut points (rlvr.training.segment_values)"
        )
    sampling_logprobs = _floating(
        check_tensor(sampling_logprobs, "sampling_logprobs", 2), "sampling_logprobs"
    )
    cut_values = _floating(check_tensor(cut_values, "cut_values", 2), "cut_values")
    check_same_shape("mask", mask, sampling_logprobs=sampling_logprobs, cut_values=cut_values)
    if not isinstance(spo_prob_mask, bool):
        raise ConfigError(f"algorithm.spo_prob_mask must be true or false, got {spo_prob_mask!r}")
    sampling_logprobs = sampling_logprobs.to(mask.device)
    cuts = spo_cut_points(
        sampling_logprobs,
        mask,
        spo_threshold=spo_threshold,
        spo_interval=spo_interval,
        spo_max_cuts=0 if spo_tree else spo_max_cuts,  # SPO-tree: a row is one segment of a tree
    )
    outcomes = sequence_outcomes(rewards, mask)
    low, shifted_mean = _group_min_and_shifted_mean(outcomes, group_ids)
    shifted_values = cut_values.detach().to(device=mask.device, dtype=F64) - low[:, None]
    advantages = spo_segment_advantages(outcomes - low, shifted_mean, cuts, shifted_values, mask)
    has_tokens = mask.any(dim=1)
    counted = [cuts.sum().to(F64), has_tokens.sum().to(F64)]
    loss_mask = None
    if spo_prob_mask:
        loss_mask = low_probability_tokens(sampling_logprobs, mask, spo_threshold)
        advantages = torch.where(loss_mask, advantages, 0.0)
        counted += [loss_mask.sum().to(F64), mask.sum().to(F64)]
    sums = all_reduce_sum(torch.stack(counted)).tolist()
    cuts_per = sums[0] / max(sums[1], 1.0)
    extra = {"spo/cuts_per_completion": cuts_per, "spo/segments_per_completion": cuts_per + 1.0}
    if spo_prob_mask:
        extra["spo/prob_mask_tokens"] = sums[2] / max(sums[3], 1.0)
    out = _output(advantages, mask, dtype, **extra)
    out.loss_mask = loss_mask
    return out


spo.takes_cut_values = True  # type: ignore[attr-defined]
