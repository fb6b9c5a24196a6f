"""One step's rollouts: draw prompts, generate n completions each, score them, filter groups.

Dynamic sampling (DAPO, arXiv 2503.14476 sec. 3.2): when group filters that look only at rewards
drop groups, more prompts are drawn and generated until ``prompts_per_step`` groups are kept or
``max_sampling_rounds`` rounds have run; the kept groups beyond the target are dropped so each step
trains on the same number of groups. Every round's counts are reported (``filter/prompts_drawn``,
``filter/rounds``).

On N ranks every rank draws the same prompts (the samplers are identical and updated with the pass
rates of all ranks) and generates for every N-th of them. The ranks decide together: a round
follows while the kept groups of all ranks fall short, the groups kept are the first
``prompts_per_step`` in drawing order over all ranks (what one process would keep), and they are
then dealt out evenly, whole groups to a rank, so that no rank idles in the update.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.algorithms.filters import apply_filters, filter_stages
from rlvr.distributed import all_reduce_max, all_reduce_sum, gather_objects, rank, world_size
from rlvr.rewards.base import RewardBatch, RewardResult
from rlvr.rollout.types import Completion, SamplingParams
from rlvr.tasks.base import Problem


def score_completions(
    reward: Any, completions: list[Completion], problems: list[Problem], n: int, max_response_length: int
) -> tuple[RewardResult, list[bool]]:
    """Score ``n`` completions of each of ``problems`` (in order); also return which are correct.

    Without a verifier in the reward, a completion counts as correct when its reward is positive.
    """
    result = reward(
        RewardBatch(
            completions=[c.text for c in completions],
            problems=[p for p in problems for _ in range(n)],
            response_lengths=[len(c.token_ids) for c in completions],
            group_ids=[g for g in range(len(problems)) for _ in range(n)],
            truncated=[c.finish_reason == "length" for c in completions],
            max_response_length=max_response_length,
        )
    )
    correct = result.correct if result.correct is not None else [v > 0 for v in result.values]
    return result, correct


@dataclass
class ScoredGroup:
    prompt_index: int
    completions: list[Completion]
    rewards: list[float]
    correct: list[bool]
    outcomes: list[str]
    position: int = 0
    """Where the group's prompt was drawn in the step (over all rounds and all ranks)."""
    reward_components: list[list[float]] = field(default_factory=list)
    """Per completion, the unweighted value of each reward component (empty when not known)."""


@dataclass
class GeneratedRound:
    """One round of a step, generated and not yet scored: the prompts drawn (all ranks'), which of
    them are this rank's (``positions`` into ``indices``), its completions, and the seconds it took."""

    step: int
    indices: list[int]
    positions: list[int]
    completions: list[Completion]
    seconds: float


