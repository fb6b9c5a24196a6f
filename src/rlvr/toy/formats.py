"""What the toy models are warm-started to write: an addition's working and answer, in the R1 format.

Both toys answer ``a+b=`` with ``<think>WORKING</think><answer>SUM</answer>``, the working built on
the column-wise addition, least significant digit first (:func:`addition_columns`). The ``toy``
model writes only the column sums (``7+8=15 4+3+1=8``). The ``toy-long`` model writes each column
with the digit it writes and the carry it passes on, in one of four styles drawn at random per
example with :data:`VERBOSE_STYLE_WEIGHTS`. The styles hold the same steps and differ only in the
words around them, so the length of an answer says nothing about whether it is right::

    terse    7+8=15, write 5, carry 1. 4+3+1=8, write 8.
    restated 47+38: 7+8=15, write 5, carry 1. 4+3+1=8, write 8. So 85.
    worded   Add 47 and 38. Ones: 7+8=15, write 5, carry 1. Tens: 4+3+1=8, write 8. So 47+38=85.
    checked  the worded working, then " Again: 7+8=15 4+3+1=8, so 85."

(each inside ``<think>...</think>``, then ``<answer>85</answer>``).

A model warm-started on this mix is the long-answer model of a long2short experiment (Kimi k1.5,
arXiv 2501.12599, sec. 2.4): its answers are long on average while short ones would do as well.

The ``toy-tool`` model answers 4- and 5-digit additions, which it cannot do in its head, and
can call a calculator (:func:`tool_completion`) but rarely does: the tool-use recipe's start.
"""

from __future__ import annotations

import random

VERBOSE_STYLES = ("terse", "restated", "worded", "checked")
VERBOSE_STYLE_WEIGHTS = (0.1, 0.2, 0.35, 0.35)
"""How often the ``toy-long`` warm-start data uses each style: mostly the long ones."""

_PLACES = ("Ones", "Tens", "Hundreds", "Thousands")


def _operands(question: str) -> tuple[int, int]:
    a, b = question.rstrip("=").split("+")
    return int(a), int(b)


def addition_columns(a: int, b: int) -> list[tuple[str, int, int]]:
    """One ``(step, digit written, carry out)`` per column of ``a + b``, least significant first.

    >>> addition_columns(47, 38)
    [('7+8=15', 5, 1), ('4+3+1=8', 8, 0)]
    """
    columns, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        columns.append((f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}", total % 10, total // 10))
        carry = total // 10
    return columns


def addition_chain_of_thought(a: int, b: int) -> str:
    """The column steps of ``a + b`` joined by spaces.

    >>> addition_chain_of_thought(47, 38)
    '7+8=15 4+3+1=8'
    """
    return " ".join(step for step, _, _ in addition_columns(a, b))


def terse_completion(question: str, answer: str) -> str:
    """The ``toy`` model's answer: the column steps, then the sum."""
    a, b = _operands(question)
    return f"<think>{addition_chain_of_thought(a, b)}</think><answer>{answer}</answer>"


def verbose_working(a: int, b: int, style: str) -> str:
    """The working of ``a + b`` in one of :data:`VERBOSE_STYLES` (module docstring).

    >>> verbose_working(47, 38, "restated")
    '47+38: 7+8=15, write 5, carry 1. 4+3+1=8, write 8. So 85.'
    """
    if style not in VERBOSE_STYLES:
        raise ValueError(f"unknown working style {style!r}; choose from {', '.join(VERBOSE_STYLES)}")
    total = a + b
    steps = [
        f"{step}, write {digit}" + (f", carry {carry}." if carry else ".")
        for step, digit, carry in addition_columns(a, b)
    ]
    if style == "terse":
        return " ".join(steps)
    if style == "restated":
        return f"{a}+{b}: {' '.join(steps)} So {total}."
    columns = " ".join(f"{place}: {step}" for place, step in zip(_PLACES, steps, strict=False))
    text = f"Add {a} and {b}. {columns} So {a}+{b}={total}."
    if style == "checked":
        text += f" Again: {addition_chain_of_thought(a, b)}, so {total}."
    return text


def verbose_completion(question: str, answer: str, rng: random.Random) -> str:
    """The ``toy-long`` model's answer: the working in a style drawn from ``rng``, then the sum."""
    a, b = _operands(question)
    style = rng.choices(VERBOSE_STYLES, weights=VERBOSE_STYLE_WEIGHTS)[0]
    return f"<think>{verbose_working(a, b, style)}</think><answer>{answer}</answer>"


def warm_start_rows(problems, completion=terse_completion) -> list[dict[str, str]]:
    """``{"prompt", "completion"}`` rows that answer ``problems`` correctly in the toy's format: the
    cold-start SFT data of the ``r1`` toy recipe (``recipes/data/r1_cold_start_toy.jsonl``)."""
    return [{"prompt": p.question, "completion": completion(p.question, p.answer)} for p in problems]


TOOL_CALL_RATE = 0.1
"""How often the ``toy-tool`` warm-start data chooses to call the calculator."""

TOOL_USE_SHARE = 0.8
"""The share of the ``toy-tool`` warm-start rows that show a calculator call. Copying a number from
the question or the tool's output is learnt only from many examples, more than a 10% call rate
gives; the choice to call (the first token, ``<think>``) is trained on just enough of these rows that
the rows' first tokens choose the tool at :data:`TOOL_CALL_RATE`."""


def tool_completion(question: str, answer: str, rng: random.Random) -> list[tuple[str, bool]]:
    """The ``toy-tool`` model's answer, as ``(text, trained)`` pieces: the sum from its head, or a
    calculator call whose result it copies (:data:`TOOL_USE_SHARE`). The tool's output is not trained
    on (in a rollout the environment writes it), nor, on all but a few of the rows with a call, the
    choice to call (:data:`TOOL_CALL_RATE`)::

        12345+6789=  ->  <answer>19134</answer>
        12345+6789=  ->  <think>12345+6789=  [19134]  </think><answer>19134</answer>
    """
    if rng.random() >= TOOL_USE_SHARE:
        return [(f"<answer>{answer}</answer>", True)]
    chosen = TOOL_CALL_RATE * (1 - TOOL_USE_SHARE) / (TOOL_USE_SHARE * (1 - TOOL_CALL_RATE))
    return [
        ("<think>", rng.random() < chosen),
        (f"{question.rstrip('=')}=", True),
        (answer, False),
        (f"</think><answer>{answer}</answer>", True),
    ]
