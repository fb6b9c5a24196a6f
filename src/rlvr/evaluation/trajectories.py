"""Evaluating environments: n multi-turn trajectories per problem, scored by the environment.

When an ``env`` section applies (:func:`resolve_env_section`), each problem of a set is played
``n`` times in the environment by :class:`~rlvr.rollout.multi_turn.MultiTurnRunner`; a trajectory
counts as solved when the environment's verdict (``info["correct"]``, else a positive total reward)
says so. A trajectory whose environment failed (raised, or gave no answer in time) is recorded with
its ``error`` and counts as a failure. One record per trajectory, one line of
``samples/<benchmark>.jsonl``::

    benchmark, index, id, sample, prompt (the first observation as tokens decoded), conversation
    (every message: role, content), completion (the text after the prompt), gold, correct, outcome
    (correct | wrong | error), reward, turns, tool_calls, tool_errors, timeouts, truncation (max_turns
    | turn_tokens | context | env, or null), truncated, error, length (sampled tokens), observed
    (observation tokens), meta

:func:`summarize_trajectories` turns a set's records into ``avg@n`` and ``pass@k`` (the estimators of
:mod:`rlvr.evaluation.estimators`) and the means of what the trajectories did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from rlvr.evaluation.estimators import avg_at_n, pass_at_k
from rlvr.evaluation.scoring import _gold
from rlvr.evaluation.sets import EvalSet
from rlvr.evaluation.summary import group_by_problem
from rlvr.rollout.multi_turn import TRUNCATIONS
from rlvr.tasks.base import Task

SINGLE_TURN = "none"
"""``env.name`` that evaluates single-turn even where the training config has an environment."""


def resolve_env_section(eval_env: Any, train_env: Any | None) -> Any | None:
    """The :class:`rlvr.config.EnvConfig` an evaluation runs, or None for single-turn.

    ``eval_env`` is the eval config's section (:class:`rlvr.evaluation.config.EvalEnvConfig`),
    ``train_env`` the training config's (None without one). The fields set in ``eval_env`` are laid
    over the training section when both name the same environment (or ``eval_env`` names none), else
    over the training defaults; ``params`` are merged, the eval's winning.
    """
    from rlvr.config import EnvConfig

    if eval_env.name == SINGLE_TURN:
        return None
    trained = train_env if train_env is not None and train_env.name is not None else None
    if eval_env.name is None and trained is None:
        return None
    same = trained is not None and eval_env.name in (None, trained.name)
    base = trained if same else EnvConfig(name=eval_env.name)
    fields = {f.name for f in dataclasses.fields(EnvConfig)}
    overrides = {
        f.name: getattr(eval_env, f.name)
        for f in dataclasses.fields(eval_env)
        if f.name in fields and f.name != "params" and getattr(eval_env, f.name) is not None
    }
    return dataclasses.replace(base, **overrides, params={**base.params, **eval_env.params})


def set_as_task(eval_set: EvalSet) -> Task:
    """An evaluation set as the task an environment taking ``task`` receives: its problems as the
    held-out split, its template, rewards and stop strings (the ``task`` environment grades with them)."""
    return Task(
        name=eval_set.name,
        train=[],
        test=list(eval_set.problems),
        template=eval_set.template,
        rewards=eval_set.rewards,
        stop_strings=eval_set.stop_strings,
    )


def env_runner(env: Any, eval_set: EvalSet, default_turn_tokens: int) -> Any:
    """The runner that plays ``eval_set``'s problems in ``env`` (parameters checked now)."""
    from rlvr.rollout.multi_turn import runner_from_env_config

    return runner_from_env_config(env, set_as_task(eval_set), default_turn_tokens=default_turn_tokens)


def trajectory_record(eval_set: EvalSet, index: int, sample: int, t: Any, tokenizer: Any) -> dict[str, Any]:
    """The record of trajectory ``sample`` of problem ``index`` (module docstring)."""
    problem = eval_set.problems[index]
    failed = t.error is not None
    correct = bool(t.correct) and not failed
    sampled = sum(t.mask) if t.mask is not None else len(t.token_ids)
    return {
        "benchmark": eval_set.name,
        "index": index,
        "id": problem.id,
        "sample": sample,
        "prompt": tokenizer.decode(t.prompt_ids, skip_special_tokens=False) if t.prompt_ids else "",
        "conversation": [dict(m) for m in t.conversation],
        "completion": t.text,
        "gold": _gold(problem.answer),
        "correct": correct,
        "outcome": "error" if failed else "correct" if correct else "wrong",
        "reward": float(t.reward),
        "turns": t.turns,
        "tool_calls": t.tool_calls,
        "tool_errors": t.tool_errors,
        "timeouts": t.timeouts,
        "truncation": t.truncation,
        "truncated": t.truncation is not None,
        "error": t.error,
        "length": sampled,
        "observed": t.observed_tokens if t.observed_tokens is not None else len(t.token_ids) - sampled,
        "meta": {k: v for k, v in problem.meta.items() if k != "source"},
    }


