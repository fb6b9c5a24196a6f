"""SPO's Monte Carlo values: continue each completion from its cut points and grade the continuations.

For ``algorithm.advantage: spo`` (:mod:`rlvr.algorithms.spo`) the loop needs ``V(s_t)`` at every
cut point ``t`` of every completion: the mean reward of ``K = algorithm.spo_continuations``
completions sampled by the same policy from the state ``s_t``, the prompt followed by the
completion's first ``t`` tokens. A prompt plus a partial completion is just a longer prompt, so
the engine continues it like any other; each continuation keeps the completion's token budget
(``rollout.max_new_tokens`` counts the prefix) and its stop strings, and is graded, prefix
included, by the task's rewards exactly like a completion.

Each group (the completions of one prompt) is continued in one ``generate`` call, all its cut
points at once with ``n = K``, seeded by the step and the group's position in the step. Groups are
whole on one rank, so the continuations (and the advantages) do not depend on how many ranks
share the step. The cost is reported each step: ``spo/extra_rollouts`` (continuations sampled),
``spo/extra_tokens`` (tokens they generated), ``spo/cut_points`` (value estimates), summed over
ranks, and ``time/spo_rollouts`` (the slowest rank's seconds).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.algorithms.spo import spo_cut_points
from rlvr.distributed import all_reduce_max, all_reduce_sum
from rlvr.rollout.types import Completion, SamplingParams
from rlvr.training.rollouts import ScoredGroup, score_completions

SPO_SEED_OFFSET = 2_000_003
"""The continuations sample with seeds of their own, never those of a step's completions."""


@dataclass
class CutValues:
    values: torch.Tensor
    """[B, T] float64: ``V(s_t)`` at the cut points of each row, 0 elsewhere."""
    cuts: torch.Tensor
    """[B, T] bool: the cut points (:func:`rlvr.algorithms.spo.spo_cut_points`)."""
    metrics: dict[str, float] = field(default_factory=dict)


def continuation_seed(base_seed: int, step: int, position: int) -> int:
    """The seed of one group's continuations: a function of the step and the group's position only."""
    return base_seed + SPO_SEED_OFFSET + 7919 * step + 104729 * position


def continue_prefixes(
    engine: Any,
    prefixes: list[tuple[list[int], list[int]]],
    sampling: SamplingParams,
) -> list[Completion]:
    """``sampling.n`` continuations of each (prompt ids, completion prefix ids), in one ``generate`` call.

    The engine sees ``prompt + prefix`` as the prompt. Each continuation is cut to the budget left
    after its prefix, ``sampling.max_new_tokens - len(prefix)`` (finish reason ``length`` when that
    cut it), and is returned as a whole completion of the original prompt: ``token_ids`` = prefix +
    continuation, ``text`` decoded from them, ``logprobs`` 0 on the prefix. Continuation ``i * n + j``
    is sample ``j`` of prefix ``i``. The engine matches stop strings in the tokens it generates, so
    a stop string that begins inside the prefix and ends in the continuation does not stop it.
    """
    if not prefixes:
        return []
    longest = max(sampling.max_new_tokens - len(prefix) for _, prefix in prefixes)
    call = dataclasses.replace(sampling, max_new_tokens=max(1, longest), truncated_logprobs=False)
    raw = engine.generate([list(prompt) + list(prefix) for prompt, prefix in prefixes], call)
    out = []
    for i, (prompt, prefix) in enumerate(prefixes):
        room = sampling.max_new_tokens - len(prefix)
        for c in raw[i * sampling.n : (i + 1) * sampling.n]:
            cut = len(c.token_ids) > room
            ids = list(prefix) + c.token_ids[:room]
            out.append(
                Completion(
                    prompt_index=i,
                    prompt_ids=list(prompt),
                    token_ids=ids,
                    logprobs=[0.0] * len(prefix) + c.logprobs[:room],
                    text=engine.tokenizer.decode(ids, skip_special_tokens=True),
                    finish_reason="length" if cut else c.finish_reason,
                )
            )
    return out


def estimate_cut_values(
    *,
    engine: Any,
    reward: Any,
    problems: list[Any],
    groups: list[ScoredGroup],
    sampling_logprobs: torch.Tensor,
    mask: torch.Tensor,
    sampling: SamplingParams,
    step: int,
    continuations: int,
    spo_threshold: float,
    spo_interval: int,
    spo_max_cuts: int | None,
) -> CutValues:
    """Monte Carlo values at the cut points of the rows of ``groups`` (in batch order: the groups in
    order, the completions of each in order), [B, T] like ``mask``.

    ``sampling_logprobs`` [B, T] are the rollout's logprobs (they define the cut points),
    ``problems[g]`` the problem of group ``g`` (its rewards grade the continuations), ``sampling``
    the rollout's settings (temperature, top-p/k, stop strings, budget, seed). Generation runs no
    collective; the one reward call (all the rank's continuations) and the metric sums are
    collectives that every rank makes once, with or without cut points.
    """
    t0 = time.perf_counter()
    cuts = spo_cut_points(
        sampling_logprobs,
        mask,
        spo_threshold=spo_threshold,
        spo_interval=spo_interval,
        spo_max_cuts=spo_max_cuts,
    )
    values = torch.zeros(mask.shape, dtype=torch.float64)
    cut_rows = cuts.cpu()
    places: list[tuple[int, int]] = []  # (row, position) of every cut point, in batch order
    prefixes: list[tuple[list[int], list[int]]] = []
    graded: list[Any] = []  # the problem of every cut point
    sampled: list[Completion] = []
    row = 0
    for g, group in enumerate(groups):
        mine: list[tuple[list[int], list[int]]] = []
        for completion in group.completions:
            for t in torch.nonzero(cut_rows[row]).flatten().tolist():
                places.append((row, t))
                mine.append((completion.prompt_ids, completion.token_ids[:t]))
            row += 1
        if not mine:
            continue
        params = dataclasses.replace(
            sampling, n=continuations, seed=continuation_seed(sampling.seed, step, group.position)
        )
        sampled += continue_prefixes(engine, mine, params)
        prefixes += mine
        graded += [problems[g]] * len(mine)
    # One reward call for all the cut points of the rank, made on every rank (its metrics are
    # reduced over the ranks), even with nothing to grade.
    result, _ = score_completions(reward, sampled, graded, continuations, sampling.max_new_tokens)
    for i, (r, t) in enumerate(places):
        scores = result.values[i * continuations : (i + 1) * continuations]
        values[r, t] = math.fsum(float(v) for v in scores) / continuations
    rollouts, points = len(sampled), len(prefixes)
    tokens = sum(
        len(c.token_ids) - len(p) for c, (_, p) in zip(sampled, _repeat(prefixes, continuations), strict=True)
    )
    seconds = time.perf_counter() - t0
    totals = all_reduce_sum(
        torch.tensor([float(rollouts), float(tokens), float(points)], dtype=torch.float64)
    )
    extra_rollouts, extra_tokens, cut_points = totals.tolist()
    metrics = {
        "spo/extra_rollouts": extra_rollouts,
        "spo/extra_tokens": extra_tokens,
        "spo/cut_points": cut_points,
        "time/spo_rollouts": all_reduce_max(torch.tensor(seconds, dtype=torch.float64)).item(),
    }
    return CutValues(values.to(mask.device), cuts, metrics)


def _repeat(items: list[Any], n: int) -> list[Any]:
    return [item for item in items for _ in range(n)]
