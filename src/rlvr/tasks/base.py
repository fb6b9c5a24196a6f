"""The unit of data every task produces: a :class:`Problem`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