@dataclass
class StepRollouts:
    groups: list[ScoredGroup]
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class RolloutCollector:
    """Draws prompts with the sampler, generates with the engine, scores with the reward."""

    def __init__(
        self,
        *,
        engine: Any,
        problems: list[Problem],
        prompt_ids: list[list[int]],
        sampler: Any,
        reward: Any,
        sampling: SamplingParams,
        prompts_per_step: int,
        max_rounds: int,
        algorithm: Any,
        episodes: Any = None,
    ) -> None:
        """``episodes``: a :class:`~rlvr.rollout.multi_turn.MultiTurnRunner` for multi-turn
        rollouts (its environments score them); None generates single completions scored by ``reward``."""
        self.episodes = episodes
        self.engine, self.problems, self.prompt_ids = engine, problems, prompt_ids
        self.sampler, self.reward, self.sampling = sampler, reward, sampling
        self.prompts_per_step, self.max_rounds, self.algorithm = prompts_per_step, max_rounds, algorithm
        self.reward_filters, _ = filter_stages(algorithm.filters)

    def draw(self, step: int) -> list[int]:
        """The prompts of one round of ``step``, drawn by the sampler (the same on every rank)."""
        return self.sampler.sample(self.prompts_per_step, step)

    def generate(self, engine: Any, step: int, round_: int, indices: list[int]) -> GeneratedRound:
        """This rank's share of the drawn prompts ``indices``, ``n`` completions each, from ``engine``.

        The seed depends only on the step, the round and the rank, so a round generated ahead in
        another thread samples what it would have sampled in the step itself, given the same weights.
        Runs no collective.
        """
        world, me = world_size(), rank()
        positions = list(range(me, len(indices), world))  # this rank's share of the draw
        mine = [indices[j] for j in positions]
        t0 = time.perf_counter()
        seed = self.sampling.seed + 7919 * step + round_ + 104729 * me
        sampling = dataclasses.replace(self.sampling, seed=seed)
        if self.episodes is not None:  # multi-turn: the environments make the prompts
            completions = self.episodes.run(engine, [self.problems[i] for i in mine], sampling)
        else:
            completions = engine.generate([self.prompt_ids[i] for i in mine], sampling)
        return GeneratedRound(step, indices, positions, completions, time.perf_counter() - t0)

    def collect(self, step: int, first_round: GeneratedRound | None = None) -> StepRollouts:
        """Draw, generate, score and filter rounds until ``prompts_per_step`` groups are kept.

        ``first_round``: the first round, already drawn and generated (see
        :mod:`rlvr.training.generate_ahead`); later rounds, if any, are generated here.
        """
        n = self.sampling.n
        kept: list[ScoredGroup] = []
        metrics: dict[str, float] = {}
        timings = {"time/generate": 0.0, "time/reward": 0.0}
        drawn = rounds = kept_everywhere = 0
        while kept_everywhere < self.prompts_per_step and rounds < self.max_rounds:
            rounds += 1
            if rounds == 1 and first_round is not None:
                if first_round.step != step:
                    raise RuntimeError(
                        f"the round generated ahead is step {first_round.step}'s, not {step}'s"
                    )
                generated = first_round
            else:
                generated = self.generate(self.engine, step, rounds, self.draw(step))
            indices, positions, completions = generated.indices, generated.positions, generated.completions
            mine = [indices[j] for j in positions]
            t1 = time.perf_counter()
            if self.episodes is not None:  # the environments scored the trajectories
                result, correct = score_trajectories(completions)
            else:
                result, correct = score_completions(
                    self.reward,
                    completions,
                    [self.problems[i] for i in mine],
                    n,
                    self.sampling.max_new_tokens,
                )
            timings["time/generate"] += generated.seconds
            timings["time/reward"] += time.perf_counter() - t1
            outcomes = result.outcomes or ["correct" if c else "wrong" for c in correct]
            if rounds == 1:  # the metrics of the first round describe the policy's samples unfiltered
                metrics.update(result.metrics)
                metrics.update(self._response_metrics(completions, correct))
                if self.episodes is not None:
                    metrics.update(_episode_metrics(completions))
            parts = [list(c) for c in zip(*(getattr(result, "components", None) or {}).values(), strict=True)]
            pass_rates = [sum(correct[g * n : (g + 1) * n]) / n for g in range(len(mine))]
            self.sampler.update(indices, _merge_by_position(positions, pass_rates, len(indices)))
            groups = [
                ScoredGroup(
                    mine[g],
                    completions[g * n : (g + 1) * n],
                    result.values[g * n : (g + 1) * n],
                    correct[g * n : (g + 1) * n],
                    outcomes[g * n : (g + 1) * n],
                    position=drawn + positions[g],
                    reward_components=parts[g * n : (g + 1) * n],
                )
                for g in range(len(mine))
            ]
            if self.episodes is not None:  # a trajectory whose environment failed is left out
                groups = [g for g in map(_without_failed, groups) if g.completions]
            drawn += len(indices)
            kept.extend(self._filter_groups(groups, metrics))
            kept_everywhere = int(all_reduce_sum(torch.tensor(float(len(kept)))).item())
        metrics["filter/prompts_drawn"] = float(drawn)
        metrics["filter/rounds"] = float(rounds)
        metrics["filter/groups_used"] = float(min(kept_everywhere, self.prompts_per_step))
        timings.update(_generation_spread(timings["time/generate"]))
        return StepRollouts(self._first_kept(kept), metrics, timings)

    def _first_kept(self, kept: list[ScoredGroup]) -> list[ScoredGroup]:
        """The first ``prompts_per_step`` kept groups in drawing order over all ranks, dealt out evenly."""
        everyone = sorted((g for part in gather_objects(kept) for g in part), key=lambda g: g.position)  # type: ignore[union-attr]
        return everyone[: self.prompts_per_step][rank() :: world_size()]

    def _filter_groups(self, groups: list[ScoredGroup], metrics: dict[str, float]) -> list[ScoredGroup]:
        """Apply the filters that need only rewards; groups with no completion left are dropped."""
        if not self.reward_filters:
            return groups
        n = self.sampling.n
        out = apply_filters(
            self.reward_filters,
            rewards=torch.tensor([r for g in groups for r in g.rewards], dtype=torch.float64),
            group_ids=torch.arange(len(groups)).repeat_interleave(n),
            correct=torch.tensor([c for g in groups for c in g.correct]),
            config=self.algorithm,
        )
        for key, value in out.metrics.items():
            metrics[key] = metrics.get(key, 0.0) + value
        keep = out.keep.tolist()
        result = []
        for g, group in enumerate(groups):
            rows = [j for j in range(n) if keep[g * n + j]]
            if rows:
                result.append(
                    ScoredGroup(
                        group.prompt_index,
                        [group.completions[j] for j in rows],
                        [group.rewards[j] for j in rows],
                        [group.correct[j] for j in rows],
                        [group.outcomes[j] for j in rows],
                        position=group.position,
                        reward_components=[
                            group.reward_components[j] for j in rows if group.reward_components
                        ],
                    )
                )
        return result

    @staticmethod
    def _response_metrics(completions: list[Completion], correct: list[bool]) -> dict[str, float]:
        lengths = torch.tensor([float(len(c.token_ids)) for c in completions])
        truncated = torch.tensor([float(c.finish_reason == "length") for c in completions])
        ok = torch.tensor(correct, dtype=torch.bool)
        n = all_reduce_sum(torch.tensor(float(len(completions))))
        stats = all_reduce_sum(
            torch.stack(
                [
                    lengths.sum(),
                    truncated.sum(),
                    (lengths * ok).sum(),
                    ok.sum().float(),
                    (lengths * ~ok).sum(),
                ]
            )
        )
        longest = all_reduce_max(lengths.max()).item() if len(completions) else 0.0
        n_ok, n_wrong = stats[3].item(), n.item() - stats[3].item()
        return {
            "response/length_mean": (stats[0] / n).item(),
            "response/length_max": longest,
            "response/clipped_ratio": (stats[1] / n).item(),
            "response/length_correct": stats[2].item() / n_ok if n_ok else float("nan"),
            "response/length_wrong": stats[4].item() / n_wrong if n_wrong else float("nan"),
        }


