"""Completions to per-sample records: the extracted answer, the verdict, the length, the format.

One record (a JSON object, one line of ``samples/<benchmark>.jsonl``) per completion::

    benchmark, index (the problem's position in the set), id, sample (0..n-1), prompt, completion,
    answer (the extracted final answer, or null), gold, correct, outcome (correct | wrong |
    no_answer | timeout: a check over its limit twice, graded wrong), reward (the set's total
    reward), formatted, truncated, length (completion tokens), meta (level, subject, ...)

``formatted``: the completion puts its answer where the template asks (``<answer>`` tags for the
R1 templates, ``\\boxed{}`` for qwen_boxed); for a template without an answer slot, that an answer
was found at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rlvr.evaluation.sets import EvalSet
from rlvr.rewards.base import RewardBatch
from rlvr.rewards.composite import CompositeReward


@dataclass(frozen=True)
class Generated:
    """One completion as the engine (or a file of existing completions) gives it."""

    text: str
    length: int
    """Completion length in tokens (characters when it comes from a file without token counts)."""
    truncated: bool


def _gold(answer: Any) -> Any:
    return answer if isinstance(answer, (str, int, float, bool)) or answer is None else str(answer)


def is_formatted(text: str, answer_slot: str, outcome: str) -> bool:
    from rlvr.rewards.extraction import extract_answer

    if answer_slot == "none":
        return outcome != "no_answer"
    return extract_answer(text, strict=True, slot=answer_slot) is not None  # type: ignore[arg-type]


def score_records(
    eval_set: EvalSet,
    reward: CompositeReward,
    indices: Sequence[int],
    generated: Sequence[Generated],
    n: int,
    *,
    prompts: Sequence[str],
    max_response_length: int | None = None,
) -> list[dict[str, Any]]:
    """Records of the ``n`` completions of each problem ``eval_set.problems[i]``, i in ``indices``
    (completions in problem order, the n of a problem together)."""
    from rlvr.tasks.templates import TEMPLATES

    if len(prompts) != len(indices):
        raise ValueError(f"{len(prompts)} prompts for {len(indices)} problems")
    problems = [eval_set.problems[i] for i in indices]
    if len(generated) != n * len(problems):
        raise ValueError(f"{len(generated)} completions for {len(problems)} problems x {n} samples")
    result = reward(
        RewardBatch(
            completions=[g.text for g in generated],
            problems=[p for p in problems for _ in range(n)],
            response_lengths=[g.length for g in generated],
            group_ids=[i for i in range(len(problems)) for _ in range(n)],
            truncated=[g.truncated for g in generated],
            max_response_length=max_response_length,
        )
    )
    correct = result.correct if result.correct is not None else [v > 0 for v in result.values]
    outcomes = result.outcomes or ["correct" if c else "wrong" for c in correct]
    answers = result.answers or [None] * len(generated)
    slot = TEMPLATES.get(eval_set.template).answer_slot
    records = []
    for j, g in enumerate(generated):
        i = j // n
        problem = problems[i]
        records.append(
            {
                "benchmark": eval_set.name,
                "index": indices[i],
                "id": problem.id,
                "sample": j % n,
                "prompt": prompts[i],
                "completion": g.text,
                "answer": answers[j],
                "gold": _gold(problem.answer),
                "correct": bool(correct[j]),
                "outcome": outcomes[j],
                "reward": float(result.values[j]),
                "formatted": is_formatted(g.text, slot, outcomes[j]),
                "truncated": g.truncated,
                "length": g.length,
                "meta": {k: v for k, v in problem.meta.items() if k != "source"},
            }
        )
    return records
