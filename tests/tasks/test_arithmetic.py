import pytest

from rlvr.errors import ConfigError
from rlvr.rewards.arithmetic import arithmetic_reward
from rlvr.rewards.base import RewardBatch
from rlvr.tasks.arithmetic import arithmetic_task, generate_arithmetic, num_distinct_problems
from rlvr.tasks.base import TASKS


def test_same_seed_same_problems():
    a = generate_arithmetic(100, seed=5, digits=2, ops=("+", "-", "*"))
    assert a == generate_arithmetic(100, seed=5, digits=2, ops=("+", "-", "*"))
    assert [p.question for p in a] != [
        p.question for p in generate_arithmetic(100, seed=6, digits=2, ops=("+", "-", "*"))
    ]
    assert generate_arithmetic(30, seed=5, digits=2, ops=("+", "-", "*")) == a[:30]


@pytest.mark.parametrize("digits", [1, 2, 3, (1, 3)])
def test_answers_are_right_and_operands_have_the_asked_length(digits):
    allowed = {digits} if isinstance(digits, int) else set(digits)
    for p in generate_arithmetic(200, seed=0, digits=digits, ops=("+", "-", "*")):
        op = p.meta["operator"]
        a, b = p.question.rstrip("=").split(op)
        assert p.question == f"{a}{op}{b}="
        assert len(a) == len(b) == p.meta["digits"] == p.meta["difficulty"] and p.meta["digits"] in allowed
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert p.answer == str(expected)
        assert int(p.answer) >= 0  # subtraction puts the larger operand first


def test_hand_examples_of_the_question_format():
    # 1-digit operands include 0; every question is "a<op>b=" and every answer the exact integer
    problems = generate_arithmetic(100, seed=0, digits=1, ops=("+",))  # all 10 * 10 sums
    assert {p.question for p in problems} == {f"{a}+{b}=" for a in range(10) for b in range(10)}
    by_question = {p.question: p.answer for p in problems}
    assert by_question["7+8="] == "15" and by_question["0+0="] == "0"


def test_space_size_and_too_many_problems():
    # 2 digits: 90 operands; "+" 90*90 = 8100 ordered pairs; "-" 90*91/2 = 4095 pairs with a >= b
    assert num_distinct_problems(2, ("+",)) == 8100
    assert num_distinct_problems(2, ("+", "-")) == 8100 + 4095
    assert num_distinct_problems((1, 2), ("*",)) == 100 + 8100
    with pytest.raises(ConfigError, match="only 100 distinct"):
        generate_arithmetic(101, seed=0, digits=1, ops=("+",))
    with pytest.raises(ConfigError, match="ops"):
        generate_arithmetic(1, seed=0, ops=("/",))
    with pytest.raises(ConfigError, match="digits"):
        generate_arithmetic(1, seed=0, digits=0)


def test_task_train_and_test_never_share_a_question():
    # 1-digit problems: 100 + 55 + 100 = 255 in all, so a split of 200 + 55 covers the whole space
    task = TASKS.get("arithmetic")(num_train=200, num_test=55, digits=1, ops=("+", "-", "*"), seed=3)
    train, test = {p.question for p in task.train}, {p.question for p in task.test}
    assert len(train) == 200 and len(test) == 55
    assert not train & test
    assert arithmetic_task(num_train=5, num_test=55, digits=1, ops=("+", "-", "*"), seed=3).test == task.test


def test_task_settings_and_gold_answers_score_one():
    task = arithmetic_task(num_train=20, num_test=5)
    assert task.name == "arithmetic" and task.template == "plain" and task.stop_strings == ("</answer>",)
    assert [s.name for s in task.rewards] == ["arithmetic"]
    assert all(len(p.question) <= 6 for p in task.train)  # "17+25=": short for a tiny model
    batch = RewardBatch(completions=[f"<answer>{p.answer}</answer>" for p in task.train], problems=task.train)
    assert arithmetic_reward(batch).values == [1.0] * 20
