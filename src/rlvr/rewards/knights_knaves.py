"""The ``knights_knaves`` verifier: is every person's identity in the answer right?

Knights-and-Knaves puzzles (Xie et al. 2024, arXiv 2410.23123) as an RL task come from Logic-RL
(Xie et al. 2025, arXiv 2502.14768, Section 3.2 "Reward Modeling"). The answer is the content of the
last ``<answer>...</answer>`` block; it is parsed as Logic-RL's reward does:

* the words "knight" and "knave" (case-insensitive, as substrings) must occur exactly once per
  person in the puzzle: an answer that hedges ("Zoey is a knight or a knave") or explains itself
  does not parse;
* every person must be named in a statement ``<Name> is a knight`` or ``<Name> is a knave``
  (case-insensitive, the name as a whole word).

An answer that parses is ``correct`` when every identity equals the solution and ``wrong``
otherwise (one wrong identity is enough); a missing or unparseable answer is ``no_answer``.

Logic-RL's rewards are S = S_format + S_answer with S_format = 1 if the response has the strict
``<think>...</think><answer>...</answer>`` structure and -1 otherwise, and S_answer = 2 for a fully
correct answer, -1.5 for a wrong one, -2 for an unparseable or missing one. Logic-RL's code scores
the answer only when the format is correct (otherwise S_answer = -2); ``require_format=True``
reproduces that gate here with the same strict rule as the ``format_strict`` reward
(:func:`rlvr.rewards.format.is_strictly_well_formed`), so a response never gets S_format = -1 with a
scored answer. The ``knights_knaves`` task pairs this reward
(``correct_score=2, wrong_score=-1.5, no_answer_score=-2, require_format=True``) with the
``format_strict`` reward (+1/-1), so that a response scores 3, -0.5, -1 or -3.

Example (names Zoey, Oliver; solution knight, knave): ``<answer>(1) Zoey is a knight\\n(2) Oliver
is a knave</answer>`` is correct; swapping "knight" and "knave" is wrong; ``Zoey is a knight`` alone
does not parse (one role word for two people).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlvr.errors import DataError
from rlvr.rewards.base import REWARDS, Outcome, RewardBatch, RewardResult
from rlvr.rewards.countdown import last_answer_block
from rlvr.rewards.format import is_strictly_well_formed
from rlvr.tasks.base import Problem

ROLES = ("knight", "knave")
_ROLE_WORD = re.compile(r"knight|knave", re.IGNORECASE)


def parse_identities(answer: str, names: Sequence[str]) -> dict[str, str] | None:
    """``{name: "knight" | "knave"}`` read from an answer, or None if it does not parse (see above)."""
    if len(_ROLE_WORD.findall(answer)) != len(names):
        return None
    found: dict[str, str] = {}
    for name in names:
        pattern = rf"\b{re.escape(name)}\b\s+is\s+a\s+(knight|knave)\b"
        match = re.search(pattern, answer, re.IGNORECASE)
        if match is None:
            return None
        found[name] = match.group(1).lower()
    return found


def kk_gold(problem: Problem) -> dict[str, str]:
    """``{name: role}`` from a problem's answer ``{"names": [...], "roles": [...]}``; DataError if malformed."""
    answer = problem.answer
    ok = (
        isinstance(answer, dict)
        and isinstance(answer.get("names"), (list, tuple))
        and isinstance(answer.get("roles"), (list, tuple))
        and len(answer["names"]) == len(answer["roles"]) > 0
        and all(isinstance(n, str) and n for n in answer["names"])
        and all(r in ROLES for r in answer["roles"])
    )
    if not ok:
        raise DataError(
            f"knights_knaves problem {problem.id!r}: answer must be "
            f"{{'names': [str, ...], 'roles': ['knight' | 'knave', ...]}} of equal length, got {answer!r}"
        )
    return dict(zip(answer["names"], answer["roles"], strict=True))


@REWARDS.register("knights_knaves")
def knights_knaves_reward(
    batch: RewardBatch,
    *,
    correct_score: float = 1.0,
    wrong_score: float = 0.0,
    no_answer_score: float = 0.0,
    require_format: bool = False,
    think_opened: bool = False,
) -> RewardResult:
    """Score Knights-and-Knaves answers (Logic-RL, arXiv 2502.14768, Sec. 3.2).

    value = ``correct_score`` when all identities are right, ``wrong_score`` when the answer parses
    but some identity is wrong, ``no_answer_score`` when there is no answer block, it does not parse,
    or (with ``require_format``) the completion fails the strict format rule of ``format_strict``;
    ``think_opened`` as there (the prompt ends with ``<think>``).
    """
    values: list[float] = []
    correct: list[bool] = []
    outcomes: list[Outcome] = []
    format_failures = 0
    for completion, problem in zip(batch.completions, batch.problems, strict=True):
        gold = kk_gold(problem)
        outcome: Outcome = "no_answer"
        if require_format and not is_strictly_well_formed(completion, think_opened=think_opened):
            format_failures += 1
        else:
            block = last_answer_block(completion)
            predicted = None if block is None else parse_identities(block, list(gold))
            if predicted is not None:
                outcome = "correct" if predicted == gold else "wrong"
        outcomes.append(outcome)
        correct.append(outcome == "correct")
        score = {"correct": correct_score, "wrong": wrong_score, "no_answer": no_answer_score}[outcome]
        values.append(float(score))
    n = max(len(values), 1)
    metrics = {"accuracy": sum(correct) / n, "no_answer_rate": outcomes.count("no_answer") / n}
    if require_format:
        metrics["format_fail_rate"] = format_failures / n
    return RewardResult(values=values, metrics=metrics, correct=correct, outcomes=outcomes)
