"""The ``arithmetic`` verifier: exact integer match of the answer block.

The answer is the content of the last ``<answer>...</answer>`` block with surrounding whitespace
removed. It must be an optional ``-`` followed by decimal digits (at most ``MAX_ANSWER_DIGITS``) and
is compared by integer value, so leading zeros are accepted (``042`` equals 42: the value is what
is checked, not its spelling). Anything else in the block (``4 2``, ``42.0``, ``+42``, ``forty-two``)
is a wrong answer; no block at all is ``no_answer``.

Scores: 1.0 correct, 0.0 wrong or no answer.

Example: gold "42": ``<answer>42</answer>`` 1.0; ``<answer> 042 </answer>`` 1.0;
``<answer>41</answer>`` 0.0 (wrong); ``42`` 0.0 (no_answer).
"""

from __future__ import annotations

import re

from rlvr.errors import DataError
from rlvr.rewards.base import REWARDS, Outcome, RewardBatch, RewardResult
from rlvr.rewards.countdown import last_answer_block
from rlvr.tasks.base import Problem

MAX_ANSWER_DIGITS = 64
_INTEGER = re.compile(rf"-?[0-9]{{1,{MAX_ANSWER_DIGITS}}}")


def parse_integer_answer(text: str) -> int | None:
    """The integer written in ``text`` (surrounding whitespace ignored), or None if it is not one."""
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def _gold(problem: Problem) -> int:
    gold = parse_integer_answer(str(problem.answer))
    if gold is None or isinstance(problem.answer, bool):
        raise DataError(
            f"arithmetic problem {problem.id!r}: answer must be an integer, got {problem.answer!r}"
        )
    return gold


@REWARDS.register("arithmetic")
def arithmetic_reward(batch: RewardBatch) -> RewardResult:
    """1.0 when the last answer block holds the gold integer, else 0.0 (see the module docstring)."""
    values: list[float] = []
    correct: list[bool] = []
    outcomes: list[Outcome] = []
    answers: list[str | None] = []
    for completion, problem in zip(batch.completions, batch.problems, strict=True):
        gold = _gold(problem)
        block = last_answer_block(completion)
        answers.append(None if block is None else block.strip())
        if block is None:
            outcome: Outcome = "no_answer"
        else:
            outcome = "correct" if parse_integer_answer(block) == gold else "wrong"
        outcomes.append(outcome)
        correct.append(outcome == "correct")
        values.append(1.0 if outcome == "correct" else 0.0)
    n = max(len(values), 1)
    metrics = {"accuracy": sum(correct) / n, "no_answer_rate": outcomes.count("no_answer") / n}
    return RewardResult(values=values, metrics=metrics, correct=correct, outcomes=outcomes, answers=answers)
