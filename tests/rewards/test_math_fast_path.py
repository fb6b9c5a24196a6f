"""The sympy-free comparisons: plain numbers (exact), identical text, clock times."""

from __future__ import annotations

from fractions import Fraction

import pytest

from rlvr.rewards.fast_path import (
    align_choices,
    canonical_form,
    clock_time,
    normalize_text,
    number_out_of_text,
    plain_number,
    quick_verdict,
    same_time,
)


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


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2\\frac{1}{2}", Fraction(5, 2)),  # mixed numbers, as MATH writes them
        ("-1\\frac{3}{4}", Fraction(-7, 4)),
        ("33\\frac13", Fraction(100, 3)),
        ("\\frac13", Fraction(1, 3)),
        ("6.02\\times10^{23}", Fraction(602) * 10**21),  # scientific notation, exact
        ("1.5 \\cdot 10^{-3}", Fraction(3, 2000)),
        ("10^{3}", None),  # no mantissa: left to math-verify
        ("2\\frac{3}{2}", None),  # not a mixed number
        ("1\\times10^{99999}", None),  # an exponent too large for an exact rational
    ],
)
def test_plain_number_forms(text: str, value: Fraction | None) -> None:
    assert plain_number(text) == value


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        # Percentages: p% stands for p (the gold gives the number of percent) and p/100
        ("35.0\\%", "35", True),  # ToRA-70B on GSM8K: \boxed{35.0\%} against the gold 35
        ("35\\%", "0.35", True),  # the gold as a fraction of one
        ("0.35", "35\\%", True),
        ("35", "35\\%", True),
        ("35", "0.35", False),  # without a percent sign, 35 is not 0.35
        ("36\\%", "35", False),
        ("33\\%", "33\\frac{1}{3}\\%", False),  # MATH's answer style; an approximation is wrong
        ("33\\frac13\\%", "33\\frac{1}{3}\\%", True),
        ("\\frac{100}{3}\\%", "33\\frac{1}{3}\\%", True),
        ("33.\\overline{3}\\%", "33\\frac{1}{3}\\%", True),
        # Repeating decimals are exact fractions
        ("0.\\overline{3}", "\\frac{1}{3}", True),
        ("0.1\\overline{6}", "\\frac16", True),
        ("1.\\overline{142857}", "\\frac{8}{7}", True),
        ("0.\\overline{3}", "0.3", False),
        ("0.333", "\\frac{1}{3}", False),
        # Scientific notation against exact integers, exactly
        ("6.02\\times10^{23}", "602000000000000000000000", True),
        ("6.02\\times 10^{23}", "602000000000000000000001", False),
        ("4.5 \\times 10^{33}", "4.5e33", True),  # Minerva writes golds in e-notation
        ("4.49 \\times 10^{33}", "4.5e33", False),
        # Approximations of exact golds are wrong
        ("2.5", "2\\frac{1}{2}", True),
        ("2.50001", "2\\frac{1}{2}", False),
    ],
)
def test_quick_verdict_numbers(answer: str, gold: str, expected: bool) -> None:
    assert quick_verdict(answer, gold) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.\\overline{3}", "\\frac{1}{3}"),
        ("x = 0.1\\overline{6}", "x = \\frac{1}{6}"),
        ("\\overline{AB}", "\\overline{AB}"),  # a segment, not a repeating decimal
        ("\\varnothing", "\\emptyset"),
        ("\\{\\}", "\\emptyset"),
        ("\\left\\{ \\right\\}", "\\emptyset"),
        ("1e-5", "1\\times10^{-5}"),
        ("e^{2}", "e^{2}"),
    ],
)
def test_canonical_form(text: str, expected: str) -> None:
    assert canonical_form(text) == expected


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("\\textbf{(B)}\\ 12", "12", ("12", "12")),  # AMC style: the letter and the value
        ("\\textbf{(B) }12", "\\text{(B)}", ("\\text{(B)}", "\\text{(B)}")),  # MATH's letter golds
        ("(C) \\frac{1}{2}", "C", ("\\text{(C)}", "\\text{(C)}")),
        ("\\text{(D)}~7", "\\text{(B)}", ("\\text{(D)}", "\\text{(B)}")),
        ("12", "\\textbf{(B)}\\ 12", ("12", "12")),  # roles swapped
        ("\\text{(B)}", "\\text{(B)}", ("\\text{(B)}", "\\text{(B)}")),  # nothing to align
        ("(1, 2)", "(1,2)", ("(1, 2)", "(1,2)")),
    ],
)
def test_align_choices(answer: str, gold: str, expected: tuple[str, str]) -> None:
    assert align_choices(answer, gold) == expected


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("\\textbf{(B)}\\ 12", "12", True),
        ("\\textbf{(B)}\\ 12", "13", False),
        ("\\textbf{(B)}\\ 12", "\\text{(B)}", True),
        ("\\varnothing", "\\emptyset", True),
        ("\\{\\}", "\\varnothing", True),
    ],
)
def test_quick_verdict_after_rewriting(answer: str, gold: str, expected: bool) -> None:
    assert quick_verdict(answer, gold) is expected


@pytest.mark.parametrize(
    ("text", "gold", "expected"),
    [
        ("\\text{12 cm}", "12", "12\\text{ cm}"),
        ("\\text{ 3.5 square units}", "3.5", "3.5\\text{ square units}"),
        ("\\text{12 cm}", "12\\text{ cm}", "12\\text{ cm}"),  # the gold's own unit
        ("\\text{12 cm}", "12\\text{ m}", "\\text{12 cm}"),  # another unit: left as it is
        ("\\text{4:30 p.m.}", "4", "\\text{4:30 p.m.}"),  # a time stays whole
        ("\\text{5 and 6}", "5", "\\text{5 and 6}"),  # not a quantity with a unit
        ("\\text{3 hours 20 minutes}", "3", "\\text{3 hours 20 minutes}"),  # two quantities
        ("\\text{12 cm by 5 cm}", "12", "\\text{12 cm by 5 cm}"),
        ("\\text{2 apples, 3 oranges}", "2", "\\text{2 apples, 3 oranges}"),
    ],
)
def test_number_out_of_text_takes_one_unit_the_gold_allows(text: str, gold: str, expected: str) -> None:
    assert number_out_of_text(text, gold) == expected
