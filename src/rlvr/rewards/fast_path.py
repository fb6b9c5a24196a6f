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
3. **Plain numbers.** Both sides are an integer, a decimal, a simple fraction, a mixed number or a
   number in scientific notation (``-3``, ``1,000``, ``3,\\!250``, ``0.50``, ``\\frac{1}{2}``,
   ``7/8``, ``2\\frac{1}{2}``, ``6.02\\times10^{23}``, ``4.5e33``, with ``−`` (U+2212) read as a minus
   sign), possibly followed by a percent sign: they are compared as exact rationals. Thousands
   separators must group digits by three, so ``1,2`` (a list) is not a plain number. A percentage
   ``p\\%`` stands for both p and p/100: it equals a gold that gives the number of percent (GSM8K's
   ``35`` for ``35.0\\%``) and a gold that gives the fraction of one (``0.35``).

Before any comparison, :func:`prepare_pair` rewrites forms that math-verify reads wrongly into
equivalent ones it reads right (:func:`canonical_form`, :func:`align_choices`); the worker that
runs math-verify applies the same rewrites, so both stages see the same pair.

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
_MIXED = re.compile(r"([+-]?)(\d+)\s*\\[dt]?frac(?:\{(\d+)\}\{(\d+)\}|(\d)(\d))")
_SHORT_FRACTION = re.compile(r"([+-]?)\\[dt]?frac(\d)(\d)")
_SCIENTIFIC = re.compile(r"(.+?)\s*(?:\\times|\\cdot)\s*10\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))")
MAX_EXPONENT = 400
"""Scientific notation with a larger power of ten is left to math-verify (no huge exact rationals)."""
_PERCENT = re.compile(r"(.*?)(?:\s|\\[,;:! ])*\\?%")
_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d+)?)[eE]([+-]?\d{1,3})(?![\w.])")
_REPEATING = re.compile(r"(\d*)\.(\d*)\\overline\s*(?:\{(\d+)\}|(\d))")
_EMPTY_SET = re.compile(r"\\varnothing(?![A-Za-z])|(?:\\left)?\\\{\s*(?:\\right)?\\\}")
_TEXT_WITH_NUMBER = re.compile(
    r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*([-\u2212]?\d[\d,]*(?:\.\d+)?)\s*([A-Za-z][^{}]*)\}"
)
_CONJUNCTION = re.compile(r"\b(?:and|or)\b")
_CHOICE_MARK = r"(?:\\(?:text|textbf|textrm|textnormal|mathrm|mathbf)\s*\{\s*\(([A-E])\)\s*\}|\(([A-E])\))"
_CHOICE_WITH_VALUE = re.compile(_CHOICE_MARK + r"(?:\s|\\[ ,;:!]|~|\\q?quad)*(\S.*)", re.DOTALL)
_CHOICE_ALONE = re.compile(
    r"\s*(?:" + _CHOICE_MARK + r"|\\(?:text|textbf|mathrm|mathbf)\s*\{\s*([A-E])\s*\}|([A-E]))\s*"
)


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


def _repeating_decimal(match: re.Match[str]) -> str:
    whole, fixed, repeating = match.group(1), match.group(2), match.group(3) or match.group(4)
    period = 10 ** len(repeating) - 1
    value = int(whole or "0") + Fraction(
        int(fixed + repeating) - int(fixed or "0"), 10 ** len(fixed) * period
    )
    return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


# A unit: words of letters (with periods: "p.m."), an optional exponent; no digits, commas or
# conjunctions, so "3 hours 20 minutes", "12 cm by 5 cm" or "2 apples, 3 oranges" are not one.
_UNIT = re.compile(r"[A-Za-z][A-Za-z.]*(?: [A-Za-z][A-Za-z.]*)*(?:\^\{?\d\}?)?")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{([^{}]*)\}")


