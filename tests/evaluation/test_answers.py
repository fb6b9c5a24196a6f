import pytest

from rlvr.evaluation.answers import exact_answer_classes, math_answer_classes
from rlvr.rewards.math import new_math_pool


@pytest.fixture(scope="module")
def pool():
    with new_math_pool(num_workers=1) as p:
        yield p


def test_answers_equal_up_to_notation_are_one_class(pool):
    answers = ["\\frac12", "0.5", "\\frac{1}{2}", "1/3", None, " 0.5 "]
    (classes,) = math_answer_classes([answers], pool=pool)
    assert classes[0] == classes[1] == classes[2] == classes[5]
    assert classes[3] != classes[0]
    assert classes[4] is None


def test_symbolic_equivalence_goes_through_math_verify(pool):
    (classes,) = math_answer_classes([["x+1", "1+x", "x+2", "\\sqrt{4}", "2"]], pool=pool)
    assert classes[0] == classes[1] != classes[2]
    assert classes[3] == classes[4]


def test_problems_are_grouped_separately(pool):
    out = math_answer_classes([["3", "3.0"], ["3", "4"], []], pool=pool)
    assert out[0][0] == out[0][1]
    assert out[1][0] != out[1][1]
    assert out[2] == []


def test_exact_classes_compare_stripped_text():
    assert exact_answer_classes(["12", " 12", "13", None]) == [0, 0, 1, None]
