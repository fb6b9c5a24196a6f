"""Group estimators of the second round: REINFORCE++-baseline, MaxRL, GDPO and pass@k advantages.

Same signature and conventions as :mod:`rlvr.algorithms.advantages` (they register into the same
:data:`~rlvr.algorithms.advantages.ADVANTAGES`): float64 arithmetic, exact centring (a group of
equal rewards gives exactly 0 before any batch normalisation), zero on padding, result detached
in the input dtype. Statistics over the whole batch go through ``all_reduce_sum``.

GDPO also reads the reward components: ``reward_components`` [B, K] (each component's unweighted
reward) and ``reward_weights`` [K]. The loop passes them only to an estimator whose
``takes_reward_components`` attribute is true; without them GDPO treats ``rewards`` as a single
component.
"""

from __future__ import annotations

import math

import torch

from rlvr.algorithms.advantages import (
    ADVANTAGES,
    F64,
    WHITEN_EPS,
    _broadcast,
    _check_range,
    _floating,
    _group_centered,
    _group_metrics,
    _output,
    _prepare,
    _whiten,
    sequence_outcomes,
)
from rlvr.algorithms.checks import check_tensor
from rlvr.algorithms.outputs import AdvantageOutput
from rlvr.distributed import all_reduce_sum
from rlvr.errors import ConfigError, ShapeError


def _group_normalized(outcomes, group_ids, std_eps, std_unbiased):
    """(r - mean_g) / (std_g + std_eps) per completion [B], exactly 0 for a group of equal rewards."""
    centered, inverse, counts, all_equal = _group_centered(outcomes, group_ids)
    dof = (counts - 1.0).clamp(min=1.0) if std_unbiased else counts
    std = (torch.zeros_like(counts).index_add(0, inverse, centered * centered) / dof).sqrt()
    denominator = std[inverse] + std_eps
    return torch.where(denominator > 0, centered / denominator, 0.0), all_equal