def _gold_units(gold: str) -> set[str]:
    """The units in the gold's text wrappers (``12\\text{ cm}`` and ``\\text{12 cm}``: cm)."""
    units = set()
    for content in _TEXT_WRAPPER.findall(gold):
        unit = content.strip().lstrip("-\u22120123456789.,").strip()
        if unit:
            units.add(unit)
    return units


def number_out_of_text(text: str, gold: str) -> str:
    """``text`` with a number inside a text wrapper taken out of it, with its unit: ``\\text{12 cm}``
    becomes ``12\\text{ cm}`` (math-verify reads the whole wrapper as the symbol ``12cm``).

    Only a number with one unit (``cm``, ``square units``, ``m^2``: letters, no digits, commas or
    conjunctions), and only when the gold has no unit or the same one: math-verify ignores a unit
    written as text, so against a gold of ``12\\text{ m}`` the answer ``\\text{12 cm}`` stays the
    symbol it was, and wrong.

    >>> number_out_of_text("\\\\text{12 cm}", "12"), number_out_of_text("\\\\text{12 cm}", "12\\\\text{ m}")
    ('12\\\\text{ cm}', '\\\\text{12 cm}')
    """
    if "\\" not in text:
        return text
    allowed = _gold_units(gold)

    def replace(match: re.Match[str]) -> str:
        unit = match.group(2).strip()
        if _CONJUNCTION.search(unit) or not _UNIT.fullmatch(unit) or (allowed and unit not in allowed):
            return match.group(0)
        return f"{match.group(1)}\\text{{ {unit}}}"

    return _TEXT_WITH_NUMBER.sub(replace, text)


def canonical_form(text: str) -> str:
    """``text`` with the notations that math-verify misreads rewritten to equal ones it reads right.

    * repeating decimals are exact fractions: ``0.\\overline{3}`` is ``\\frac{1}{3}``,
      ``0.1\\overline{6}`` is ``\\frac{1}{6}`` (math-verify reads ``0.\\overline{3}`` as 0);
    * the empty set has one name: ``\\varnothing`` and ``\\{\\}`` become ``\\emptyset``;
    * e-notation is written as a power of ten: ``4.5e33`` becomes ``4.5\\times10^{33}``.

    >>> canonical_form("0.\\\\overline{3}"), canonical_form("\\\\{\\\\}")
    ('\\\\frac{1}{3}', '\\\\emptyset')
    """
    if len(text) > MAX_PLAIN_CHARS * 20:
        return text
    if "overline" in text:
        text = _REPEATING.sub(_repeating_decimal, text)
    if "\\" in text:
        text = _EMPTY_SET.sub(r"\\emptyset", text)
    return _E_NOTATION.sub(r"\1\\times10^{\2}", text)


def _choice_letter(text: str) -> str | None:
    m = _CHOICE_ALONE.fullmatch(text)
    return next((g for g in m.groups() if g), None) if m else None


def _choice_and_value(text: str) -> tuple[str, str] | None:
    m = _CHOICE_WITH_VALUE.match(text.strip())
    if m is None:
        return None
    return m.group(1) or m.group(2), m.group(3).strip()


def align_choices(answer: str, gold: str) -> tuple[str, str]:
    """A multiple-choice answer written with its letter and value (``\\textbf{(B)}\\ 12``) reduced to
    what the gold gives: the letter when the gold is a choice letter (``\\text{(B)}``, ``(B)``,
    ``B``), the value otherwise (``12``). The same holds with the roles swapped. Both letters are
    written ``\\text{(X)}``.

    >>> align_choices("\\\\textbf{(B)}\\\\ 12", "12"), align_choices("\\\\textbf{(B)}\\\\ 12", "\\\\text{(B)}")
    (('12', '12'), ('\\\\text{(B)}', '\\\\text{(B)}'))
    """
    if "(" not in answer and "(" not in gold:
        return answer, gold
    for first, second, swap in ((answer, gold, False), (gold, answer, True)):
        split = _choice_and_value(first)
        if split is None or _choice_and_value(second) is not None:
            continue
        letter = _choice_letter(second)
        if letter is not None:
            pair = (f"\\text{{({split[0]})}}", f"\\text{{({letter})}}")
        else:
            pair = (split[1], second)
        return (pair[1], pair[0]) if swap else pair
    return answer, gold


