"""The ``code`` verifier: program extraction, scoring, outcomes and metrics (real sandbox runs)."""

from __future__ import annotations

import sys

import pytest

from rlvr.errors import DataError
from rlvr.rewards.base import REWARDS, RewardBatch
from rlvr.rewards.code import code_reward, code_tests, extract_program, python_blocks
from rlvr.rewards.composite import CompositeReward
from rlvr.rewards.sandbox import SandboxError
from rlvr.tasks.base import Problem, RewardSpec

GOOD = "def square(x):\n    return x * x\n"
HALF = "def square(x):\n    return 4\n"  # right for 2 and -2 only
DRAFT = "def square(x):\n    return 0\n"
PROBLEM = Problem(
    id="square",
    question="Square a number.",
    answer={
        "tests": [
            "assert square(2) == 4",
            "assert square(-2) == 4",
            "assert square(3) == 9",
            "assert square(0) == 0",
        ]
    },
)


def fenced(code: str, label: str = "python") -> str:
    return f"```{label}\n{code}```"


def r1(code: str) -> str:
    return f"<think>Multiply x by itself.</think> <answer>\n{fenced(code)}\n</answer>"


# --- extraction -------------------------------------------------------------------------------------


def test_program_comes_from_the_answer_block_before_anything_else():
    completion = f"<think>draft:\n{fenced(DRAFT)}</think><answer>{fenced(GOOD)}</answer>"
    assert extract_program(completion) == GOOD


def test_the_last_python_block_of_the_answer_wins_and_other_languages_are_ignored():
    completion = "<answer>" + fenced("x = 1\n") + fenced(GOOD) + fenced("echo hi\n", "bash") + "</answer>"
    assert extract_program(completion) == GOOD
    text = fenced("a\n", "py") + fenced("b\n", "") + fenced("c\n", "Python3") + fenced("d\n", "text")
    assert python_blocks(text) == ["a\n", "b\n", "c\n"]


def test_a_bare_function_in_the_answer_block_counts():
    assert extract_program(f"<think>x</think><answer>\n{GOOD}</answer>") == GOOD


def test_an_unclosed_answer_block_is_read_to_the_end():
    # generation stopped at the stop string "</answer>", which the engine did not keep
    assert extract_program(f"<think>x</think><answer>{fenced(GOOD)}") == GOOD


def test_without_an_answer_block_the_last_fenced_block_anywhere_counts():
    completion = f"Here is a draft {fenced(DRAFT)} and the final {fenced(GOOD)} done."
    assert extract_program(completion) == GOOD


@pytest.mark.parametrize(
    "completion",
    [
        "no code at all",
        "<answer></answer>",
        "<answer>   </answer>",
        "```python\ndef square(x):\n    return x * x\n",  # an unclosed fence: truncated
        "<answer>```python\ndef square(x):\n    return x * x\n</answer>",
        "```bash\nls\n```",
        "```python\n\n```",
    ],
)
def test_no_program(completion):
    assert extract_program(completion) is None


# --- tests of a problem ---------------------------------------------------------------------------


def test_code_tests_accepts_a_dict_or_a_list():
    assert code_tests(PROBLEM).tests[0] == "assert square(2) == 4"
    listed = code_tests(Problem("p", "q", ["assert f() == 1"]))
    assert listed.tests == ("assert f() == 1",) and listed.entry_point is None
    with_entry = code_tests(Problem("p", "q", {"tests": ["pass"], "entry_point": "f"}))
    assert with_entry.entry_point == "f"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"test": ["pass"]}, "no 'tests'"),
        ({"tests": []}, "non-empty list"),
        ({"tests": "assert f() == 1"}, "non-empty list"),
        ({"tests": ["pass", ""]}, "every test"),
        ({"tests": ["pass"], "entry_point": "not a name"}, "entry_point"),
        ("assert x", "non-empty list"),
    ],
)
def test_malformed_tests_name_the_problem(answer, message):
    with pytest.raises(DataError, match=message) as err:
        code_tests(Problem("bad-one", "q", answer, meta={"source": "data.jsonl:7"}))
    assert "bad-one" in str(err.value) and "data.jsonl:7" in str(err.value)


# --- scoring ---------------------------------------------------------------------------------------


