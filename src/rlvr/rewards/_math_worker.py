"""The part of the ``math`` reward that runs inside grading worker processes.

Importing this module imports math-verify and warms it up on a few answers of each common kind
(fractions, roots, symbols, tuples, sets, intervals, matrices, percentages, equations): the LaTeX
grammar and sympy's caches are then built once, in the fork server that the grading pool preloads
it into, and every worker forked from it (including replacements of killed workers) starts warm.
It is private (the leading underscore keeps reward discovery from importing it): do not import it
in the training process; :mod:`rlvr.rewards.math` names it for the pool.
"""

from __future__ import annotations

import logging
from typing import Any

from math_verify import verify
from sympy import Basic, Float, Rational
from sympy.matrices import MatrixBase

from rlvr.rewards.fast_path import prepare_pair, quick_verdict
from rlvr.rewards.math import parse_math, parsed_gold

_WARM_UP = (
    ("\\frac{1}{2}", "0.5"),
    ("2^{-1}", "\\frac12"),
    ("x", "y"),
    ("\\sqrt{12}", "2\\sqrt{3}"),
    ("(1, 2)", "\\left( 1, 2 \\right)"),
    ("\\{1, 2\\}", "1, 2"),
    ("x \\in [1, 2)", "[1,2)"),
    ("x^2 + 1", "1 + x^2"),
    ("\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("0.25", "25\\%"),
    ("y = 2x + 1", "2x+1"),
    ("3 + 4i", "4i + 3"),
    ("\\text{(A)}", "A"),
    ("\\frac{\\pi}{2}", "90^\\circ"),
    ("\\infty", "(-\\infty, 3]"),
    ("1.5", "\\sqrt{2}"),
)


def exact_decimals(parsed: Any) -> Any:
    """``parsed`` (one item of a math-verify parse) with every float replaced by the exact rational
    its digits write (``1.4142136`` is 14142136/10^7), so that math-verify compares values exactly.

    math-verify otherwise rounds both sides to 6 decimal places when either is a float, which
    accepts ``1.4142136`` for ``\\sqrt{2}`` and ``0.333333`` for ``\\frac{1}{3}``: approximations that
    the tolerance policy of docs/rewards.md rejects. Strings pass through unchanged.
    """
    if not isinstance(parsed, (Basic, MatrixBase)):
        return parsed
    floats = parsed.atoms(Float)
    if not floats:
        return parsed
    return parsed.xreplace({f: Rational(str(f)) for f in floats})


def verify_answer(answer: str, gold: str) -> bool:
    """math-verify's verdict on ``answer`` against ``gold``, its own timeouts disabled.

    The fast path's rules come first (:func:`rlvr.rewards.fast_path.quick_verdict`: a pair of plain
    numbers, such as a percentage of a mixed number, is decided by them, which math-verify misreads),
    so a pair gets the same verdict whichever stage decides it. Otherwise the pair is rewritten as the
    fast path rewrites it (:func:`rlvr.rewards.fast_path.prepare_pair`), both sides are parsed inside ``$...$``
    (:func:`rlvr.rewards.math.as_latex`) and their decimals made exact (:func:`exact_decimals`).
    Parsed golds are cached (the samples of one prompt share a gold). A gold that does not parse
    raises DataError.
    """
    verdict = quick_verdict(answer, gold)
    if verdict is not None:
        return verdict
    answer, gold = prepare_pair(answer, gold)
    gold_parsed = [exact_decimals(g) for g in parsed_gold(gold)]
    answer_parsed = [exact_decimals(a) for a in parse_math(answer)]
    if not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=None))


def _warm_up() -> None:
    for answer, gold in _WARM_UP:
        try:
            verify_answer(answer, gold)
        except Exception:  # a failure here must not stop the fork server that imports this module
            pass


logging.getLogger("math_verify").setLevel(logging.ERROR)
_warm_up()
