"""The ``code`` task: the bundled problems load, and each reference solution passes its own tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlvr.errors import DataError, UnknownNameError
from rlvr.rewards.base import RewardBatch
from rlvr.rewards.code import code_reward
from rlvr.rewards.sandbox import SandboxConfig, SandboxJob, run_programs
from rlvr.tasks.base import TASKS
from rlvr.tasks.code import bundled_code_files, code_task, load_code_problems

ROW = {
    "id": "double",
    "difficulty": "easy",
    "split": "train",
    "description": "Double a number.",
    "signature": "def double(x: int) -> int:",
    "entry_point": "double",
    "tests": ["assert double(2) == 4"],
    "reference_solution": "def double(x):\n    return 2 * x\n",
}


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def task():
    return TASKS.get("code")()


def test_bundled_task_splits_and_rewards(task):
    assert (len(task.train), len(task.test)) == (23, 7)
    ids = [p.id for p in task.train + task.test]
    assert len(set(ids)) == 30
    assert {p.meta["difficulty"] for p in task.train + task.test} == {"easy", "medium", "hard"}
    assert task.template == "r1_zero" and task.stop_strings == ("</answer>",)
    assert [spec.name for spec in task.rewards] == ["code"]
    assert task.rewards[0].params["partial_credit"] is False
    for problem in task.train + task.test:
        assert problem.meta["source"].startswith(str(bundled_code_files()[0]))
        assert problem.answer["entry_point"] in problem.question
        assert len(problem.answer["tests"]) >= 5


def test_question_asks_for_a_python_block(task):
    question = task.train[0].question
    assert "```python\ndef count_vowels(text: str) -> int:\n```" in question
    assert "single ```python code block inside <answer> </answer> tags" in question
    chat = code_task(template="chat")
    assert "<answer>" not in chat.train[0].question and chat.stop_strings == ()


def test_every_reference_solution_passes_its_tests(task):
    problems = task.train + task.test
    jobs = [
        SandboxJob(p.meta["reference_solution"], tuple(p.answer["tests"]), p.answer["entry_point"])
        for p in problems
    ]
    results = run_programs(jobs, SandboxConfig(timeout_s=20))
    failures = {
        p.id: (r.status, r.detail) for p, r in zip(problems, results, strict=True) if r.status != "ok"
    }
    assert failures == {}


def test_a_constant_function_fails_every_problem(task):
    """Each problem's tests can fail: a function that ignores its input passes none of the suites."""
    problems = task.train + task.test
    jobs = [
        SandboxJob(
            f"def {p.answer['entry_point']}(*args, **kwargs):\n    return None\n", tuple(p.answer["tests"])
        )
        for p in problems
    ]
    results = run_programs(jobs, SandboxConfig(timeout_s=20))
    assert [p.id for p, r in zip(problems, results, strict=True) if r.status == "ok"] == []


def test_reference_solutions_score_one_through_the_reward(task):
    problems = task.test[:3]
    completions = [
        f"<think>I know this one.</think> <answer>\n```python\n{p.meta['reference_solution']}```\n</answer>"
        for p in problems
    ]
    wrong = "<think>guess</think> <answer>\n```python\ndef nothing():\n    pass\n```\n</answer>"
    result = code_reward(RewardBatch(completions=[*completions, wrong], problems=[*problems, problems[0]]))
    assert result.values == [1.0, 1.0, 1.0, 0.0]


def test_user_files_and_duplicate_ids(tmp_path):
    first = write_rows(tmp_path / "a.jsonl", [ROW, {**ROW, "id": "double-test", "split": "test"}])
    task = code_task(files=[str(first)], partial_credit=True, timeout_s=2.0, max_workers=2)
    assert [p.id for p in task.train] == ["double"] and [p.id for p in task.test] == ["double-test"]
    assert task.rewards[0].params == {
        "partial_credit": True,
        "timeout_s": 2.0,
        "memory_mb": 1024,
        "max_workers": 2,
    }
    second = write_rows(tmp_path / "b.jsonl", [ROW])
    with pytest.raises(DataError, match=r"b\.jsonl:1: id 'double' already used at .*a\.jsonl:1"):
        code_task(files=[str(first), str(second)])


def test_format_weight_adds_the_format_reward():
    task = code_task(format_weight=0.1)
    assert [(s.name, s.weight) for s in task.rewards] == [("code", 1.0), ("format", 0.1)]
    assert task.rewards[1].params == {"think_opened": True}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tests": None}, "field 'tests' must be a non-empty list"),
        ({"tests": []}, "field 'tests' must be a non-empty list"),
        ({"tests": ["assert double(2) =="]}, r"field 'tests\[0\]' is not valid Python"),
        ({"entry_point": "triple"}, "entry_point' is 'triple' but the signature defines 'double'"),
        ({"signature": "x = 1"}, "one 'def name"),
        ({"split": "dev"}, "field 'split' must be 'train' or 'test'"),
        ({"reference_solution": "def other(x):\n    return x\n"}, "does not define 'double'"),
        ({"description": ""}, "field 'description' must be a non-empty string"),
        ({"solution": "x"}, "unknown field 'solution'"),
    ],
)
def test_bad_rows_name_file_line_and_field(tmp_path, change, message):
    path = write_rows(tmp_path / "bad.jsonl", [ROW, {**ROW, **change}])
    with pytest.raises(DataError, match=message) as err:
        load_code_problems(path)
    assert f"{path}:2" in str(err.value)


def test_missing_field_bad_json_and_missing_file(tmp_path):
    row = dict(ROW)
    del row["signature"]
    with pytest.raises(DataError, match=r"missing\.jsonl:1: field 'signature' is missing"):
        load_code_problems(write_rows(tmp_path / "missing.jsonl", [row]))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl:1: not valid JSON"):
        load_code_problems(broken)
    with pytest.raises(DataError, match="no such file"):
        load_code_problems(tmp_path / "absent.jsonl")


def test_unknown_template_is_refused():
    with pytest.raises(UnknownNameError, match="r1_zero"):
        code_task(template="r1-zero")
