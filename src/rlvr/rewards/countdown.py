"""The ``countdown`` verifier: does the answer's equation reach the target with the given numbers?

The Countdown game as an RL task comes from TinyZero (Pan et al. 2025,
https://github.com/Jiayi-Pan/TinyZero): the model gets 3 or 4 numbers and a target and must write an
equation, inside ``<answer> </answer>``, that uses each number exactly once and equals the target.

Rules this verifier enforces (the equation is the content of the last ``<answer>`` block):

* Syntax: non-negative integer literals (decimal digits only), the binary operators ``+ - * /`` and
  parentheses. Anything else is refused without being evaluated: names, calls, attributes, ``**``,
  ``//``, ``%``, float or hex literals, ``=``, and unary ``+``/``-`` (the game combines the given
  numbers with the four binary operations; a unary minus would stand for a number not on the list).
  Inputs longer than ``max_equation_chars`` are refused before parsing, literals of more than
  ``MAX_LITERAL_DIGITS`` digits before evaluating.
* Numbers: the multiset of literals equals the multiset of given numbers (each used exactly once,
  none missing, none added).
* Value: evaluated exactly with :class:`fractions.Fraction` (``(8 / 3) * 3`` is exactly 8, so
  division is true division with no rounding); it must equal the target. Division by zero is a
  wrong answer.

Scores (TinyZero's ``compute_score``: ``score=1.0`` when correct, ``format_score=0.1`` when an
answer block exists but the equation is wrong or invalid, 0 when there is no answer block):
``correct_score`` (default 1.0) when correct, ``format_score`` (default **0.0**: rlvr keeps format
credit in separate format rewards; the ``countdown`` task sets 0.1 to reproduce TinyZero) when an
answer block is present but wrong, and 0.0 without an answer block. TinyZero reads only the last
line of the completion and checks numbers with a digit regex (so ``-3`` passes as ``3``); rlvr reads
the last answer block anywhere and parses the expression, which is stricter.

Example: numbers [3, 3, 8], target 8: ``(8 / 3) * 3`` is correct (exactly 8); ``8 * 3`` is wrong (a 3
unused); ``8 - 3 - 3`` is wrong (2); ``-3 + 3 + 8`` is refused (unary minus) and wrong.
"""

from __future__ import annotations

import ast
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

from rlvr.errors import DataError
from rlvr.rewards.base import REWARDS, Outcome, RewardBatch, RewardResult
from rlvr.tasks.base import Problem

MAX_EQUATION_CHARS = 256
MAX_LITERAL_DIGITS = 12
_ALLOWED_CHARS = frozenset("0123456789+-*/() \t\n\r")
_BINARY_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

Verdict = Literal["correct", "invalid", "wrong_numbers", "division_by_zero", "wrong_value"]


class EquationError(ValueError):
    """An equation is not a valid Countdown expression (refused before or during evaluation)."""


