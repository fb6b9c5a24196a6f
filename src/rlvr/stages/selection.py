"""Selection rules of ``rlvr sample``: which of one problem's graded samples become training data.

Every rule is a pure function of one problem's samples, in the order they were generated::

    rule(samples: Sequence[Graded]) -> list[Graded]                       (SFT rules)
    pair_rule(samples: Sequence[Graded]) -> list[tuple[Graded, Graded]]   (preference rules: chosen, rejected)

SFT rules (:data:`SFT_RULES`):

* ``correct``: every correct sample, in generation order (DeepSeek-R1's rejection sampling,
  arXiv 2501.12948, sec. 2.3.3, keeps the correct samples of many per prompt).
* ``first_correct``: the first correct sample.
* ``shortest_correct``: the correct sample with the fewest tokens; ties go to the earlier sample
  (Kimi k1.5's shortest rejection sampling, arXiv 2501.12599, sec. 2.4).
* ``best``: the sample with the highest reward, ties to the fewer tokens, then to the earlier sample
  (best-of-n by reward; it keeps a sample even when none is correct, since the reward decides).

Pair rules (:data:`PAIR_RULES`), chosen first:

* ``shortest_vs_longest_correct``: the shortest correct sample against the longest correct one
  (Kimi k1.5's long2short DPO); none when fewer than two samples are correct or all correct ones
  have one length (no preference to learn).
* ``correct_vs_wrong``: the i-th correct sample against the i-th wrong one, in generation order,
  each sample in at most one pair.

Worked example, samples (text, reward, correct, length) a=(1, True, 9), b=(0, False, 3),
c=(1, True, 4), d=(1, True, 4): ``correct`` -> [a, c, d], ``first_correct`` -> [a],
``shortest_correct`` -> [c], ``best`` -> [c], ``shortest_vs_longest_correct`` -> [(c, a)],
``correct_vs_wrong`` -> [(a, b)].

:func:`select` applies a rule after leaving out blank completions (nothing to learn from) and
then keeps at most ``max_per_problem`` rows. A problem with nothing to keep gives an empty list:
the stage counts it, it is no error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

SelectRule = Literal["correct", "first_correct", "shortest_correct", "best", "pairs"]
PairRule = Literal["shortest_vs_longest_correct", "correct_vs_wrong"]


@dataclass(frozen=True)
class Graded:
    """One graded sample of a problem."""

    text: str
    reward: float
    correct: bool
    length: int
    """Completion tokens."""
    sample: int = 0
    """Position among the problem's samples (generation order); breaks the last ties."""


Pair = tuple[Graded, Graded]
"""(chosen, rejected)."""


def _correct(samples: Sequence[Graded]) -> list[Graded]:
    return [s for s in samples if s.correct]


def select_correct(samples: Sequence[Graded]) -> list[Graded]:
    """Every correct sample, in generation order."""
    return _correct(samples)


def select_first_correct(samples: Sequence[Graded]) -> list[Graded]:
    """The first correct sample (none if none is)."""
    return _correct(samples)[:1]


def select_shortest_correct(samples: Sequence[Graded]) -> list[Graded]:
    """The correct sample with the fewest tokens; ties to the earlier sample."""
    correct = _correct(samples)
    return [min(correct, key=lambda s: (s.length, s.sample))] if correct else []


def select_best(samples: Sequence[Graded]) -> list[Graded]:
    """The sample with the highest reward; ties to the fewer tokens, then to the earlier sample."""
    return [min(samples, key=lambda s: (-s.reward, s.length, s.sample))] if samples else []


def pair_shortest_vs_longest_correct(samples: Sequence[Graded]) -> list[Pair]:
    """(shortest correct, longest correct), when the longest is strictly longer; ties of either to
    the earlier sample."""
    correct = _correct(samples)
    if len(correct) < 2:
        return []
    shortest = min(correct, key=lambda s: (s.length, s.sample))
    longest = min(correct, key=lambda s: (-s.length, s.sample))
    return [(shortest, longest)] if longest.length > shortest.length else []


def pair_correct_vs_wrong(samples: Sequence[Graded]) -> list[Pair]:
    """The i-th correct sample against the i-th wrong one, in generation order."""
    wrong = [s for s in samples if not s.correct]
    return list(zip(_correct(samples), wrong, strict=False))


SFT_RULES: dict[str, Callable[[Sequence[Graded]], list[Graded]]] = {
    "correct": select_correct,
    "first_correct": select_first_correct,
    "shortest_correct": select_shortest_correct,
    "best": select_best,
}
PAIR_RULES: dict[str, Callable[[Sequence[Graded]], list[Pair]]] = {
    "shortest_vs_longest_correct": pair_shortest_vs_longest_correct,
    "correct_vs_wrong": pair_correct_vs_wrong,
}


def select(
    samples: Sequence[Graded],
    rule: str,
    *,
    pairs: str = "shortest_vs_longest_correct",
    max_per_problem: int | None = None,
) -> list[Graded] | list[Pair]:
    """What ``rule`` (``pairs``: the pair rule ``pairs``) keeps of one problem's samples, blank
    completions left out first, at most ``max_per_problem`` rows (None: no limit)."""
    usable = [s for s in samples if s.text.strip()]
    kept: list[Graded] | list[Pair] = (
        PAIR_RULES[pairs](usable) if rule == "pairs" else SFT_RULES[rule](usable)
    )
    return kept[:max_per_problem] if max_per_problem is not None else kept