def _whiten_sequences(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(x - mean) / (std + 1e-8) over the completions ``rows`` [B] of the global batch (biased std)."""
    x = torch.where(rows, x, 0.0)
    total, count = all_reduce_sum(torch.stack([x.sum(), rows.sum().to(F64)])).tolist()
    mean = total / max(count, 1.0)
    deviation = torch.where(rows, x - mean, 0.0)
    variance = all_reduce_sum((deviation * deviation).sum()).item() / max(count, 1.0)
    return deviation / (variance**0.5 + WHITEN_EPS)


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
) -> AdvantageOutput:
    """REINFORCE++-baseline (Hu et al., arXiv 2501.03262, the variant for reasoning tasks with
    several samples per prompt): the group mean as baseline, then global normalisation::

        A'_i   = r_i - mean_g(r)                                    per completion
        A_i,t  = (A'_i - mean(A')) / (std(A') + 1e-8)               over all response tokens of the batch

    The paper's baseline variant subtracts the mean reward of the prompt's group instead of
    folding a KL into the reward (its KL goes in the loss: ``kl_placement = "loss"``). The
    normalisation is token-level, as in :func:`~rlvr.algorithms.advantages.reinforce_pp` (biased
    std, eps 1e-8), so a batch whose completions all have equal group-relative rewards gets 0.
    Given [B, T] rewards the outcome is each row's token sum.

    Example, groups (1, 0) and (1, 1), one token each: A' = (0.5, -0.5, 0, 0), mean 0,
    std sqrt(0.125) = 0.35355, A = (1.41421, -1.41421, 0, 0).
    """
    rewards, mask, group_ids, _, dtype = _prepare("reinforce_pp_baseline", rewards, mask, group_ids, values)
    centered, _, _, all_equal = _group_centered(sequence_outcomes(rewards, mask), group_ids)
    advantages = _whiten(_broadcast(centered, mask), mask, WHITEN_EPS)
    return _output(advantages, mask, dtype, **_group_metrics(all_equal))


@ADVANTAGES.register("maxrl")
def maxrl(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
) -> AdvantageOutput:
    """MaxRL (Tajwar et al., arXiv 2602.02710): the centred reward divided by the group mean::

        A_i,t = (r_i - mean_g(r)) / mean_g(r)          0 when mean_g(r) <= 0

    With 0/1 rewards and K correct out of n, (1/n) sum_i A_i grad log pi(y_i) = (1/K) sum_{correct}
    grad log pi - (1/n) sum_i grad log pi: the average score of the correct samples minus a
    baseline, a sample estimate of grad log p(correct) = grad p / p (maximum likelihood of the
    correct outcome) rather than of grad p (REINFORCE / GRPO's target). Hard prompts (small
    mean) get large advantages. The paper's rewards are binary; for other non-negative rewards
    this is the same formula. A group with no reward (mean 0) has nothing to learn from: 0.
    The equation number of the paper was not available to this implementation.

    Example, rewards (1, 0, 0, 0): mean 0.25, A = (3, -1, -1, -1); GRPO (unbiased std 0.5) would
    give (1.5, -0.5, -0.5, -0.5).
    """
    rewards, mask, group_ids, _, dtype = _prepare("maxrl", rewards, mask, group_ids, values)
    outcomes = sequence_outcomes(rewards, mask)
    centered, inverse, counts, all_equal = _group_centered(outcomes, group_ids)
    mean = torch.zeros_like(counts).index_add(0, inverse, outcomes) / counts
    per_sequence = torch.where(mean[inverse] > 0, centered / mean[inverse].clamp(min=1e-300), 0.0)
    return _output(_broadcast(per_sequence, mask), mask, dtype, **_group_metrics(all_equal))


@ADVANTAGES.register("gdpo")
def gdpo(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    reward_components: torch.Tensor | None = None,
    reward_weights: torch.Tensor | None = None,
    std_eps: float = 1e-6,
    std_unbiased: bool = True,
) -> AdvantageOutput:
    """GDPO (Liu et al., arXiv 2601.05242): normalise each reward component within its group, then
    combine, then normalise over the batch::

        A_k,i  = (r_k,i - mean_g(r_k)) / (std_g(r_k) + std_eps)     each component k (GRPO's formula)
        S_i    = sum_k w_k * A_k,i                                  w: the components' reward weights
        A_i,t  = (S_i - mean(S)) / (std(S) + 1e-8)                  over the completions of the batch

    GRPO on the weighted sum r = sum_k w_k r_k lets different combinations of component rewards
    collapse onto the same advantage (the paper's motivation); normalising each component first
    keeps them apart, and the final batch normalisation keeps the scale from growing with K.
    The group statistics use ``std_eps`` / ``std_unbiased`` like :func:`grpo`; the batch
    statistics are over completions (each counted once, biased std, all ranks). The precise
    conventions of the paper's std (biased or not, epsilon) were not available to this
    implementation. ``reward_components`` [B, K] holds each component's *unweighted* reward and
    ``reward_weights`` [K] their weights (default 1); without components, ``rewards`` is the only
    one. A component that is equal within a group contributes 0 there.

    Example, one group of 2, components accuracy (1, 0) and format (1, 1), weights 1: A_acc =
    (0.70711, -0.70711) (unbiased std), A_fmt = (0, 0), S = (0.70711, -0.70711), A = (1, -1).
    """
    rewards, mask, group_ids, _, dtype = _prepare("gdpo", rewards, mask, group_ids, values)
    _check_range("std_eps", std_eps, 0.0)
    if reward_components is None:
        components = sequence_outcomes(rewards, mask)[:, None]
    else:
        components = _floating(check_tensor(reward_components, "reward_components", 2), "reward_components")
        if components.shape[0] != mask.shape[0]:
            raise ShapeError(
                f"reward_components has {components.shape[0]} rows but the batch has {mask.shape[0]} completions"
            )
        components = components.detach().to(device=mask.device, dtype=F64)
    k = components.shape[1]
    weights = (
        torch.ones(k, dtype=F64) if reward_weights is None else reward_weights.detach().to(F64).flatten()
    )
    if weights.shape[0] != k:
        raise ShapeError(f"reward_weights has {weights.shape[0]} entries for {k} reward components")
    weights = weights.to(mask.device)
    total = torch.zeros(mask.shape[0], dtype=F64, device=mask.device)
    all_equal = None
    for j in range(k):
        normalized, equal = _group_normalized(components[:, j], group_ids, std_eps, std_unbiased)
        total = total + weights[j] * normalized
        all_equal = equal if all_equal is None else all_equal & equal
    per_sequence = _whiten_sequences(total, mask.any(dim=1))
    return _output(_broadcast(per_sequence, mask), mask, dtype, **_group_metrics(all_equal))


gdpo.takes_reward_components = True  # type: ignore[attr-defined]


def _passk_pair(n: int, c: int, k: int) -> tuple[float, float]:
    """(A_correct, A_wrong) of a group of n samples with c correct, for pass@k (k <= n)."""
    mean = 1.0 - math.comb(n - c, k) / math.comb(n, k)  # expected pass@k of a random k-subset
    std = math.sqrt(max(mean * (1.0 - mean), 0.0))
    if std == 0.0:
        return 0.0, 0.0
    all_wrong_with_me = math.comb(n - c - 1, k - 1) / math.comb(n - 1, k - 1) if c < n else 0.0
    return (1.0 - mean) / std, (1.0 - mean - all_wrong_with_me) / std


@ADVANTAGES.register("passk")
def passk(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    passk_k: int = 4,
) -> AdvantageOutput:
    """Pass@k training with the analytical advantage (Chen et al., arXiv 2508.10751)::

        R_mean  = 1 - C(n - c, k) / C(n, k)          mean pass@k over the k-subsets of the group
        sigma   = sqrt(R_mean * (1 - R_mean))
        A_pos   = (1 - R_mean) / sigma                           for each correct sample
        A_neg   = (1 - R_mean - C(n - c - 1, k - 1) / C(n - 1, k - 1)) / sigma     for each wrong one

    with n samples in the group, c of them correct (reward > 0: the loop's notion of correct when
    there is no verifier). This is the expectation, over all k-subsets that contain the sample, of
    the GRPO-normalised subset reward max(subset): a correct sample is in passing subsets only, a
    wrong one passes only with a correct partner (tests/algorithms/test_group_estimators.py
    enumerates the subsets). k = 1 gives GRPO with the biased std and no epsilon. A group with
    fewer than k samples uses k = n; R_mean in {0, 1} (then sigma = 0) gives 0. PKPO (Walder &
    Karkhanis, arXiv 2505.15201) optimises the same pass@k with unbiased per-sample rewards instead
    (correct: k/n; wrong: (k/n) * (1 - C(n-c-1, k-1) / C(n-1, k-1)), before any baseline); those are
    not offered as an estimator here.

    Example, n = 4, c = 1, k = 2: R_mean = 1 - 3/6 = 0.5, sigma = 0.5, A_pos = 1, A_neg =
    (0.5 - C(2, 1) / C(3, 1)) / 0.5 = (0.5 - 2/3) / 0.5 = -1/3.
    """
    if isinstance(passk_k, bool) or not isinstance(passk_k, int) or passk_k < 1:
        raise ConfigError(f"algorithm.passk_k must be an integer >= 1, got {passk_k!r}")
    rewards, mask, group_ids, _, dtype = _prepare("passk", rewards, mask, group_ids, values)
    success = sequence_outcomes(rewards, mask) > 0
    _, inverse, counts, _ = _group_centered(success.to(F64), group_ids)
    correct = torch.zeros_like(counts).index_add(0, inverse, success.to(F64))
    pairs = [
        _passk_pair(int(n), int(c), min(passk_k, int(n)))
        for n, c in zip(counts.tolist(), correct.tolist(), strict=True)
    ]
    table = torch.tensor(pairs, dtype=F64, device=mask.device).reshape(-1, 2)  # [G, (pos, neg)]
    per_sequence = torch.where(success, table[inverse, 0], table[inverse, 1])
    all_equal = (correct == 0) | (correct == counts)
    return _output(_broadcast(per_sequence, mask), mask, dtype, **_group_metrics(all_equal))
