from fractions import Fraction

import pytest

from rlvr.errors import DataError
from rlvr.rewards.base import REWARDS, RewardBatch
from rlvr.rewards.countdown import (
    check_equation,
    countdown_reward,
    evaluate_equation,
    last_answer_block,
    parse_equation,
)
from rlvr.tasks.base import Problem


def problem(numbers, target, pid="p"):
    return Problem(id=pid, question="q", answer={"numbers": list(numbers), "target": target})


def score(completions, numbers, target, **params):
    batch = RewardBatch(completions=list(completions), problems=[problem(numbers, target)] * len(completions))
    return countdown_reward(batch, **params)


def test_registered():
    assert REWARDS.get("countdown") is countdown_reward


@pytest.mark.parametrize(
    "equation,numbers,target",
    [
        ("(8 / 3) * 3", [3, 3, 8], 8),  # 8/3 * 3 = 8 exactly (no float rounding)
        ("1 / 3 + 1 / 3 + 1 / 3", [1, 1, 1, 3, 3, 3], 1),  # 1/3 * 3 = 1, 0.333.. in float would be 1.0 too
        ("(95 - 39) + 43", [39, 43, 95], 99),  # 56 + 43 = 99
        ("95-39+43", [95, 43, 39], 99),  # numbers in any order, no spaces
        ("((((95))) - 39) + 43", [39, 43, 95], 99),  # redundant parentheses
        (" 21 + 7 * 6 \n", [6, 7, 21], 63),  # precedence: 21 + 42 = 63
        ("(21 / 84) * 72", [21, 72, 84], 18),  # 1/4 * 72 = 18
    ],
)
def test_correct_equations(equation, numbers, target):
    assert check_equation(equation, numbers, target) == "correct"


def test_fraction_evaluation_is_exact():
    # 1/3 in floating point: (1/3)*3 is 1.0 but (2/3)*3 - 2 != 0 exactly in float; Fraction is exact
    assert evaluate_equation(parse_equation("(2 / 3) * 3 - 2")) == 0
    assert evaluate_equation(parse_equation("7 / 2")) == Fraction(7, 2)
    # a near miss is not rounded to the target: 100/3 = 33.33.. != 33
    assert check_equation("100 / 3", [100, 3], 33) == "wrong_value"


@pytest.mark.parametrize(
    "equation",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "x + 1",  # names
        "abs(3)",  # call
        "(3).real",  # attribute
        "3 ** 2",  # power
        "9**9**9",  # power tower (would hang an eval)
        "8 // 3",  # floor division
        "8 % 3",  # modulo
        "-3 + 8",  # unary minus
        "+3 + 8",  # unary plus
        "3 - -8",  # unary minus inside
        "3.0 + 8",  # float literal
        "1e3",  # float literal
        "0x8 + 3",  # hex literal
        "1_0 + 3",  # digit separator
        "8 + 3 = 11",  # equals sign
        "[8, 3]",  # list
        "8 if 3 else 3",  # conditional
        "lambda: 3",
        "8 × 3",  # non-ASCII operator
        "",  # empty
        "   ",
        "(8 + 3",  # unbalanced
        "8 3",  # missing operator
        "9" * 20 + " + 1",  # huge literal (more than 12 digits)
        "1 + " * 100 + "1",  # too long (401 characters)
        "(" * 150 + "1" + ")" * 150,  # too long and deeply nested
    ],
)
def test_unsafe_or_invalid_equations_are_refused_without_raising(equation):
    assert check_equation(equation, [3, 8], 11) == "invalid"
    result = score([f"<answer>{equation}</answer>"], [3, 8], 11)
    assert result.values == [0.0] and result.correct == [False] and result.outcomes == ["wrong"]


def test_deep_nesting_within_the_length_limit_does_not_raise():
    # 100 nested parentheses (201 chars) hits the parser's nesting limit or parses; never raises
    assert check_equation("(" * 100 + "8" + ")" * 100 + "+3", [3, 8], 11) in {"correct", "invalid"}


