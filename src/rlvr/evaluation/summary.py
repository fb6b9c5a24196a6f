"""Per-sample records to a benchmark's metrics (estimators in :mod:`rlvr.evaluation.estimators`).

For a benchmark evaluated with n samples per problem, over its problems:

* ``avg@n``: mean accuracy of all samples (R1's pass@1); ``pass@k`` for every k <= n and ``maj@k``
  for k in 1, 2, 4, ..., n, each the mean of the per-problem estimates;
* ``length_mean``, ``length_correct``, ``length_wrong``: completion length in tokens (null when no
  sample is correct, or none wrong);
* ``format_rate``, ``truncation_rate``, ``no_answer_rate``: fractions of all samples;
* ``by_<field>``: ``avg@n``, ``pass@n`` and ``maj@n`` per value of each breakdown field (MATH level,
  subject), with the number of problems.

The macro average of several benchmarks is the unweighted mean of their metrics (each benchmark
counts once, whatever its size), over the metrics they all have.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from rlvr.evaluation.answers import exact_answer_classes, math_answer_classes
from rlvr.evaluation.estimators import AnswerVotes, avg_at_n, k_values, maj_at_k, pass_at_k


def group_by_problem(records: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Records grouped by problem index (problems in order, samples in order)."""
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[r["index"]].append(r)
    return [sorted(groups[i], key=lambda r: r["sample"]) for i in sorted(groups)]


def _mean(values: Sequence[float]) -> float | None:
    """The mean; None (null in results.json) when there is nothing to average."""
    return sum(values) / len(values) if values else None


def answer_classes(
    problems: list[list[dict[str, Any]]], equivalence: str, *, timeout_s: float = 5.0
) -> list[list[int | None]]:
    answers = [[r["answer"] for r in samples] for samples in problems]
    if equivalence == "math":
        return math_answer_classes(answers, timeout_s=timeout_s)
    return [exact_answer_classes(a) for a in answers]


def _problem_scores(
    samples: list[dict[str, Any]], classes: list[int | None], ks: list[int], all_ks: list[int]
) -> dict[str, float]:
    n = len(samples)
    correct = [r["correct"] for r in samples]
    c = sum(correct)
    votes = AnswerVotes.from_samples(classes, correct)
    scores = {f"avg@{n}": avg_at_n(correct)}
    scores.update({f"pass@{k}": pass_at_k(n, c, k) for k in all_ks})
    scores.update({f"maj@{k}": maj_at_k(votes, k) for k in ks})
    return scores


def summarize(
    records: Sequence[dict[str, Any]],
    *,
    equivalence: str = "exact",
    breakdown: Sequence[str] = (),
    timeout_s: float = 5.0,
) -> dict[str, Any]:
    """The metrics of one benchmark's records (module docstring); every problem needs the same n."""
    problems = group_by_problem(records)
    if not problems:
        raise ValueError("no samples to summarize")
    n = len(problems[0])
    uneven = [samples[0]["id"] for samples in problems if len(samples) != n]
    if uneven:
        raise ValueError(f"every problem needs {n} samples; problem {uneven[0]} has a different number")
    ks, all_ks = k_values(n), list(range(1, n + 1))
    classes = answer_classes(problems, equivalence, timeout_s=timeout_s)
    per_problem = [_problem_scores(s, c, ks, all_ks) for s, c in zip(problems, classes, strict=True)]
    keys = list(per_problem[0])
    result: dict[str, Any] = {"problems": len(problems), "samples_per_problem": n}
    result.update({key: _mean([p[key] for p in per_problem]) for key in keys})
    flat = [r for samples in problems for r in samples]
    result["length_mean"] = _mean([r["length"] for r in flat])
    result["length_correct"] = _mean([r["length"] for r in flat if r["correct"]])
    result["length_wrong"] = _mean([r["length"] for r in flat if not r["correct"]])
    result["format_rate"] = _mean([float(r["formatted"]) for r in flat])
    result["truncation_rate"] = _mean([float(r["truncated"]) for r in flat])
    result["no_answer_rate"] = _mean([float(r["outcome"] == "no_answer") for r in flat])
    result["timeout_rate"] = _mean([float(r["outcome"] == "timeout") for r in flat])  # graded as wrong
    for field in breakdown:
        table: dict[str, dict[str, float]] = {}
        values = sorted({str(s[0]["meta"].get(field)) for s in problems})
        for value in values:
            chosen = [
                p for s, p in zip(problems, per_problem, strict=True) if str(s[0]["meta"].get(field)) == value
            ]
            table[value] = {"problems": len(chosen)}
            for key in (f"avg@{n}", f"pass@{n}", f"maj@{n}"):
                table[value][key] = _mean([p[key] for p in chosen])
        result[f"by_{field}"] = table
    return result


def macro_average(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Unweighted mean over benchmarks of every numeric metric they all report."""
    if not results:
        return {}
    common = set.intersection(
        *({k for k, v in r.items() if isinstance(v, (int, float))} for r in results.values())
    ) - {"problems", "samples_per_problem"}
    order = [k for k in next(iter(results.values())) if k in common]
    return {k: sum(float(r[k]) for r in results.values()) / len(results) for k in order}


def headline_metric(result: dict[str, Any]) -> str:
    """The accuracy a benchmark is quoted by: avg@n (greedy accuracy when n = 1)."""
    return f"avg@{result['samples_per_problem']}"
