"""The interface every reward function implements.

A reward function scores a whole batch at once (so graders can run in parallel)::

    @REWARDS.register("my_reward")
    def my_reward(batch: RewardBatch, *, weight_of_something: float = 1.0) -> RewardResult: ...

``batch`` holds the completions, their problems and what shaping rewards need (token lengths,
group ids, truncation). A *verifier* (a reward that decides correctness, such as ``math``) returns
``correct`` and ``outcomes``; the composition runs verifiers first and hands their ``correct`` to the
shaping rewards that depend on it (Kimi's length penalty, the cosine reward).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rlvr.registry import Registry
from rlvr.tasks.base import Problem

Outcome = Literal["correct", "wrong", "no_answer", "timeout"]
"""``timeout``: the check itself ran out of time (twice); scored like ``wrong``, counted apart."""


@dataclass
class RewardBatch:
    """Everything a reward function may look at, one entry per completion."""

    completions: list[str]
    problems: list[Problem]
    response_lengths: list[int] | None = None
    """Completion lengths in tokens."""
    group_ids: list[int] | None = None
    """Which prompt each completion was sampled for (the n samples of a prompt share an id)."""
    truncated: list[bool] | None = None
    """True where generation stopped at the length limit rather than at a stop token."""
    max_response_length: int | None = None
    """The generation budget in tokens."""
    correct: list[bool] | None = None
    """Set by the verifier before shaping rewards run."""

    def __post_init__(self) -> None:
        n = len(self.completions)
        for name in ("problems", "response_lengths", "group_ids", "truncated", "correct"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"RewardBatch.{name} has {len(value)} entries but there are {n} completions")


@dataclass
class RewardResult:
    """Scores of one reward function for a batch."""

    values: list[float]
    metrics: dict[str, float] = field(default_factory=dict)
    correct: list[bool] | None = None
    """Verifiers only: whether each completion's answer is right."""
    outcomes: list[Outcome] | None = None
    """Verifiers only: correct / wrong / no_answer per completion."""
    answers: list[str | None] | None = None
    """Verifiers that extract a final answer: that answer per completion (None: none), which
    evaluation's majority vote groups into classes."""
    components: dict[str, list[float]] | None = None
    """A composite reward's terms: each component's unweighted values, in the order they ran (the
    GDPO estimator normalises them one by one)."""


RewardFn = Callable[..., RewardResult]
REWARDS: Registry[RewardFn] = Registry("reward")
