"""Built-in environments, the registry and user classes; sandboxed tool faults become observations."""

from __future__ import annotations

import pytest

from rlvr.envs.base import ENVS, Environment, StepResult, env_factory, load_builtin_envs
from rlvr.envs.tool_math import calculate
from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem


class CountDown(Environment):
    """A user environment loaded as module:Class."""

    def __init__(self, start: int = 2) -> None:
        self.left = start

    def reset(self, problem, seed):
        return "go"

    def step(self, action):
        self.left -= 1
        return StepResult("tick", 1.0, self.left == 0, False, {})


def test_registry_names_and_user_classes():
    load_builtin_envs()
    assert {"task", "tool_math", "calculator", "guess_number"} <= set(ENVS.names())
    with pytest.raises(ConfigError, match="did you mean 'calculator'"):
        env_factory("calculater")
    make = env_factory(f"{__name__}:CountDown", {"start": 3})
    env = make()
    assert env.reset(Problem("p", "q", "a"), 0) == "go"
    observation, reward, terminated, truncated, info = env.step("x")
    assert (observation, reward, terminated) == ("tick", 1.0, False)
    with pytest.raises(ConfigError, match="has no parameter 'stat'; did you mean 'start'"):
        env_factory(f"{__name__}:CountDown", {"stat": 3})


def test_guess_number_rewards_few_turns():
    env = env_factory("guess_number", {"max_guesses": 4, "turn_penalty": 0.25})()
    env.reset(Problem("g", "", 5, {"low": 1, "high": 8}), 0)
    assert env.step("4\n")[:3] == ("higher\n", 0.0, False)
    assert env.step("6\n")[:3] == ("lower\n", 0.0, False)
    assert env.step("5\n")[:3] == ("right\n", 0.5, True)
    env.reset(Problem("g", "", 5, {"low": 1, "high": 8}), 0)
    assert env.step("5")[1] == 1.0
    env.reset(Problem("g", "", 5), 0)
    results = [env.step("zz") for _ in range(4)]
    assert [r.truncated for r in results] == [False, False, False, True] and results[
        0
    ].observation == "no number\n"


def test_task_env_is_the_single_turn_task():
    from rlvr.tasks.arithmetic import arithmetic_task

    task = arithmetic_task(num_train=4, num_test=0)
    env = env_factory("task", task=task)()
    problem = task.train[0]
    assert env.reset(problem, 0) == problem.question
    right = env.step(f"<answer>{problem.answer}</answer>")
    assert right.terminated and right.reward > 0 and right.info["correct"]
    assert env.step("<answer>-1</answer>").info["correct"] is False


def test_calculator():
    assert calculate("12*(3+4)") == "84" and calculate("7/2") == "3.5" and calculate("-3+1") == "-2"
    with pytest.raises(ValueError):
        calculate("__import__('os')")
    env = env_factory("calculator", {"max_tool_calls": 1})()
    env.reset(Problem("c", "17+25=", "42"), 0)
    first = env.step("<think>17+25=")
    assert first.observation == "42" and first.info["tool_call"] and not first.truncated
    assert env.step("1/0=").truncated  # a call past the limit ends the episode
    env.reset(Problem("c", "17+25=", "42"), 0)
    assert env.step("1/0=").info["tool_error"]
    assert env.step("</think><answer>42</answer>").reward == 1.0


def test_tool_math_faults_are_observations():
    env = env_factory("tool_math", {"timeout_s": 1.0, "max_output_chars": 100, "max_tool_calls": 8})()
    env.reset(Problem("m", "What is 6*7?", "42"), 0)
    ok = env.step("```python\nprint(6*7)\n```\n```output")
    assert ok.observation == "\n42\n```\n" and not ok.info["tool_error"]
    crash = env.step("```python\nraise ValueError('bad')\n```\n")
    assert crash.info["tool_error"] and "ValueError" in crash.observation and not crash.terminated
    hang = env.step("```python\nwhile True:\n    pass\n```\n")
    assert hang.info["timeout"] and "timeout" in hang.observation
    flood = env.step("```python\nprint('x' * 10**6)\n```\n")
    assert flood.info["tool_error"] and len(flood.observation) < 200 and "cut" in flood.observation
    escape = env.step("```python\nimport os\nos.system('true')\n```\n")
    assert escape.info["tool_error"] and "blocked" in escape.observation
    final = env.step("So the answer is \\boxed{42}.")
    assert final.terminated and final.reward == 1.0 and final.info["correct"]
