"""The ``code`` task: write a Python function that passes hidden unit tests.

rlvr ships 30 small function-writing problems of its own (``rlvr/data/code/problems.jsonl``, see the
README beside it): string and list manipulation, parsing, dynamic programming and graph search,
labelled easy / medium / hard, each with 5-8 unit tests and a reference solution; 7 of them form
the test split. Users can pass their own JSONL files in the same format.

The question shows the problem, the function signature in a ```python block, and asks for the
complete function in one ```python block (inside ``<answer>`` when the template has an answer
slot). The reward is the ``code`` verifier (:mod:`rlvr.rewards.code`), which runs the program and
the tests in the sandbox.

A row (one JSON object per line)::

    {"id": "running_sum", "difficulty": "easy", "split": "train",
     "description": "Return the running sums ...", "signature": "def running_sum(nums: list[int]) -> list[int]:",
     "entry_point": "running_sum", "tests": ["assert running_sum([1, 2]) == [1, 3]", ...],
     "reference_solution": "def running_sum(nums): ..."}

``split`` ("train" or "test") defaults to "train"; ``difficulty`` and ``reference_solution`` are
optional. Every row is checked at load: the fields' types, that the signature is a ``def`` of the
entry point, and that every test and the reference solution parse. That each reference solution
passes its own tests is checked by the test suite (running them takes a few seconds).
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlvr.errors import ConfigError, DataError
from rlvr.rewards.code import code_reward  # noqa: F401  (registers the "code" reward)
from rlvr.tasks.base import TASKS, Problem, RewardSpec, Task
from rlvr.tasks.loading import read_rows
from rlvr.tasks.templates import TEMPLATES

CODE_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "code"
_REQUIRED = ("id", "description", "signature", "entry_point", "tests")
_OPTIONAL = ("split", "difficulty", "reference_solution")


def code_question(description: str, signature: str, *, answer_tags: bool) -> str:
    """The question text for one problem."""
    where = " inside <answer> </answer> tags" if answer_tags else ""
    return (
        f"{description}\n\nWrite a Python function with this signature:\n\n```python\n{signature}\n```\n\n"
        f"Give the complete function, with any imports it needs, in a single ```python code block{where}. "
        "It will be called directly by unit tests, so it should not read input or print."
    )


def _check_python(source: str, where: str, name: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as e:
        raise DataError(f"{where}: field '{name}' is not valid Python ({e.msg}, line {e.lineno})") from None


def _check_row(row: Any, where: str) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    for name in _REQUIRED:
        if name not in row:
            raise DataError(f"{where}: field '{name}' is missing (fields: {', '.join(sorted(row))})")
    unknown = sorted(set(row) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise DataError(f"{where}: unknown field '{unknown[0]}' (valid: {', '.join(_REQUIRED + _OPTIONAL)})")
    for name in ("id", "description", "signature", "entry_point"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise DataError(f"{where}: field '{name}' must be a non-empty string, got {row[name]!r:.80}")
    tests = row["tests"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise DataError(f"{where}: field 'tests' must be a non-empty list of non-empty strings")
    for i, test in enumerate(tests):
        _check_python(test, where, f"tests[{i}]")
    try:
        header = ast.parse(row["signature"] + "\n    ...").body
    except SyntaxError:
        header = []
    if len(header) != 1 or not isinstance(header[0], ast.FunctionDef):
        raise DataError(
            f"{where}: field 'signature' must be one 'def name(...):' line, got {row['signature']!r:.80}"
        )
    if header[0].name != row["entry_point"]:
        raise DataError(
            f"{where}: field 'entry_point' is {row['entry_point']!r} but the signature defines {header[0].name!r}"
        )
    split = row.get("split", "train")
    if split not in ("train", "test"):
        raise DataError(f"{where}: field 'split' must be 'train' or 'test', got {split!r}")
    reference = row.get("reference_solution")
    if reference is not None:
        if not isinstance(reference, str):
            raise DataError(f"{where}: field 'reference_solution' must be a string")
        defined = {
            n.name for n in _check_python(reference, where, "reference_solution").body if hasattr(n, "name")
        }
        if row["entry_point"] not in defined:
            raise DataError(f"{where}: field 'reference_solution' does not define {row['entry_point']!r}")
    return row


def load_code_problems(path: str | Path, *, answer_tags: bool = True) -> list[Problem]:
    """Every row of a code-problem file (.jsonl, .json or .parquet) as a :class:`Problem`; DataError
    names file and line."""
    path = Path(path)
    problems = []
    for where, raw in read_rows(path):  # bytes that are not UTF-8 or a line that is not JSON: file:line
        row = _check_row(raw, where)
        problems.append(
            Problem(
                id=row["id"],
                question=code_question(row["description"], row["signature"], answer_tags=answer_tags),
                answer={"tests": list(row["tests"]), "entry_point": row["entry_point"]},
                meta={
                    "source": where,
                    "split": row.get("split", "train"),
                    "difficulty": row.get("difficulty"),
                    "reference_solution": row.get("reference_solution"),
                },
            )
        )
    if not problems:
        raise DataError(f"{path}: the file holds no rows")
    return problems


def bundled_code_files() -> list[Path]:
    """The code-problem files that ship with rlvr."""
    return sorted(CODE_DATA_DIR.glob("*.jsonl"))


@TASKS.register("code")
def code_task(
    *,
    files: Sequence[str] | None = None,
    template: str = "r1_zero",
    partial_credit: bool = False,
    timeout_s: float = 5.0,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    format_weight: float = 0.0,
) -> Task:
    """Python function problems scored by running unit tests in the sandbox.

    ``files`` are JSONL files of problems (default: the bundled set); rows go to train or test by
    their ``split`` field, and problem ids must be unique across files. ``partial_credit``,
    ``timeout_s``, ``memory_mb`` and ``max_workers`` are passed to the ``code`` reward;
    ``format_weight`` adds the R1 ``format`` reward with that weight.
    """
    slot = TEMPLATES.get(template).answer_slot
    paths = [Path(f) for f in files] if files is not None else bundled_code_files()
    if not paths:
        raise ConfigError("code task: no problem files given (files is empty)")
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for path in paths:
        for problem in load_code_problems(path, answer_tags=slot == "answer_tag"):
            if problem.id in seen:
                raise DataError(
                    f"{problem.meta['source']}: id {problem.id!r} already used at {seen[problem.id]}"
                )
            seen[problem.id] = problem.meta["source"]
            problems.append(problem)
    params = {"partial_credit": partial_credit, "timeout_s": timeout_s, "memory_mb": memory_mb}
    if max_workers is not None:
        params["max_workers"] = max_workers
    rewards = [RewardSpec("code", 1.0, params)]
    if format_weight:
        rewards.append(
            RewardSpec("format", format_weight, {"think_opened": TEMPLATES.get(template).think_opened})
        )
    return Task(
        name="code",
        train=[p for p in problems if p.meta["split"] == "train"],
        test=[p for p in problems if p.meta["split"] == "test"],
        template=template,
        rewards=tuple(rewards),
        stop_strings=("</answer>",) if slot == "answer_tag" else (),
    )


__all__ = ["CODE_DATA_DIR", "bundled_code_files", "code_question", "code_task", "load_code_problems"]
