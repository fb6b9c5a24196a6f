"""Per-problem metrics over n samples: pass@k, maj@k and avg@n.

Every @k metric is the exact expectation, over a uniformly random subset of k of the problem's n
samples, of a per-subset score; that makes pass@k and maj@k unbiased for a fresh draw of k samples
and comparable across runs with different n.

* **pass@k** (Chen et al. 2021, "Evaluating Large Language Models Trained on Code", arXiv
  2107.03374, eq. 1): with c of n samples correct,
  ``pass@k = 1 - C(n - c, k) / C(n, k)``, the probability that a k-subset holds a correct sample.
  Example: n = 4, c = 1, k = 2 gives 1 - C(3, 2) / C(4, 2) = 1 - 3/6 = 0.5.
* **maj@k** (self-consistency, Wang et al. 2022, arXiv 2203.11171): the samples of a k-subset vote
  for their answer (answers equal up to the grader are one class); the subset scores 1 when the
  class with most votes is correct. Ties: each of the t tied classes wins with probability 1/t, so a
  tie between a correct and a wrong class scores 1/2. Samples without an answer do not vote; a
  subset where none has an answer scores 0. maj@n is plain majority voting over all n samples.
  Example: votes {A (correct): 2, B: 1, C: 1}, k = 2: of the 6 pairs, AA wins (1), AB and AC tie
  (1/2 each, 4 pairs), BC ties between two wrong classes (0): maj@2 = (1 + 4/2) / 6 = 0.5.
* **avg@n**: the mean correctness of the n samples, which is pass@1 (DeepSeek-R1, arXiv 2501.12948,
  sec. 3.1, reports it as "pass@1" averaged over k samples).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _check_k(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of samples n = {n}, got {k}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. (2021) eq. 1: 1 - C(n - c, k) / C(n, k), exact in integer arithmetic."""
    _check_k(n, k)
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be between 0 and n = {n}, got {c}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_n(correct: Sequence[bool]) -> float:
    """Mean correctness of a problem's samples (R1's pass@1 over n samples)."""
    if not correct:
        raise ValueError("avg@n needs at least one sample")
    return sum(bool(x) for x in correct) / len(correct)


@dataclass(frozen=True)
class AnswerVotes:
    """One problem's samples grouped by answer: ``counts[i]`` samples gave answer class i, which is
    correct when ``correct[i]``; ``no_answer`` samples gave none."""

    counts: tuple[int, ...]
    correct: tuple[bool, ...]
    no_answer: int = 0

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.correct):
            raise ValueError(f"{len(self.counts)} answer counts but {len(self.correct)} correctness flags")
        if any(c < 1 for c in self.counts) or self.no_answer < 0:
            raise ValueError("every answer class needs at least one vote and no_answer must be >= 0")

    @property
    def n(self) -> int:
        return sum(self.counts) + self.no_answer

    @classmethod
    def from_samples(cls, classes: Sequence[int | None], correct: Sequence[bool]) -> AnswerVotes:
        """From each sample's answer class (None: no answer) and correctness."""
        if len(classes) != len(correct):
            raise ValueError(f"{len(classes)} answer classes but {len(correct)} correctness flags")
        counts: dict[int, int] = {}
        right: dict[int, bool] = {}
        for cls_id, ok in zip(classes, correct, strict=True):
            if cls_id is None:
                continue
            counts[cls_id] = counts.get(cls_id, 0) + 1
            right.setdefault(cls_id, bool(ok))  # a class is as correct as its first sample
        order = sorted(counts)
        return cls(
            tuple(counts[i] for i in order),
            tuple(right[i] for i in order),
            sum(c is None for c in classes),
        )


def _ways_others(others: Sequence[int], no_answer: int, top: int, picks: int) -> np.ndarray:
    """ways[e]: the number of ways to pick ``picks`` samples from the other classes and the
    no-answer samples such that no other class gets more than ``top`` picks and exactly e of them
    get ``top`` (a tie with the class under consideration)."""
    ties = len(others)
    table = np.zeros((picks + 1, ties + 1))  # [chosen so far, tied classes]
    table[0, 0] = 1.0
    for m in others:
        nxt = np.zeros_like(table)
        for u in range(min(m, top, picks) + 1):
            ways = float(math.comb(m, u))
            tie = 1 if u == top else 0
            if u == 0:
                nxt += table
            else:
                nxt[u:, tie:] += ways * table[: picks + 1 - u, : ties + 1 - tie]
        table = nxt
    if no_answer:
        free = np.array([float(math.comb(no_answer, u)) for u in range(picks + 1)])
        table = np.array([free[: s + 1][::-1] @ table[: s + 1] for s in range(picks + 1)])
    return table[picks]


def maj_at_k(votes: AnswerVotes, k: int) -> float:
    """Expected majority-vote correctness of a random k-subset (module docstring: ties, no answer)."""
    n = votes.n
    _check_k(n, k)
    total = 0.0
    for i, (m, ok) in enumerate(zip(votes.counts, votes.correct, strict=True)):
        if not ok:
            continue
        others = votes.counts[:i] + votes.counts[i + 1 :]
        for t in range(1, min(m, k) + 1):  # this class gets t of the k picks
            ways = _ways_others(others, votes.no_answer, t, k - t)
            share = sum(w / (1 + e) for e, w in enumerate(ways))
            total += math.comb(m, t) * share
    return total / math.comb(n, k)


def k_values(n: int) -> list[int]:
    """The k reported in tables: powers of two up to n, and n itself."""
    ks = [1]
    while ks[-1] * 2 <= n:
        ks.append(ks[-1] * 2)
    if ks[-1] != n:
        ks.append(n)
    return ks
