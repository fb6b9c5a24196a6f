"""Group filters: which completions of a batch the update keeps.

Every filter has the same keyword-only signature, so the training loop never special-cases one::

    fn(*, rewards, group_ids, correct=None, advantages=None, <hyperparameters>) -> FilterOutput

* ``rewards``    [B] floating, one scalar per completion.
* ``group_ids``  [B] integer; the completions of one prompt share an id (any values, any order).
* ``correct``    [B] bool or None: whether each completion's answer is right (the verifier's verdict,
  before any shaping). Needed by ``raft_pp``, ``reject`` and ``dynamic_sampling`` with
  ``dynamic_sampling_criterion = "correct"``.
* ``advantages`` [B] floating or None: one advantage per completion (:func:`sequence_advantages`
  turns the estimator's [B, T] output into it). Needed by ``cppo``.

``keep`` [B] is bool. ``metrics`` are counts over the whole batch (all ranks, through
:func:`rlvr.distributed.all_reduce_sum`) under ``filter/<name>/...``; the loop reads
``filter/<name>/kept_groups`` to know how many more prompts to sample (DAPO's dynamic sampling).
A group must not be split across ranks.

When filters run: ``cppo`` ranks completions by their advantage, so it runs after the advantage
estimator (:data:`FILTERS_NEEDING_ADVANTAGES`); the others run on the rewards, before it, so the
estimator sees only the kept completions (DAPO Algorithm 1 computes advantages on the filled
buffer). :func:`apply_filters` runs the configured filters of one stage in order, each on the
completions the previous ones kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rlvr.algorithms.checks import check_group_ids, check_mask, check_tensor
from rlvr.algorithms.outputs import FilterOutput
from rlvr.distributed import all_reduce_sum
from rlvr.errors import ConfigError, ShapeError
from rlvr.registry import Registry

FILTERS: Registry = Registry("group filter")

FILTER_TENSOR_ARGS: tuple[str, ...] = ("rewards", "group_ids", "correct", "advantages")
"""The tensor arguments of every filter; every other keyword is a hyperparameter."""

FILTERS_NEEDING_ADVANTAGES: set[str] = {"cppo"}
"""Filters that run after the advantage estimator (a user who registers one adds its name)."""

FILTERS_NEEDING_CORRECT: set[str] = {"raft_pp", "reject"}
"""Filters that always need correctness labels (``dynamic_sampling`` needs them only with
``dynamic_sampling_criterion = "correct"``)."""

F64 = torch.float64

CPPO_ROUNDING_TOLERANCE = 1e-9
"""Added to G * (1 - P) before the floor, so that 20 * (1 - 0.9) = 1.9999999999999996 keeps 2."""


# --- input checks and group layout ------------------------------------------------------------------


def _check_inputs(
    name: str,
    rewards: object,
    group_ids: object,
    correct: object | None,
    advantages: object | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    rewards = check_tensor(rewards, "rewards", 1)
    if not rewards.dtype.is_floating_point:
        raise ShapeError(f"rewards must be a floating tensor, got dtype {rewards.dtype}")
    batch = rewards.shape[0]
    group_ids = check_group_ids(group_ids, batch).to(rewards.device)
    if correct is not None:
        correct = check_tensor(correct, "correct", 1)
        if correct.dtype != torch.bool:
            raise ShapeError(
                f"correct must be a bool tensor (one verdict per completion), got dtype {correct.dtype}"
            )
        if correct.shape[0] != batch:
            raise ShapeError(f"correct has {correct.shape[0]} entries but rewards has {batch}")
        correct = correct.to(rewards.device)
    if advantages is not None:
        advantages = check_tensor(advantages, "advantages", 1)
        if not advantages.dtype.is_floating_point:
            raise ShapeError(f"advantages must be a floating tensor, got dtype {advantages.dtype}")
        if advantages.shape[0] != batch:
            raise ShapeError(
                f"advantages has {advantages.shape[0]} entries but rewards has {batch}; filter '{name}' "
                "takes one advantage per completion [B] (see sequence_advantages)"
            )
        advantages = advantages.to(rewards.device)
    return rewards.detach(), group_ids, correct, None if advantages is None else advantages.detach()


def _require(name: str, argument: str, value: torch.Tensor | None, why: str) -> torch.Tensor:
    if value is None:
        raise ConfigError(f"group filter '{name}' needs {argument} [B] ({why}) but got {argument}=None")
    return value


def _groups(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(inverse [B]: the group index 0..G-1 of each completion, number of groups G)."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def _per_group_sum(values: torch.Tensor, inverse: torch.Tensor, num_groups: int) -> torch.Tensor:
    return torch.zeros(num_groups, dtype=F64, device=values.device).index_add(0, inverse, values.to(F64))


def _counts(
    name: str, keep: torch.Tensor, inverse: torch.Tensor, num_groups: int, **extra: torch.Tensor
) -> dict:
    """Global counts: groups, kept_groups (at least one completion kept), dropped_groups, samples, kept_samples."""
    kept_per_group = _per_group_sum(keep, inverse, num_groups)
    local = [
        torch.tensor(float(num_groups), dtype=F64, device=keep.device),
        (kept_per_group > 0).to(F64).sum(),
        torch.tensor(float(keep.numel()), dtype=F64, device=keep.device),
        keep.to(F64).sum(),
        *(v.to(F64).reshape(()) for v in extra.values()),
    ]
    groups, kept_groups, samples, kept_samples, *rest = all_reduce_sum(torch.stack(local)).tolist()
    metrics = {
        f"filter/{name}/groups": groups,
        f"filter/{name}/kept_groups": kept_groups,
        f"filter/{name}/dropped_groups": groups - kept_groups,
        f"filter/{name}/samples": samples,
        f"filter/{name}/kept_samples": kept_samples,
    }
    metrics.update({f"filter/{name}/{key}": value for key, value in zip(extra, rest, strict=True)})
    return metrics


def _mixed_correctness(correct: torch.Tensor, inverse: torch.Tensor, num_groups: int):
    """Per group: (mixed [G]: some right and some wrong, all_right [G], all_wrong [G])."""
    right = _per_group_sum(correct, inverse, num_groups)
    size = _per_group_sum(torch.ones_like(correct, dtype=F64), inverse, num_groups)
    all_right, all_wrong = right == size, right == 0
    return ~(all_right | all_wrong), all_right, all_wrong


# --- filters ---------------------------------------------------------------------------------------------


@FILTERS.register("dynamic_sampling")
def dynamic_sampling(
    *,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    correct: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    dynamic_sampling_criterion: str = "reward",
) -> FilterOutput:
    """DAPO dynamic sampling (Yu et al., arXiv 2503.14476 sec. 3.2, eq. 11): drop the groups that
    carry no learning signal, so the loop can sample more prompts until the batch is full.

    * ``"correct"`` is eq. 11 itself: keep a group of G completions iff 0 < |{correct}| < G.
    * ``"reward"`` keeps a group iff its rewards are not all equal (max > min), the condition under
      which a group-relative estimator gives non-zero advantages. Equality is exact, with no
      tolerance: rule-based rewards are exact numbers, the same shaping terms summed in the same
      order give bitwise-equal floats, and rlvr's estimators center groups exactly, so a group is
      dropped here exactly when its GRPO advantages would all be 0. With shaped rewards (a length
      penalty) an all-correct group whose lengths differ is kept by ``"reward"``, dropped by
      ``"correct"``.

    A group of one completion is always dropped (it has nothing to compare with). Metrics:
    ``filter/dynamic_sampling/{groups, kept_groups, dropped_groups, samples, kept_samples}`` over
    all ranks, and with ``"correct"`` also ``dropped_all_correct`` / ``dropped_all_wrong`` groups.

    Example, groups a = (1, 0), b = (1, 1), c = (0.5, 0.5): keep = (T, T, F, F, F, F);
    groups 3, kept_groups 1, dropped_groups 2.
    """
    if dynamic_sampling_criterion not in ("reward", "correct"):
        raise ConfigError(
            f"algorithm.dynamic_sampling_criterion must be 'reward' or 'correct', got {dynamic_sampling_criterion!r}"
        )
    rewards, group_ids, correct, _ = _check_inputs(
        "dynamic_sampling", rewards, group_ids, correct, advantages
    )
    inverse, num_groups = _groups(group_ids)
    extra = {}
    if dynamic_sampling_criterion == "correct":
        correct = _require("dynamic_sampling", "correct", correct, "dynamic_sampling_criterion = 'correct'")
        mixed, all_right, all_wrong = _mixed_correctness(correct, inverse, num_groups)
        extra = {"dropped_all_correct": all_right.sum(), "dropped_all_wrong": all_wrong.sum()}
    else:
        empty = torch.zeros(num_groups, dtype=F64, device=rewards.device)
        low = empty.scatter_reduce(0, inverse, rewards.to(F64), reduce="amin", include_self=False)
        high = empty.scatter_reduce(0, inverse, rewards.to(F64), reduce="amax", include_self=False)
        mixed = high > low
    keep = mixed[inverse]
    return FilterOutput(keep, _counts("dynamic_sampling", keep, inverse, num_groups, **extra))


@FILTERS.register("reject")
def reject(
    *,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    correct: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
) -> FilterOutput:
    """Reinforce-Rej's rejection (Xiong et al., "A Minimalist Approach to LLM Reasoning: from
    Rejection Sampling to Reinforce", arXiv 2504.11343 sec. 4): drop the prompts whose completions
    are all correct or all wrong; keep a group of G iff 0 < |{correct}| < G.

    The same rule as ``dynamic_sampling`` with the ``"correct"`` criterion; the difference is in
    the loop: Reinforce-Rej trains on what is left, DAPO samples more prompts to refill the batch.
    Metrics: ``filter/reject/{groups, kept_groups, dropped_groups, samples, kept_samples,
    dropped_all_correct, dropped_all_wrong}``.

    Example, groups a = (right, wrong), b = (right, right), c = (wrong,): keep = (T, T, F, F, F);
    dropped_all_correct 1, dropped_all_wrong 1.
    """
    rewards, group_ids, correct, _ = _check_inputs("reject", rewards, group_ids, correct, advantages)
    correct = _require("reject", "correct", correct, "it drops all-correct and all-wrong groups")
    inverse, num_groups = _groups(group_ids)
    mixed, all_right, all_wrong = _mixed_correctness(correct, inverse, num_groups)
    keep = mixed[inverse]
    metrics = _counts(
        "reject",
        keep,
        inverse,
        num_groups,
        dropped_all_correct=all_right.sum(),
        dropped_all_wrong=all_wrong.sum(),
    )
    return FilterOutput(keep, metrics)


@FILTERS.register("raft_pp")
def raft_pp(
    *,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    correct: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
) -> FilterOutput:
    """RAFT / RAFT++ rejection sampling (Xiong et al., arXiv 2504.11343 sec. 2-3): train only on the
    correct completions ("positively rewarded samples"); keep_i = correct_i.

    RAFT++ is this filter plus a PPO-clipped importance ratio on the kept completions with
    advantage = reward (the ``raft_pp`` preset). ``kept_groups`` counts the prompts with at least
    one correct completion. Metrics: ``filter/raft_pp/{groups, kept_groups, dropped_groups,
    samples, kept_samples}``.

    Example, groups a = (right, wrong), b = (wrong, wrong): keep = (T, F, F, F); kept_groups 1.
    """
    rewards, group_ids, correct, _ = _check_inputs("raft_pp", rewards, group_ids, correct, advantages)
    correct = _require("raft_pp", "correct", correct, "it keeps only the correct completions")
    inverse, num_groups = _groups(group_ids)
    keep = correct.clone()
    return FilterOutput(keep, _counts("raft_pp", keep, inverse, num_groups))


def cppo_keep_count(group_size: int, cppo_pruning_rate: float) -> int:
    """CPPO's completions kept per group, k = max(1, floor(G * (1 - P))).

    >>> [cppo_keep_count(16, p) for p in (0.0, 0.5, 0.75, 0.875, 0.9375)]
    [16, 8, 4, 2, 1]
    """
    return max(1, math.floor(group_size * (1.0 - cppo_pruning_rate) + CPPO_ROUNDING_TOLERANCE))


@FILTERS.register("cppo")
def cppo(
    *,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    correct: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    cppo_pruning_rate: float = 0.5,
) -> FilterOutput:
    """CPPO completion pruning (Lin et al., "CPPO: Accelerating the Training of Group Relative Policy
    Optimization-Based Reasoning Models", arXiv 2503.22342 sec. 4): in each group of G completions,
    keep the k = max(1, floor(G * (1 - P))) with the largest |advantage|, P = ``cppo_pruning_rate``.

    Completions with small |A| contribute little to the GRPO gradient; pruning them before the
    policy forward/backward saves most of its cost. Ties are broken deterministically: among equal
    |A| the completion that comes first in the batch is kept (a stable sort), so the result never
    depends on a random draw. G is the group's size in this batch (after earlier filters).
    The paper's dynamic completion allocation (filling the freed slots with other prompts) belongs
    to the loop. Metrics: ``filter/cppo/{groups, kept_groups, dropped_groups, samples, kept_samples}``.

    Example, P = 0.5, one group with A = (0.5, -1.5, 0.5, 0.1): k = 2; |A| = (0.5, 1.5, 0.5, 0.1),
    so the completions 1 (|A| 1.5) and 0 (|A| 0.5, ahead of its tie 2) are kept: (T, T, F, F).
    """
    if not 0.0 <= cppo_pruning_rate < 1.0:
        raise ConfigError(f"algorithm.cppo_pruning_rate must be in [0, 1), got {cppo_pruning_rate}")
    rewards, group_ids, _, advantages = _check_inputs("cppo", rewards, group_ids, correct, advantages)
    advantages = _require(
        "cppo", "advantages", advantages, "it keeps the completions with the largest |advantage|"
    )
    inverse, num_groups = _groups(group_ids)
    magnitude = advantages.to(F64).abs()
    # Order by (group, -|A|, batch position): a stable sort on |A| descending, then a stable sort
    # on the group, leaves each group's completions contiguous, largest |A| first, ties in batch order.
    by_magnitude = torch.sort(magnitude, descending=True, stable=True).indices
    order = by_magnitude[torch.sort(inverse[by_magnitude], stable=True).indices]
    sizes = torch.bincount(inverse, minlength=num_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    rank_in_group = torch.empty_like(order)
    rank_in_group[order] = torch.arange(order.numel(), device=order.device) - starts[inverse[order]]
    keep_counts = torch.tensor(
        [cppo_keep_count(int(g), cppo_pruning_rate) for g in sizes.tolist()],
        dtype=torch.long,
        device=order.device,
    )
    keep = rank_in_group < keep_counts[inverse]
    return FilterOutput(keep, _counts("cppo", keep, inverse, num_groups))


# --- helpers for the loop ----------------------------------------------------------------------------------


def sequence_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per completion [B]: the mean of ``advantages`` [B, T] over its response tokens.

    For the sequence-level estimators (grpo, dr_grpo, rloo, kimi) every response token carries the
    same advantage, so this is that value. A row without response tokens gets 0.

    >>> sequence_advantages(torch.tensor([[2.0, 2.0, 9.0], [0.0, 0.0, 0.0]]), torch.tensor([[1, 1, 0], [0, 0, 0]]).bool())
    tensor([2., 0.])
    """
    check_tensor(advantages, "advantages", 2)
    mask = check_mask(mask, "mask", tuple(advantages.shape))
    m = mask.to(F64)
    total = (advantages.detach().to(F64) * m).sum(dim=1)
    return (total / m.sum(dim=1).clamp(min=1.0)).to(advantages.dtype)


def filter_stages(names: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split configured filter names into (before the advantage estimator, after it), keeping order."""
    before = tuple(n for n in names if n not in FILTERS_NEEDING_ADVANTAGES)
    after = tuple(n for n in names if n in FILTERS_NEEDING_ADVANTAGES)
    return before, after


def apply_filters(
    names: Sequence[str],
    *,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    correct: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    config: object,
) -> FilterOutput:
    """Run the filters ``names`` in order, each on the completions the previous ones kept.

    Each filter gets exactly the fields of ``config`` (an :class:`AlgorithmConfig`) that its
    signature names. ``keep`` [B] is the conjunction over all filters (indexed like the inputs);
    ``metrics`` merges every filter's metrics plus ``filter/kept_samples`` (all ranks). With no
    names, everything is kept.
    """
    from rlvr.algorithms.config import hyperparameters_for

    rewards = check_tensor(rewards, "rewards", 1)
    group_ids = check_group_ids(group_ids, rewards.shape[0])
    for argument, value in (("correct", correct), ("advantages", advantages)):
        if value is not None:
            check_tensor(value, argument, 1)
    keep = torch.ones(rewards.shape[0], dtype=torch.bool, device=rewards.device)
    metrics: dict[str, float] = {}
    for name in names:
        fn = FILTERS.get(name)
        index = keep.nonzero().squeeze(1)

        def subset(t: torch.Tensor | None, index: torch.Tensor = index) -> torch.Tensor | None:
            return None if t is None else t[index.to(t.device)]

        out = fn(
            rewards=rewards[index],
            group_ids=subset(group_ids),
            correct=subset(correct),
            advantages=subset(advantages),
            **hyperparameters_for(fn, config, FILTER_TENSOR_ARGS),
        )
        step_keep = check_tensor(out.keep, f"keep returned by filter '{name}'", 1)
        if step_keep.dtype != torch.bool or step_keep.shape[0] != index.numel():
            raise ShapeError(
                f"filter '{name}' must return keep as a bool tensor of {index.numel()} entries, "
                f"got dtype {step_keep.dtype} and shape {tuple(step_keep.shape)}"
            )
        keep = keep.clone()
        keep[index[~step_keep.to(index.device)]] = False
        metrics.update(out.metrics)
    metrics["filter/kept_samples"] = all_reduce_sum(keep.to(F64).sum()).item()
    return FilterOutput(keep, metrics)
