"""Grouping a problem's extracted answers into classes of equivalent answers, for majority voting.

Two answers are equivalent when the grader says so: for math, the fast path (identical text after
normalisation, equal plain numbers, equal clock times) and otherwise math-verify, run in the
grading pool with its timeout, checking each answer against the other as if it were the gold.
``\\frac12``, ``\\frac{1}{2}`` and ``0.5`` are one class. For other tasks, answers are equivalent
when their text is identical after stripping whitespace.

Classes are the connected components of the "equivalent" relation over a problem's distinct
answers (every pair is compared once), so a chain a ~ b ~ c is one class even where the grader
would not call a and c equal directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlvr.rewards.fast_path import normalize_text, quick_verdict


def _components(size: int, edges: list[tuple[int, int]]) -> list[int]:
    parent = list(range(size))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(size)]


def _classes_from_distinct(
    answers: Sequence[str | None], distinct: list[str], component: list[int]
) -> list[int | None]:
    index = {text: component[i] for i, text in enumerate(distinct)}
    return [None if a is None else index[a.strip()] for a in answers]


def exact_answer_classes(answers: Sequence[str | None]) -> list[int | None]:
    """Class of each answer (None stays None): identical text after stripping whitespace."""
    distinct = list(dict.fromkeys(a.strip() for a in answers if a is not None))
    return _classes_from_distinct(answers, distinct, list(range(len(distinct))))


def math_answer_classes(
    problems_answers: Sequence[Sequence[str | None]], *, timeout_s: float = 5.0, pool: Any = None
) -> list[list[int | None]]:
    """Answer classes of several problems at once (one list of answers per problem).

    All the pairs the fast path cannot decide go to the grading pool in one batch; a pair whose
    check times out or fails counts as not equivalent.
    """
    from rlvr.rewards.math import math_grading_pool

    distinct_per_problem = [
        list(dict.fromkeys(a.strip() for a in answers if a is not None)) for answers in problems_answers
    ]
    edges: list[list[tuple[int, int]]] = [[] for _ in problems_answers]
    pending: list[tuple[int, int, int]] = []
    for p, distinct in enumerate(distinct_per_problem):
        normal = [normalize_text(d) for d in distinct]
        for i in range(len(distinct)):
            for j in range(i + 1, len(distinct)):
                if normal[i] == normal[j]:
                    edges[p].append((i, j))
                    continue
                verdict = quick_verdict(distinct[j], distinct[i])
                if verdict is None:
                    pending.append((p, i, j))
                elif verdict:
                    edges[p].append((i, j))
    if pending:
        pool = pool or math_grading_pool()
        items = [(distinct_per_problem[p][j], distinct_per_problem[p][i]) for p, i, j in pending]
        for (p, i, j), result in zip(pending, pool.map(items, timeout_s=timeout_s), strict=True):
            if result.status == "ok" and result.value:
                edges[p].append((i, j))
    return [
        _classes_from_distinct(answers, distinct, _components(len(distinct), e))
        for answers, distinct, e in zip(problems_answers, distinct_per_problem, edges, strict=True)
    ]