@pytest.mark.parametrize("depth", [500, 5000])
def test_very_deep_expressions_never_raise_even_with_a_large_length_limit(depth):
    chain = "1+" * depth + "1"  # a left-deep tree `depth` levels deep
    nested = "(" * depth + "1" + ")" * depth
    assert check_equation(chain, [1] * (depth + 1), depth + 1, max_chars=10**6) in {"correct", "invalid"}
    assert check_equation(nested, [1], 1, max_chars=10**6) in {"correct", "invalid"}


def test_max_equation_chars_is_a_parameter():
    equation = "(95 - 39) + 43"  # 14 characters
    assert check_equation(equation, [39, 43, 95], 99, max_chars=14) == "correct"
    assert check_equation(equation, [39, 43, 95], 99, max_chars=13) == "invalid"
    assert score([f"<answer>{equation}</answer>"], [39, 43, 95], 99, max_equation_chars=13).values == [0.0]


def test_division_by_zero_is_wrong_not_an_error():
    assert check_equation("5 / (3 - 3) + 8", [3, 3, 5, 8], 8) == "division_by_zero"
    result = score(["<answer>5 / (3 - 3) + 8</answer>"], [3, 3, 5, 8], 8)
    assert result.values == [0.0] and result.outcomes == ["wrong"]


@pytest.mark.parametrize(
    "equation",
    [
        "8 + 8 - 5",  # 8 used twice, 3 missing (8+8-5 = 11 equals the target)
        "8 + 3",  # 5 missing (= 11)
        "8 + 3 + 5 - 5",  # 5 used twice (= 11)
        "88 - 77",  # numbers glued together (= 11)
        "8 + 3 + 0",  # an extra 0 (= 11)
    ],
)
def test_multiset_of_numbers_must_match(equation):
    assert check_equation(equation, [8, 3, 5], 11) == "wrong_numbers"


def test_scores_and_outcomes():
    completions = [
        "<think>8+3=11, then 11*5=55</think> <answer>(8 + 3) * 5</answer>",  # correct
        "<answer>(8 + 3) + 5</answer>",  # 16 != 55: wrong
        "<answer>8 ** 3</answer>",  # refused: wrong
        "(8 + 3) * 5",  # no answer block
        "<answer>(8 + 3) * 5",  # unclosed: no answer block
    ]
    result = score(completions, [8, 3, 5], 55)
    assert result.values == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert result.correct == [True, False, False, False, False]
    assert result.outcomes == ["correct", "wrong", "wrong", "no_answer", "no_answer"]
    # TinyZero's scores: 1.0 correct, 0.1 for an answered but wrong equation, 0 without an answer
    tiny = score(completions, [8, 3, 5], 55, format_score=0.1)
    assert tiny.values == [1.0, 0.1, 0.1, 0.0, 0.0]
    assert result.metrics["accuracy"] == pytest.approx(1 / 5)
    assert result.metrics["no_answer_rate"] == pytest.approx(2 / 5)
    assert result.metrics["invalid_rate"] == pytest.approx(1 / 5)


def test_last_answer_block_is_read():
    completion = "<answer>8 + 3 + 5</answer> no wait <answer>(8 + 3) * 5</answer>"
    assert score([completion], [8, 3, 5], 55).correct == [True]
    assert score(["<answer>(8 + 3) * 5</answer> <answer>8 + 3 + 5</answer>"], [8, 3, 5], 55).correct == [
        False
    ]
    assert last_answer_block("<answer>a<answer>b</answer>") == "b"
    assert last_answer_block("</answer><answer>") is None
    assert last_answer_block("no tags") is None
    # a final answer block cut off (opened after the last close) is no answer, not the earlier one
    assert last_answer_block("<answer>a</answer> <answer>b") is None


def test_malformed_gold_raises_data_error_naming_the_problem():
    batch = RewardBatch(completions=["<answer>1</answer>"], problems=[Problem("bad-1", "q", {"target": 3})])
    with pytest.raises(DataError, match="bad-1"):
        countdown_reward(batch)
