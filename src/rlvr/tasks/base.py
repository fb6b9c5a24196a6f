"""The unit of data every task produces: a :class:`Problem`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlvr.registry import Registry


@dataclass(frozen=True)
class Problem:
    """One problem with a checkable answer.

    ``question`` is the text put into the prompt template. ``answer`` is the gold the task's
    verifier checks against: a string for math and GSM8K, a dict for countdown
    (``{"numbers": [...], "target": int}``), the solution assignment for knights-and-knaves, the unit
    tests for code. ``meta`` carries what evaluation breaks results down by (level, subject) and
    where the row came from (``source``: "file:line").
    """

    id: str
    question: str
    answer: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardSpec:
    """One component of a task's reward: a registered reward ``name``, its weight and parameters."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Task:
    """A dataset of problems, the prompt template that presents them, and the rewards that score them.

    ``train`` feeds RL; ``test`` is the held-out split evaluation reports on. ``template`` names a
    prompt template (:mod:`rlvr.tasks.templates`); ``stop_strings`` end generation early (for
    example ``"</answer>"``).
    """

    name: str
    train: list[Problem]
    test: list[Problem]
    template: str
    rewards: tuple[RewardSpec, ...]
    stop_strings: tuple[str, ...] = ()
    skipped_rows: tuple[str, ...] = ()
    """Rows of the task's data files left out as bad (``skip_bad_rows``), one message each (file,
    line, why): the run reports them."""


# name -> factory(**params) -> Task. Registered by each task module.
TASKS = Registry("task")
