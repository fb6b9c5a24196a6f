import pytest

from rlvr.errors import ConfigError, UnknownNameError
from rlvr.rewards.base import RewardBatch
from rlvr.rewards.countdown import check_equation, countdown_reward
from rlvr.tasks.base import TASKS
from rlvr.tasks.countdown import countdown_task, generate_countdown


def key(problem):
    return (tuple(sorted(problem.answer["numbers"])), problem.answer["target"])


def test_same_seed_same_problems_other_seed_other_problems():
    a = generate_countdown(50, seed=1)
    b = generate_countdown(50, seed=1)
    c = generate_countdown(50, seed=2)
    assert a == b
    assert [key(p) for p in a] != [key(p) for p in c]
    # a prefix does not depend on how many are asked for
    assert generate_countdown(20, seed=1) == a[:20]


@pytest.mark.parametrize("num_numbers", [3, 4, (3, 4), 5])
def test_every_problem_is_solvable_by_its_recorded_solution(num_numbers):
    problems = generate_countdown(100, seed=0, num_numbers=num_numbers)
    counts = {num_numbers} if isinstance(num_numbers, int) else set(num_numbers)
    for p in problems:
        numbers, target = p.answer["numbers"], p.answer["target"]
        assert len(numbers) in counts and p.meta["num_numbers"] == len(numbers) == p.meta["difficulty"]
        assert all(1 <= n <= 100 for n in numbers) and 1 <= target <= 100
        assert check_equation(p.meta["solution"], numbers, target) == "correct", p
        assert f"{numbers}" in p.question and f"equals {target}" in p.question


def test_solutions_score_one_through_the_reward():
    problems = generate_countdown(30, seed=3)
    batch = RewardBatch(
        completions=[f"<think>...</think> <answer>{p.meta['solution']}</answer>" for p in problems],
        problems=problems,
    )
    assert countdown_reward(batch).values == [1.0] * 30


def test_problems_are_distinct_and_number_counts_are_balanced():
    problems = generate_countdown(400, seed=0, num_numbers=(3, 4))
    assert len({key(p) for p in problems}) == 400
    threes = sum(p.meta["num_numbers"] == 3 for p in problems)
    assert 150 < threes < 250  # drawn uniformly per problem, not skewed by rejection


def test_ranges_are_respected():
    for p in generate_countdown(100, seed=0, num_numbers=3, min_number=1, max_number=10, max_target=20):
        assert all(1 <= n <= 10 for n in p.answer["numbers"]) and 1 <= p.answer["target"] <= 20


def test_impossible_settings_raise_config_error():
    with pytest.raises(ConfigError, match="could only generate"):
        generate_countdown(10, seed=0, num_numbers=2, max_number=2, max_target=4)
    with pytest.raises(ConfigError, match="num_numbers"):
        generate_countdown(1, seed=0, num_numbers=1)
    with pytest.raises(ConfigError, match="operators"):
        generate_countdown(1, seed=0, operators=("**",))


def test_task_splits_are_disjoint_and_stable():
    task = TASKS.get("countdown")(num_train=300, num_test=50, seed=7)
    assert len(task.train) == 300 and len(task.test) == 50
    assert not {key(p) for p in task.train} & {key(p) for p in task.test}
    assert not {p.id for p in task.train} & {p.id for p in task.test}
    # the test split depends only on seed and num_test
    assert countdown_task(num_train=10, num_test=50, seed=7).test == task.test


def test_task_settings():
    task = countdown_task(num_train=5, num_test=5)
    assert task.name == "countdown" and task.template == "r1_zero"
    assert task.stop_strings == ("</answer>",)
    (spec,) = task.rewards
    assert spec.name == "countdown" and spec.params == {"correct_score": 1.0, "format_score": 0.1}
    assert "<think> </think>" in task.train[0].question and "<answer> </answer>" in task.train[0].question
    with pytest.raises(UnknownNameError):
        countdown_task(num_train=1, num_test=1, template="r1_zeroo")
