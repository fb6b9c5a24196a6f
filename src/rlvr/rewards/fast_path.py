"""Answer comparisons that need no sympy: plain numbers, identical text, clock times.

Most answers to math word problems are integers. Comparing them through a LaTeX parser and sympy
costs about a millisecond each; comparing them as exact rationals costs microseconds, and is exact
where float rounding is not. :func:`quick_verdict` decides a pair only when the answer is certain
and returns None otherwise, so that the caller goes on to math-verify:

1. **Same text.** After :func:`normalize_text` (spacing macros, ``\\left``/``\\right``,
   ``\\dfrac``, ``\\text{...}`` wrappers, degree and percent signs, ``\\$`` removed) the two strings
   are identical: correct. ``\\text{4:30 p.m.}`` and ``4:30 \\text{ p.m.}`` are the same text.
2. **Clock times.** A gold such as ``4:30 p.m.`` is a time, not the division 4/30 (which is how
   math-verify reads it): both sides are compared as times of day (``16:30`` equals
   ``4:30 p.m.``; a side without a.m./p.m. is compared on a 12-hour dial).
3. **Plain numbers.** Both sides are an integer, a decimal or a simple fraction (``-3``, ``1,000``,
   ``3,\\!250``, ``0.50``, ``\\frac{1}{2}``, ``7/8``, with ``−`` (U+2212) read as a minus sign):
   they are compared as exact rationals. Thousands separators must group digits by three, so
   ``1,2`` (a list) is not a plain number.

>>> quick_verdict("1,000", "1000"), quick_verdict("0.50", "\\\\frac{1}{2}"), quick_verdict("−3", "-3")
(True, True, True)
>>> quick_verdict("4", "5"), quick_verdict("x+1", "1+x")
(False, None)
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_PLAIN_CHARS = 100
"""Longer strings are never read as plain numbers (keeps the fast path fast on adversarial input)."""

_TEXT_MACROS = re.compile(
    r"\\(?:text|textbf|textit|textrm|textnormal|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_SPACING = re.compile(r"\\[,;:! ]|~|\\quad|\\qquad")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\degree|°")
_NUMBER = re.compile(r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[+-]?\.\d+")
_FRACTION = re.compile(r"([+-]?)\\[dt]?frac\{([+-]?\d+)\}\{(\d+)\}|([+-]?\d+)/(\d+)")
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::\d{2})?((?:a|p)\.?m\.?)?", re.IGNORECASE)
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\ufe63": "-", "\uff0d": "-"})


def normalize_text(text: str) -> str:
    """``text`` with the LaTeX that never changes a value removed, for an exact string comparison.

    >>> normalize_text("\\\\left( 3, \\\\dfrac{\\\\pi}{2} \\\\right)")
    '(3,\\\\frac{\\\\pi}{2})'
    >>> normalize_text("4:30 \\\\text{ p.m.}"), normalize_text("48^\\\\circ"), normalize_text("25\\\\%")
    ('4:30p.m', '48', '25')
    """
    text = text.translate(_MINUS_SIGNS)
    text = text.replace("{,}", ",")
    text = _SPACING.sub("", text)
    text = _LEFT_RIGHT.sub("", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    previous = None
    while previous != text:  # \text{\textbf{x}} unwraps from the inside out
        previous, text = text, _TEXT_MACROS.sub(r"\1", text)
    text = _DEGREES.sub("", text)
    text = text.replace("\\%", "").replace("%", "").replace("\\$", "")
    text = "".join(text.split())
    return text.rstrip(".")


def plain_number(text: str) -> Fraction | None:
    """The exact value of ``text`` if it is a plain integer, decimal or simple fraction; else None.

    >>> plain_number("3,\\\\!250"), plain_number("-0.50"), plain_number("\\\\dfrac{3}{50}")
    (Fraction(3250, 1), Fraction(-1, 2), Fraction(3, 50))
    >>> plain_number("1,2") is None, plain_number("2\\\\sqrt{3}") is None
    (True, True)
    """
    if len(text) > MAX_PLAIN_CHARS:
        return None
    text = text.strip().translate(_MINUS_SIGNS)
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\,", ",")
    if _NUMBER.fullmatch(text):
        return Fraction(text.replace(",", ""))
    m = _FRACTION.fullmatch(text)
    if m is None:
        return None
    if m.group(2) is not None:
        sign, numerator, denominator = m.group(1), int(m.group(2)), int(m.group(3))
    else:
        sign, numerator, denominator = "", int(m.group(4)), int(m.group(5))
    if denominator == 0:
        return None
    value = Fraction(numerator, denominator)
    return -value if sign == "-" else value


def clock_time(normalized: str) -> tuple[int, int, str | None] | None:
    """(hour, minute, "am" | "pm" | None) of a normalized time such as ``4:30p.m.``; else None."""
    m = _TIME.fullmatch(normalized)
    if m is None:
        return None
    hour, minute = int(m.group(1)), int(m.group(2))
    meridiem = m.group(3)
    if minute >= 60 or hour > 24 or (meridiem and not 1 <= hour <= 12):
        return None
    return hour, minute, (meridiem[0].lower() + "m") if meridiem else None


def _minutes(time: tuple[int, int, str | None]) -> int:
    hour, minute, meridiem = time
    if meridiem is not None:
        hour = hour % 12 + (12 if meridiem == "pm" else 0)
    return (hour % 24) * 60 + minute


def same_time(a: tuple[int, int, str | None], b: tuple[int, int, str | None]) -> bool:
    """Whether two clock times are the same; a time without a.m./p.m. matches either half-day."""
    if a[2] is not None and b[2] is not None:
        return _minutes(a) == _minutes(b)
    return _minutes(a) % 720 == _minutes(b) % 720


def quick_verdict(answer: str, gold: str) -> bool | None:
    """True / False when the pair is decided without sympy (see the module docstring), else None."""
    norm_answer, norm_gold = normalize_text(answer), normalize_text(gold)
    if norm_answer == norm_gold and norm_gold:
        return True
    gold_time = clock_time(norm_gold)
    if gold_time is not None:
        answer_time = clock_time(norm_answer)
        if gold_time[2] is not None:  # "4:30 p.m." can only be a time
            return answer_time is not None and same_time(answer_time, gold_time)
        if answer_time is not None and same_time(answer_time, gold_time):
            return True
    gold_value = plain_number(gold)
    if gold_value is None:
        return None
    answer_value = plain_number(answer)
    if answer_value is None:
        return None
    return answer_value == gold_value