def prepare_pair(answer: str, gold: str) -> tuple[str, str]:
    """The answer and gold as both grading stages compare them: :func:`canonical_form` of each, a
    number taken out of its unit's text wrapper (:func:`number_out_of_text`), then
    :func:`align_choices`."""
    answer, gold = canonical_form(answer), canonical_form(gold)
    return align_choices(number_out_of_text(answer, gold), number_out_of_text(gold, gold))


def _exact_fraction(text: str) -> Fraction | None:
    if _NUMBER.fullmatch(text):
        return Fraction(text.replace(",", ""))
    m = _FRACTION.fullmatch(text) or _SHORT_FRACTION.fullmatch(text)
    if m is not None:
        if m.re is _SHORT_FRACTION:
            sign, numerator, denominator = m.group(1), int(m.group(2)), int(m.group(3))
        elif m.group(2) is not None:
            sign, numerator, denominator = m.group(1), int(m.group(2)), int(m.group(3))
        else:
            sign, numerator, denominator = "", int(m.group(4)), int(m.group(5))
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator)
        return -value if sign == "-" else value
    m = _MIXED.fullmatch(text)
    if m is not None:
        numerator, denominator = int(m.group(3) or m.group(5)), int(m.group(4) or m.group(6))
        if not 0 < numerator < denominator:  # 2\frac{3}{2} is no mixed number: leave it to math-verify
            return None
        value = int(m.group(2)) + Fraction(numerator, denominator)
        return -value if m.group(1) == "-" else value
    return None


def plain_number(text: str) -> Fraction | None:
    """The exact value of ``text`` if it is a plain integer, decimal, simple fraction, mixed number or
    number in scientific notation; else None.

    >>> plain_number("3,\\\\!250"), plain_number("-0.50"), plain_number("\\\\dfrac{3}{50}")
    (Fraction(3250, 1), Fraction(-1, 2), Fraction(3, 50))
    >>> plain_number("2\\\\frac{1}{2}"), plain_number("1.5\\\\times 10^{3}"), plain_number("\\\\frac13")
    (Fraction(5, 2), Fraction(1500, 1), Fraction(1, 3))
    >>> plain_number("1,2") is None, plain_number("2\\\\sqrt{3}") is None
    (True, True)
    """
    if len(text) > MAX_PLAIN_CHARS:
        return None
    text = text.strip().translate(_MINUS_SIGNS)
    text = text.replace("{,}", ",").replace("\\!", "").replace("\\,", ",")
    m = _SCIENTIFIC.fullmatch(text)
    if m is None:
        return _exact_fraction(text)
    mantissa = _exact_fraction(m.group(1).strip())
    exponent = int(m.group(2) or m.group(3))
    if mantissa is None or abs(exponent) > MAX_EXPONENT:
        return None
    return mantissa * Fraction(10) ** exponent


def number_values(text: str) -> set[Fraction] | None:
    """The values a plain number may stand for: ``{x}``, or for a percentage ``x\\%`` both x and
    x/100; None when ``text`` is not a plain number (:func:`plain_number`) with or without ``%``.

    >>> sorted(number_values("35.0\\\\%")), number_values("7")
    ([Fraction(7, 20), Fraction(35, 1)], {Fraction(7, 1)})
    """
    m = _PERCENT.fullmatch(text.strip())
    value = plain_number(m.group(1) if m else text)
    if value is None:
        return None
    return {value, value / 100} if m else {value}


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
    answer, gold = prepare_pair(answer, gold)
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
    gold_values = number_values(gold)
    if gold_values is None:
        return None
    answer_values = number_values(answer)
    if answer_values is None:
        return None
    return not answer_values.isdisjoint(gold_values)