def trajectory_records(
    eval_set: EvalSet, indices: Sequence[int], trajectories: Sequence[Any], n: int, tokenizer: Any
) -> list[dict[str, Any]]:
    """Records of the ``n`` trajectories of each problem ``indices[i]`` (grouped by problem, in order)."""
    if len(trajectories) != n * len(indices):
        raise ValueError(f"{len(trajectories)} trajectories for {len(indices)} problems x {n}")
    return [
        trajectory_record(eval_set, indices[j // n], j % n, t, tokenizer) for j, t in enumerate(trajectories)
    ]


def _mean(values: Sequence[float]) -> float | None:
    """The mean; None (null in results.json) when there is nothing to average."""
    return sum(values) / len(values) if values else None


def _problem_scores(samples: list[dict[str, Any]]) -> dict[str, float]:
    """avg@n and pass@k for every k <= n of one problem's n trajectories."""
    n, correct = len(samples), [bool(r["correct"]) for r in samples]
    scores = {f"avg@{n}": avg_at_n(correct)}
    scores.update({f"pass@{k}": pass_at_k(n, sum(correct), k) for k in range(1, n + 1)})
    return scores


def _behaviour(flat: list[dict[str, Any]]) -> dict[str, Any]:
    """What the trajectories did: means per trajectory and truncation fractions over those that ran
    to their end (environment errors left out), and the environment errors (count and fraction)."""
    ran = [r for r in flat if r["outcome"] != "error"]
    out: dict[str, Any] = {
        "turns_mean": _mean([r["turns"] for r in ran]),
        "tool_calls_mean": _mean([r["tool_calls"] for r in ran]),
        "tool_errors_mean": _mean([r["tool_errors"] for r in ran]),
        "timeouts_mean": _mean([r["timeouts"] for r in ran]),
        "reward_mean": _mean([r["reward"] for r in ran]),
        "length_mean": _mean([r["length"] for r in ran]),
        "observed_mean": _mean([r["observed"] for r in ran]),
        "truncation_rate": _mean([float(r["truncated"]) for r in ran]),
    }
    out.update(
        {f"truncated_{why}": _mean([float(r["truncation"] == why) for r in ran]) for why in TRUNCATIONS}
    )
    errors = len(flat) - len(ran)
    out.update(errors=errors, error_rate=errors / len(flat))
    return out


def _breakdown(
    problems: list[list[dict[str, Any]]], per_problem: list[dict[str, float]], field: str, n: int
) -> dict[str, dict[str, float | None]]:
    """avg@n and pass@n per value of the metadata ``field``, with the number of problems."""
    table: dict[str, dict[str, float | None]] = {}
    for value in sorted({str(s[0]["meta"].get(field)) for s in problems}):
        chosen = [
            p for s, p in zip(problems, per_problem, strict=True) if str(s[0]["meta"].get(field)) == value
        ]
        table[value] = {"problems": len(chosen)}
        table[value].update({key: _mean([p[key] for p in chosen]) for key in (f"avg@{n}", f"pass@{n}")})
    return table


def summarize_trajectories(
    records: Sequence[dict[str, Any]], *, breakdown: Sequence[str] = ()
) -> dict[str, Any]:
    """The metrics of one set's trajectory records; every problem needs the same n.

    ``avg@n`` (mean verdict) and ``pass@k`` for every k <= n averaged over problems, then
    :func:`_behaviour`'s means and fractions, then ``by_<field>`` breakdowns.
    """
    problems = group_by_problem(records)
    if not problems:
        raise ValueError("no trajectories to summarize")
    n = len(problems[0])
    uneven = [samples[0]["id"] for samples in problems if len(samples) != n]
    if uneven:
        raise ValueError(f"every problem needs {n} trajectories; problem {uneven[0]} has a different number")
    per_problem = [_problem_scores(samples) for samples in problems]
    result: dict[str, Any] = {"problems": len(problems), "samples_per_problem": n}
    result.update({key: _mean([p[key] for p in per_problem]) for key in per_problem[0]})
    result.update(_behaviour([r for samples in problems for r in samples]))
    for field in breakdown:
        result[f"by_{field}"] = _breakdown(problems, per_problem, field, n)
    return result
