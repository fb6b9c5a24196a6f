"""The sympy-free comparisons: plain numbers (exact), identical text, clock times."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rlvr.rewards.fast_path import clock_time, normalize_text, plain_number, quick_verdict, same_time


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", Fraction(42)),
        ("-3", Fraction(-3)),
        ("\u22123", Fraction(-3)),  # U+2212 MINUS SIGN
        ("+7", Fraction(7)),
        ("1,000", Fraction(1000)),
        ("900,\\!000,\\!000", Fraction(900_000_000)),  # MATH's thousands separator
        ("10{,}000", Fraction(10_000)),
        ("0.50", Fraction(1, 2)),
        (".25", Fraction(1, 4)),
        ("1.000001", Fraction(1_000_001, 1_000_000)),  # exact: no float rounding
        ("\\frac{3}{4}", Fraction(3, 4)),
        ("\\dfrac{-3}{50}", Fraction(-3, 50)),
        ("-\\tfrac{1}{2}", Fraction(-1, 2)),
        ("7/8", Fraction(7, 8)),
    ],
)
def test_plain_numbers(text: str, value: Fraction) -> None:
    assert plain_number(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "1,2",  # a list, not a thousands separator
        "1,23",
        "1, 000",
        "12,34,567",
        "2\\sqrt{3}",
        "x",
        "1/0",
        "\\frac{1}{0}",
        "25\\%",  # not plain: math-verify decides
        "1e5",
        "",
        "1" * 200,  # too long for the fast path
    ],
)
def test_not_plain_numbers(text: str) -> None:
    assert plain_number(text) is None


@pytest.mark.parametrize(
    ("answer", "gold", "verdict"),
    [
        ("1,000", "1000", True),
        ("0.50", "0.5", True),
        ("\u22123", "-3", True),
        ("\\frac{1}{2}", "0.5", True),
        ("10000", "10{,}000", True),
        ("3", "4", False),
        ("0.333333", "\\frac{1}{3}", False),  # exact comparison
        ("1,2", "12", None),  # not a plain number: math-verify decides
        ("x+1", "1+x", None),
        ("2\\sqrt{3}", "2\\sqrt{3}", True),  # same text
        ("\\left( 3, \\dfrac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})", True),
        ("48", "48^\\circ", True),
        ("\\text{Monday}", "Monday", True),
    ],
)
def test_quick_verdict(answer: str, gold: str, verdict: bool | None) -> None:
    assert quick_verdict(answer, gold) is verdict


def test_normalize_text() -> None:
    # A final period is dropped.
    assert normalize_text("\\text{4:30 p.m.}") == normalize_text("4:30 \\text{ p.m.}") == "4:30p.m"
    assert normalize_text("\\textbf{\\text{A}}") == "A"
    assert normalize_text("\\$6") == "6"
    assert normalize_text("x \\rightarrow y") == "x\\rightarrowy"  # \right inside \rightarrow is kept


def test_clock_times() -> None:
    # The known false negative of the Qwen2.5-Math evaluator: a time, not the division 4/30.
    assert quick_verdict("4:30 \\text{ p.m.}", "\\text{4:30 p.m.}") is True
    assert quick_verdict("16:30", "4:30 p.m.") is True  # 4 p.m. = 16 h
    assert quick_verdict("4:30", "4:30 p.m.") is True  # no half-day given: compared on 12 hours
    assert quick_verdict("4:30 a.m.", "4:30 p.m.") is False
    assert quick_verdict("2/15", "4:30 p.m.") is False  # a gold with p.m. is only a time
    assert quick_verdict("9:05", "9:50") is None  # both colon numbers without a.m./p.m.: maybe ratios
    assert clock_time("12:00am") == (12, 0, "am")
    assert clock_time("13:00pm") is None
    assert same_time((12, 0, "am"), (0, 0, None))
