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

from math_verify import verify

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
)


def verify_answer(answer: str, gold: str) -> bool:
    """math-verify's verdict on ``answer`` against ``gold``, its own timeouts disabled.

    Both sides are parsed inside ``$...$`` (:func:`rlvr.rewards.math.as_latex`); parsed golds are
    cached (the samples of one prompt share a gold). A gold that does not parse raises DataError.
    """
    gold_parsed = parsed_gold(gold)
    answer_parsed = parse_math(answer)
    if not answer_parsed:
        return False
    return bool(verify(list(gold_parsed), answer_parsed, timeout_seconds=None))


def _warm_up() -> None:
    for answer, gold in _WARM_UP:
        try:
            verify_answer(answer, gold)
        except Exception:  # a failure here must not stop the fork server that imports this module
            pass


logging.getLogger("math_verify").setLevel(logging.ERROR)
_warm_up()
