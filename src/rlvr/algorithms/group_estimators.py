"""Group estimators of the second round: REINFORCE++-baseline, MaxRL, GDPO, pass@k and PKPO advantages.

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
    fewer than k samples uses k = n; R_mean in {0, 1} (then sigma = 0) gives 0. :func:`pkpo`
    (Walder & Karkhanis, arXiv 2505.15201) optimises the same pass@k with unbiased transformed
    rewards and a leave-one-out baseline instead of this normalisation.

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


# --- PKPO -------------------------------------------------------------------------------------------


def _comb_ratio(a: int, b: int, c: int, d: int) -> float:
    """C(a, b) / C(c, d) from exact integers, rounded once (C(a, b) = 0 when b > a)."""
    return math.comb(a, b) / math.comb(c, d)


def _check_k(k: int, n: int, what: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ConfigError(f"{what} needs an integer k with 1 <= k <= n, got k = {k!r} for n = {n}")


def max_at_k(rewards: torch.Tensor, k: int) -> float:
    """The unbiased estimate of max@k (pass@k for 0/1 rewards) from the n rewards [n] of one group::

        rho(n, k) = sum_i C(i - 1, k - 1) / C(n, k) * g_(i)        g_(1) <= ... <= g_(n) sorted

    the mean, over the C(n, k) subsets of k samples, of the largest reward of the subset (g_(i) is
    the largest of the C(i - 1, k - 1) subsets whose other members rank below it). For 0/1 rewards
    with c correct it is 1 - C(n - c, k) / C(n, k), the pass@k estimator of Chen et al. (2021).
    Walder & Karkhanis, arXiv 2505.15201. Example (0.2, 0.9, 0.5, 0.0), k = 2:
    (0 * 0.0 + 1 * 0.2 + 2 * 0.5 + 3 * 0.9) / 6 = 0.65.
    """
    g = torch.sort(rewards.detach().to(F64).flatten()).values
    n = g.numel()
    _check_k(k, n, "max_at_k")
    weights = torch.tensor([_comb_ratio(i, k - 1, n, k) for i in range(n)], dtype=F64, device=g.device)
    return float((weights * g).sum())


def pkpo_rewards(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """PKPO's transformed rewards [n] of one group's rewards [n], before any baseline::

        r_i = mean over the k-subsets K that contain i of max_{j in K} g_j
            = (C(rank_i - 1, k - 1) g_i + sum_{rank_j > rank_i} C(rank_j - 2, k - 2) g_j) / C(n - 1, k - 1)

    (ranks 1..n in ascending order of reward; a tie counts once whichever rank it gets). Their mean
    is :func:`max_at_k`, and sum_i (k / n) r_i grad log pi(y_i) is the paper's unbiased estimate of
    grad max@k (Walder & Karkhanis, arXiv 2505.15201, whose per-sample rewards are (k / n) r_i).
    For 0/1 rewards a correct sample gets 1 and a wrong one 1 - C(n - c - 1, k - 1) / C(n - 1, k - 1),
    the chance that the other k - 1 members of its subset hold a correct one. k = 1 gives r_i = g_i.
    """
    g = rewards.detach().to(F64).flatten()
    n = g.numel()
    _check_k(k, n, "pkpo_rewards")
    order = torch.argsort(g, stable=True)
    s = g[order]  # ascending: s[i] has rank i + 1
    own = torch.tensor([_comb_ratio(i, k - 1, n - 1, k - 1) for i in range(n)], dtype=F64, device=g.device)
    rest = torch.zeros(n, dtype=F64, device=g.device)  # sum over the ranks above i of their share
    if k >= 2:  # s[j] is the largest of the C(j - 1, k - 2) subsets of i < j with k - 2 others below j
        share = [0.0] + [_comb_ratio(j - 1, k - 2, n - 1, k - 1) for j in range(1, n)]
        weighted = torch.tensor(share, dtype=F64, device=g.device) * s
        rest[:-1] = weighted.flip(0).cumsum(0).flip(0)[1:]
    out = torch.empty_like(g)
    out[order] = own * s + rest
    return out


def _pkpo_loo_minus_one(g: torch.Tensor, k: int) -> torch.Tensor:
    """A_i = r_i - rho(g without i, k - 1) of one group [n], k >= 2, as a sum of reward gaps::

    sum over the ranks j below rank i of C(j - 1, k - 2) / C(n - 1, k - 1) * (g_i - g_j).
    """
    n = g.numel()
    order = torch.argsort(g, stable=True)
    s = g[order]
    w = torch.tensor([_comb_ratio(j, k - 2, n - 1, k - 1) for j in range(n)], dtype=F64, device=g.device)
    below = torch.ones(n, n, dtype=torch.bool, device=g.device).tril(diagonal=-1)  # [i, j]: j ranks below i
    gaps = torch.where(below, s[:, None] - s[None, :], 0.0)  # exactly 0 between equal rewards
    out = torch.empty_like(g)
    out[order] = (gaps * w[None, :]).sum(1)
    return out


@ADVANTAGES.register("pkpo")
def pkpo(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    passk_k: int = 4,
) -> AdvantageOutput:
    """PKPO, Pass-at-k Policy Optimization (Walder & Karkhanis, arXiv 2505.15201): the unbiased,
    low-variance transformation of a group's rewards whose policy gradient is that of max@k
    (pass@k for 0/1 rewards), with the paper's recommended "s^(loo-1)" baseline::

        A_i = mean over the k-subsets K containing i of ( max_{j in K} g_j - max_{j in K, j != i} g_j )
            = r_i - rho(g without i, k - 1)
            = sum_{rank_j < rank_i} C(rank_j - 1, k - 2) * (g_i - g_j) / C(n - 1, k - 1)

    with n the group size, ranks 1..n in ascending order of reward, r_i :func:`pkpo_rewards` and
    rho :func:`max_at_k`. The baseline of sample i is the max@(k-1) estimate from the other samples,
    which does not depend on sample i, so the estimate stays unbiased. The paper's per-sample
    rewards are s_i = (k / n) * A_i (the gradient estimate is sum_i s_i grad log pi(y_i)); rlvr
    returns A_i = (n / k) * s_i, the mean over the subsets containing i, so that the loop's
    per-sequence mean ((1 / n) sum_i A_i grad log pi(y_i)) is the paper's estimate divided by k and
    advantages stay in the range of the rewards. Any reward works (the paper's max@k for continuous
    rewards); 0/1 rewards give A = C(n - c, k - 1) / C(n - 1, k - 1) for each correct sample (the
    chance that the other k - 1 members of its subset are all wrong) and 0 for each wrong one.
    Advantages are never negative: each sample is credited with how much it raises the maximum of
    its subsets, so the lowest reward of a group, and every reward of an all-equal group, gets
    exactly 0. k = 1 has no (k - 1)-subsets to baseline with: rlvr then uses the leave-one-out mean
    of the other samples, A_i = g_i - mean_{j != i} g_j (the ``rloo`` estimator; a group of one gets
    0). k must not exceed the group size (``algorithm.passk_k``, a ConfigError otherwise).

    Example, n = 4, k = 2, rewards (0.2, 0.9, 0.5, 0.0): sorted (0.0, 0.2, 0.5, 0.9), every weight
    C(j - 1, 0) / C(3, 1) = 1/3, so A = (0.2 / 3, (0.9 + 0.7 + 0.4) / 3, (0.5 + 0.3) / 3, 0) =
    (0.0667, 0.6667, 0.2667, 0); max@2 = 0.65. 0/1 rewards (1, 0, 0, 0), k = 2: A = (1, 0, 0, 0)
    (``passk`` gives (1, -1/3, -1/3, -1/3)). Metric ``pkpo/max_at_k``: the mean over the batch's
    groups of :func:`max_at_k` (the estimated pass@k for 0/1 rewards).
    """
    if isinstance(passk_k, bool) or not isinstance(passk_k, int) or passk_k < 1:
        raise ConfigError(f"algorithm.passk_k must be an integer >= 1, got {passk_k!r}")
    rewards, mask, group_ids, _, dtype = _prepare("pkpo", rewards, mask, group_ids, values)
    outcomes = sequence_outcomes(rewards, mask)
    centered, inverse, counts, all_equal = _group_centered(outcomes, group_ids)
    smallest = int(counts.min().item()) if counts.numel() else passk_k
    if passk_k > smallest:
        raise ConfigError(
            f"algorithm.passk_k ({passk_k}) is larger than a group of {smallest} completions: pkpo "
            "estimates pass@k from the k-subsets of each group, so k must be <= the group size "
            "(rollout.samples_per_prompt, and no filter may drop single completions)"
        )
    per_sequence = torch.zeros_like(outcomes)
    max_sum = 0.0
    if passk_k == 1:  # the leave-one-out mean: rloo
        n = counts[inverse]
        per_sequence = torch.where(n > 1, centered * n / (n - 1.0).clamp(min=1.0), 0.0)
    for group in range(counts.numel()):
        rows = torch.nonzero(inverse == group).flatten()
        g = outcomes[rows]
        max_sum += max_at_k(g, passk_k)
        if passk_k >= 2:
            per_sequence[rows] = _pkpo_loo_minus_one(g, passk_k).to(per_sequence.device)
    total, groups = all_reduce_sum(torch.tensor([max_sum, float(counts.numel())], dtype=F64)).tolist()
    return _output(
        _broadcast(per_sequence, mask),
        mask,
        dtype,
        **_group_metrics(all_equal),
        **{"pkpo/max_at_k": total / max(groups, 1.0)},
    )