def last_answer_block(text: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` block of ``text``; None if there is none.

    An ``<answer>`` opened after the last ``</answer>`` is a cut-off final answer: None, as in
    :mod:`rlvr.rewards.extraction`, rather than credit for an earlier block.
    """
    end = text.rfind("</answer>")
    if end < 0 or text.rfind("<answer>") > end:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    return text[start + len("<answer>") : end]


def parse_equation(equation: str, *, max_chars: int = MAX_EQUATION_CHARS) -> ast.expr:
    """The syntax tree of ``equation`` if it is a valid Countdown expression; EquationError otherwise.

    Never evaluates anything: characters are checked first, then every node of the tree.
    """
    text = equation.strip()
    if not text:
        raise EquationError("empty equation")
    if len(text) > max_chars:
        raise EquationError(f"equation longer than {max_chars} characters")
    bad = set(text) - _ALLOWED_CHARS
    if bad:
        raise EquationError(f"characters not allowed: {''.join(sorted(bad))!r}")
    try:
        tree = ast.parse(text, mode="eval").body
        _check_node(tree)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise EquationError(f"not an expression: {exc.__class__.__name__}") from None
    return tree


def _check_node(node: ast.AST) -> None:
    if isinstance(node, ast.BinOp):
        if type(node.op) not in _BINARY_OPS:
            raise EquationError(f"operator {type(node.op).__name__} not allowed")
        _check_node(node.left)
        _check_node(node.right)
    elif isinstance(node, ast.Constant):
        if type(node.value) is not int or node.value < 0:
            raise EquationError(f"literal {node.value!r} is not a non-negative integer")
        if len(str(node.value)) > MAX_LITERAL_DIGITS:
            raise EquationError(f"literal longer than {MAX_LITERAL_DIGITS} digits")
    else:
        raise EquationError(f"{type(node).__name__} not allowed")


def equation_literals(tree: ast.expr) -> list[int]:
    """The integer literals of a parsed equation, left to right."""
    if isinstance(tree, ast.BinOp):
        return equation_literals(tree.left) + equation_literals(tree.right)
    assert isinstance(tree, ast.Constant)
    return [tree.value]


def evaluate_equation(tree: ast.expr) -> Fraction:
    """The exact value of a parsed equation; ZeroDivisionError on division by zero."""
    if isinstance(tree, ast.Constant):
        return Fraction(tree.value)
    assert isinstance(tree, ast.BinOp)
    left, right = evaluate_equation(tree.left), evaluate_equation(tree.right)
    op = _BINARY_OPS[type(tree.op)]
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return left / right  # Fraction raises ZeroDivisionError on a zero divisor


def check_equation(
    equation: str, numbers: Sequence[int], target: int, *, max_chars: int = MAX_EQUATION_CHARS
) -> Verdict:
    """Judge one equation; never raises on any input string.

    >>> check_equation("(8 / 3) * 3", [3, 3, 8], 8)
    'correct'
    """
    try:
        tree = parse_equation(equation, max_chars=max_chars)
    except EquationError:
        return "invalid"
    try:
        if Counter(equation_literals(tree)) != Counter(numbers):
            return "wrong_numbers"
        value = evaluate_equation(tree)
    except ZeroDivisionError:
        return "division_by_zero"
    except RecursionError:  # only with a max_chars far above the default
        return "invalid"
    return "correct" if value == target else "wrong_value"


def countdown_gold(problem: Problem) -> tuple[list[int], int]:
    """``(numbers, target)`` from a countdown problem's answer; DataError when malformed."""
    answer = problem.answer
    ok = (
        isinstance(answer, dict)
        and isinstance(answer.get("numbers"), (list, tuple))
        and all(type(n) is int for n in answer["numbers"])
        and type(answer.get("target")) is int
    )
    if not ok:
        raise DataError(
            f"countdown problem {problem.id!r}: answer must be {{'numbers': [int, ...], 'target': int}}, "
            f"got {answer!r}"
        )
    return list(answer["numbers"]), answer["target"]


@REWARDS.register("countdown")
def countdown_reward(
    batch: RewardBatch,
    *,
    correct_score: float = 1.0,
    format_score: float = 0.0,
    max_equation_chars: int = MAX_EQUATION_CHARS,
) -> RewardResult:
    """Score Countdown equations (TinyZero); see the module docstring for the rules.

    value = ``correct_score`` if the equation is correct, ``format_score`` if an answer block is
    present but the equation is wrong or invalid, 0.0 if there is no answer block.
    """
    values: list[float] = []
    correct: list[bool] = []
    outcomes: list[Outcome] = []
    verdicts: Counter[str] = Counter()
    for completion, problem in zip(batch.completions, batch.problems, strict=True):
        numbers, target = countdown_gold(problem)
        equation = last_answer_block(completion)
        if equation is None:
            verdict = "no_answer"
        else:
            verdict = check_equation(equation, numbers, target, max_chars=max_equation_chars)
        verdicts[verdict] += 1
        correct.append(verdict == "correct")
        if verdict == "correct":
            values.append(float(correct_score))
            outcomes.append("correct")
        elif verdict == "no_answer":
            values.append(0.0)
            outcomes.append("no_answer")
        else:
            values.append(float(format_score))
            outcomes.append("wrong")
    n = max(len(values), 1)
    metrics = {
        "accuracy": verdicts["correct"] / n,
        "no_answer_rate": verdicts["no_answer"] / n,
        "invalid_rate": verdicts["invalid"] / n,
        "wrong_numbers_rate": verdicts["wrong_numbers"] / n,
    }
    return RewardResult(values=values, metrics=metrics, correct=correct, outcomes=outcomes)