def score_trajectories(trajectories: list[Any]) -> tuple[RewardResult, list[bool]]:
    """The environments' verdicts on multi-turn trajectories as a :class:`RewardResult`."""
    from rlvr.rewards.composite import OUTCOMES, global_means

    correct = [bool(t.correct) and t.error is None for t in trajectories]
    outcomes = [
        "error" if t.error else "correct" if c else "wrong"
        for t, c in zip(trajectories, correct, strict=True)
    ]
    values = [float(t.reward) for t in trajectories]
    columns = {"reward/total": values, "reward/accuracy": [float(c) for c in correct]}
    for outcome in OUTCOMES:
        columns[f"reward/outcome/{outcome}"] = [float(o == outcome) for o in outcomes]
    metrics = global_means(columns, len(trajectories))  # collective: the means over every rank's
    return RewardResult(values, metrics=metrics, correct=correct, outcomes=outcomes), correct  # type: ignore[arg-type]


def _without_failed(group: ScoredGroup) -> ScoredGroup:
    """``group`` without the trajectories whose environment failed."""
    keep = [j for j, c in enumerate(group.completions) if getattr(c, "error", None) is None]
    if len(keep) == len(group.completions):
        return group
    pick = lambda xs: [xs[j] for j in keep] if len(xs) == len(group.completions) else xs  # noqa: E731
    return dataclasses.replace(
        group,
        **{
            f.name: pick(getattr(group, f.name))
            for f in dataclasses.fields(group)
            if isinstance(getattr(group, f.name), list)
        },
    )


def _episode_metrics(trajectories: list[Any]) -> dict[str, float]:
    """``env/*`` metrics over the trajectories of all ranks; the environment errors are logged."""
    from rlvr.rollout.multi_turn import trajectory_metrics, trajectory_sums

    sums = trajectory_sums(trajectories)
    keys = sorted(sums)
    total = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()
    for t in trajectories:
        if t.error is not None:
            print(f"warning: {t.error}; the step goes on without this trajectory", flush=True)
    return trajectory_metrics(dict(zip(keys, total, strict=True)))


def _merge_by_position(positions: list[int], values: list[float], size: int) -> list[float]:
    """The ``size`` values of all ranks in drawing order, from each rank's (positions, values)."""
    merged = [0.0] * size
    for part_positions, part_values in gather_objects((positions, values)):  # type: ignore[misc]
        for p, v in zip(part_positions, part_values, strict=True):
            merged[p] = v
    return merged


def _generation_spread(seconds: float) -> dict[str, float]:
    """Generation time of the slowest rank (the step waits for it), of the fastest, and their ratio:
    how unevenly long completions fell on the ranks."""
    times = [float(t) for t in gather_objects(seconds)]  # type: ignore[arg-type]
    slowest, fastest = max(times), min(times)
    return {
        "time/generate": slowest,
        "time/generate_fastest_rank": fastest,
        "time/generate_spread": slowest / fastest if fastest > 0 else 1.0,
    }