def test_scores_outcomes_and_metrics():
    completions = [
        r1(GOOD),  # all 4 pass
        r1(HALF),  # 2 of 4 pass
        "I do not know.",  # no program
        r1(
            "import socket\ntry:\n    socket.socket()\nexcept OSError:\n    pass\n" + GOOD
        ),  # passes, but blocked
        r1(GOOD),  # the same program as the first: run once
    ]
    batch = RewardBatch(completions=completions, problems=[PROBLEM] * 5)
    result = code_reward(batch)
    assert result.values == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert result.correct == [True, False, False, False, True]
    assert result.outcomes == ["correct", "wrong", "no_answer", "wrong", "correct"]
    m = result.metrics
    assert m["pass_rate"] == pytest.approx((1 + 0.5 + 0 + 1 + 1) / 5)  # 3.5 / 5 = 0.7
    assert m["no_code"] == pytest.approx(1 / 5)
    assert m["blocked"] == pytest.approx(1 / 5) and m["errors"] == pytest.approx(1 / 5)
    assert m["timeouts"] == 0.0 and m["memory"] == 0.0 and m["output_limits"] == 0.0
    assert m["retried"] == 0.0
    assert m["sandbox_runs"] == pytest.approx(3 / 5)  # GOOD, HALF and the socket program
    assert m["duration_s"] > 0


def test_partial_credit_is_the_fraction_of_tests_passed():
    batch = RewardBatch(completions=[r1(GOOD), r1(HALF), "nothing"], problems=[PROBLEM] * 3)
    result = code_reward(batch, partial_credit=True)
    assert result.values == [1.0, 0.5, 0.0]  # 4/4, 2/4, no program
    assert result.correct == [True, False, False]


def test_a_program_that_loops_or_exits_early_scores_zero():
    loops = r1(GOOD + "while True:\n    pass\n")
    exits = r1(GOOD + "import sys\nsys.exit(0)\n")
    allocates = r1("x = bytearray(10 * 2**30)\n" + GOOD)
    batch = RewardBatch(completions=[loops, exits, allocates], problems=[PROBLEM] * 3)
    result = code_reward(batch, timeout_s=1.0, partial_credit=True)
    assert result.values == [0.0, 0.0, 0.0]
    assert result.correct == [False, False, False]
    assert result.outcomes == ["timeout", "wrong", "wrong"]  # the loop timed out twice: 1 s, then 2 s
    assert result.metrics["timeouts"] == pytest.approx(1 / 3)
    assert result.metrics["retried"] == pytest.approx(1 / 3)
    assert result.metrics["memory"] == pytest.approx(1 / 3)
    assert result.metrics["errors"] == pytest.approx(1 / 3)


def test_a_slow_correct_program_is_run_again_before_it_is_scored():
    # 1.5 s of start-up work under a 1 s limit (what load does to a correct program): run again
    # with the retry limit, it passes and is correct, and the second run is counted.
    slow = r1("import time\ntime.sleep(1.5)\n" + GOOD)
    batch = RewardBatch(completions=[slow, r1(GOOD)], problems=[PROBLEM] * 2)
    result = code_reward(batch, timeout_s=1.0, retry_timeout_s=10.0)
    assert result.outcomes == ["correct", "correct"] and result.values == [1.0, 1.0]
    assert result.metrics["retried"] == pytest.approx(1 / 2)
    assert result.metrics["timeouts"] == 0.0


def test_a_sandbox_that_cannot_start_is_an_error_not_zero_rewards(tmp_path, monkeypatch):
    python = tmp_path / "python3"
    python.write_text("#!/bin/sh\necho 'unshare: Operation not permitted' >&2\nexit 1\n")
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))  # the interpreter the sandbox runs
    batch = RewardBatch(completions=[r1(GOOD), r1(HALF)], problems=[PROBLEM] * 2)
    with pytest.raises(SandboxError, match="self-check.*unshare: Operation not permitted"):
        code_reward(batch)


def test_the_entry_point_is_required():
    problem = Problem("p", "q", {"tests": ["assert True"], "entry_point": "square"})
    batch = RewardBatch(
        completions=[r1("def cube(x):\n    return x ** 3\n"), r1(GOOD)], problems=[problem] * 2
    )
    assert code_reward(batch).values == [0.0, 1.0]


def test_registered_and_usable_in_a_composite_reward():
    assert REWARDS.get("code") is code_reward
    reward = CompositeReward(
        [RewardSpec("code", params={"timeout_s": 5.0}), RewardSpec("format", weight=0.5)]
    )
    result = reward(RewardBatch(completions=[r1(GOOD), r1(HALF)], problems=[PROBLEM] * 2))
    assert result.correct == [True, False]
    assert result.values == [1.5, 0.5]  # code 1 or 0, plus 0.5 for the well-formed R1 format
    assert result.metrics["reward/code/pass_rate"] == pytest.approx((1 + 0.5) / 2)


def test_empty_batch():
    result = code_reward(RewardBatch(completions=[], problems=[]))
    assert result.values == [] and result.metrics == {}


def test_bad_problem_data_is_an_error_not_a_zero():
    batch = RewardBatch(completions=[r1(GOOD)], problems=[Problem("p", "q", {"tests": []})])
    with pytest.raises(DataError):
        code_reward(batch)
