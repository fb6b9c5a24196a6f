import pytest

from rlvr.errors import DataError
from rlvr.rewards.arithmetic import arithmetic_reward, parse_integer_answer
from rlvr.rewards.base import REWARDS, RewardBatch
from rlvr.tasks.base import Problem


def score(completions, gold="42"):
    problems = [Problem(id=str(i), question="17+25=", answer=gold) for i in range(len(completions))]
    return arithmetic_reward(RewardBatch(completions=list(completions), problems=problems))


def test_registered():
    assert REWARDS.get("arithmetic") is arithmetic_reward


@pytest.mark.parametrize(
    "completion,outcome",
    [
        ("<answer>42</answer>", "correct"),
        ("<answer> 42 \n</answer>", "correct"),  # surrounding whitespace ignored
        ("<answer>042</answer>", "correct"),  # leading zeros: compared by value
        ("<think>17+25: 7+5=12, carry 1</think><answer>42</answer>", "correct"),
        ("<answer>41</answer> <answer>42</answer>", "correct"),  # the last block counts
        ("<answer>42</answer> <answer>41</answer>", "wrong"),
        ("<answer>41</answer>", "wrong"),
        ("<answer>4 2</answer>", "wrong"),  # inner space: not an integer
        ("<answer>42.0</answer>", "wrong"),
        ("<answer>+42</answer>", "wrong"),
        ("<answer>-42</answer>", "wrong"),
        ("<answer>forty-two</answer>", "wrong"),
        ("<answer></answer>", "wrong"),
        ("<answer>" + "4" * 5000 + "</answer>", "wrong"),  # too long to be an answer, no crash
        ("42", "no_answer"),
        ("<answer>42", "no_answer"),  # unclosed
        ("", "no_answer"),
    ],
)
def test_hand_cases(completion, outcome):
    result = score([completion])
    assert result.outcomes == [outcome]
    assert result.correct == [outcome == "correct"]
    assert result.values == [1.0 if outcome == "correct" else 0.0]


def test_negative_gold_and_metrics():
    result = score(["<answer>-7</answer>", "<answer>7</answer>", "7"], gold="-7")
    assert result.values == [1.0, 0.0, 0.0]
    assert result.metrics == {"accuracy": pytest.approx(1 / 3), "no_answer_rate": pytest.approx(1 / 3)}


def test_parse_integer_answer():
    assert parse_integer_answer(" 007 ") == 7
    assert parse_integer_answer("-0") == 0
    assert parse_integer_answer("1e3") is None


def test_gold_that_is_not_an_integer_is_a_data_error():
    with pytest.raises(DataError, match="'p-9'"):
        arithmetic_reward(RewardBatch(["<answer>1</answer>"], [Problem("p-9", "q", "4.5")]))
