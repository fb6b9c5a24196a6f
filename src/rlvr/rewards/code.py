"""The ``code`` verifier: run the program in a completion against the problem's unit tests.

DeepSeek-R1 (arXiv 2501.12948, sec. 2.2.2) scores code with a rule-based accuracy reward: the
program is run on predefined test cases. Here the value is

    value = 1.0 if every test passes else 0.0                      (default)
    value = passed / total                                         (``partial_credit=True``)

and 0.0 in both modes when no program is found, or when the program attempted an operation the
sandbox forbids (a socket, a subprocess, a write outside its directory), even if it caught the
error and went on. Example: 3 of 4 tests pass: 0.0 by default, 0.75 with partial credit.
All-or-nothing is the safer default: partial credit rewards programs that special-case easy tests.

Where the program is read from, in this order (the first that applies wins):

1. the last ``<answer>`` block (up to ``</answer>``, or to the end when the stop string was cut off):
   its last fenced code block labelled ``python``, ``py``, ``python3`` or unlabelled, else the whole
   block's text (a bare function inside ``<answer>``);
2. without an ``<answer>`` block: the last such fenced block anywhere in the completion (so drafts
   in ``<think>`` are used only when nothing else is given);
3. otherwise no program: outcome ``no_answer``. An unclosed fence (a truncated completion) does not
   count.

A problem's ``answer`` is ``{"tests": [str, ...], "entry_point": "name"}`` (or just the list of
tests); each test is Python source run after the program, usually ``assert f(...) == ...``. Programs
run in :mod:`rlvr.rewards.sandbox`; identical programs for the same problem (common within a
group) run once.

A run that times out is run once more with the longer limit ``retry_timeout_s`` (default twice
``timeout_s``), after the batch's other programs: on a loaded machine a correct program can overrun
its limit. One that times out again has the outcome ``timeout``: scored like a wrong answer (0.0, or
the tests it passed with partial credit), never correct, and counted apart.

Metrics (fractions of the completions, over all ranks): ``pass_rate`` (mean fraction of tests
passed), ``timeouts`` (timed out twice), ``retried`` (run a second time), ``memory``,
``output_limits``, ``errors`` (crashed, failed to load, or stopped before the tests ran),
``blocked`` (attempted a forbidden operation), ``no_code``, ``duration_s`` (mean sandbox wall time
per completion, shared runs counted once per completion), and ``sandbox_runs`` (programs actually
run per completion: below 1 when a group repeats itself).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rlvr.distributed import all_reduce_sum
from rlvr.errors import DataError
from rlvr.rewards.base import REWARDS, Outcome, RewardBatch, RewardResult
from rlvr.rewards.sandbox import SandboxConfig, SandboxJob, SandboxResult, run_programs
from rlvr.tasks.base import Problem

_PYTHON_LABELS = frozenset({"", "python", "py", "python3"})
_FENCE = re.compile(r"```[ \t]*([\w+-]*)[^\n]*\n(.*?)```", re.S)


@dataclass(frozen=True)
class CodeTests:
    """A problem's unit tests and the function the program must define (None: no requirement)."""

    tests: tuple[str, ...]
    entry_point: str | None = None


def python_blocks(text: str) -> list[str]:
    """The contents of the closed fenced code blocks of ``text`` labelled as Python or unlabelled."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _PYTHON_LABELS]


def _answer_block(text: str) -> str | None:
    start = text.rfind("<answer>")
    if start < 0:
        return None
    end = text.find("</answer>", start)
    return text[start + len("<answer>") : end if end >= 0 else len(text)]


def extract_program(completion: str) -> str | None:
    """The program in ``completion`` (see the module docstring for the order), or None.

    >>> extract_program("<think>...</think><answer>```python\\ndef f():\\n    return 1\\n```</answer>")
    'def f():\\n    return 1\\n'
    """
    answer = _answer_block(completion)
    if answer is not None:
        blocks = python_blocks(answer)
        if blocks:
            return blocks[-1] if blocks[-1].strip() else None
        stripped = answer.strip()
        return stripped + "\n" if stripped and "```" not in stripped else None
    blocks = python_blocks(completion)
    return blocks[-1] if blocks and blocks[-1].strip() else None


def code_tests(problem: Problem) -> CodeTests:
    """The unit tests of a code problem; DataError naming the problem when its answer is malformed."""
    where = f"problem {problem.id!r}" + (f" ({problem.meta['source']})" if "source" in problem.meta else "")
    answer = problem.answer
    entry_point = None
    if isinstance(answer, dict):
        if "tests" not in answer:
            raise DataError(f"{where}: answer has no 'tests' (fields: {', '.join(sorted(answer))})")
        entry_point = answer.get("entry_point")
        answer = answer["tests"]
    if isinstance(answer, str) or not isinstance(answer, Sequence) or not answer:
        raise DataError(f"{where}: 'tests' must be a non-empty list of strings of Python code")
    if not all(isinstance(t, str) and t.strip() for t in answer):
        raise DataError(f"{where}: every test must be a non-empty string of Python code")
    if entry_point is not None and (not isinstance(entry_point, str) or not entry_point.isidentifier()):
        raise DataError(f"{where}: 'entry_point' must be a Python identifier, got {entry_point!r}")
    return CodeTests(tuple(answer), entry_point)


def _score(result: SandboxResult | None, partial_credit: bool) -> float:
    if result is None or result.blocked or result.total == 0:
        return 0.0
    if partial_credit:
        return result.passed / result.total
    return 1.0 if result.status == "ok" else 0.0


@REWARDS.register("code")
def code_reward(
    batch: RewardBatch,
    *,
    partial_credit: bool = False,
    timeout_s: float = 5.0,
    retry_timeout_s: float | None = None,
    memory_mb: int = 1024,
    max_workers: int | None = None,
    strict_equality: bool = True,
) -> RewardResult:
    """Run each completion's program against its problem's tests in the sandbox (module docstring).

    ``timeout_s`` and ``memory_mb`` limit each run (wall clock for program and all tests; address
    space); a run that times out is run again with ``retry_timeout_s`` (default ``2 * timeout_s``);
    ``max_workers`` sandboxes run at once (default: one per CPU).
    """
    config = SandboxConfig(timeout_s=timeout_s, memory_mb=memory_mb, strict_equality=strict_equality)
    jobs: list[SandboxJob] = []
    job_index: dict[SandboxJob, int] = {}
    per_completion: list[int | None] = []
    for completion, problem in zip(batch.completions, batch.problems, strict=True):
        tests = code_tests(problem)
        program = extract_program(completion)
        if program is None:
            per_completion.append(None)
            continue
        job = SandboxJob(program, tests.tests, tests.entry_point)
        if job not in job_index:
            job_index[job] = len(jobs)
            jobs.append(job)
        per_completion.append(job_index[job])
    retry = 2.0 * timeout_s if retry_timeout_s is None else retry_timeout_s
    ran = run_programs(jobs, config, max_workers=max_workers, retry_timeout_s=retry) if jobs else []
    results = [None if j is None else ran[j] for j in per_completion]

    values = [_score(r, partial_credit) for r in results]
    correct = [r is not None and r.status == "ok" and not r.blocked for r in results]
    outcomes: list[Outcome] = [_outcome(r, ok) for r, ok in zip(results, correct, strict=True)]
    metrics = _metrics(results, runs=len(jobs))
    return RewardResult(values=values, metrics=metrics, correct=correct, outcomes=outcomes)


def _outcome(result: SandboxResult | None, correct: bool) -> Outcome:
    if result is None:
        return "no_answer"
    if correct:
        return "correct"
    return "timeout" if result.status == "timeout" else "wrong"


def _metrics(results: list[SandboxResult | None], runs: int) -> dict[str, float]:
    """Fractions of completions (and the mean sandbox time), summed over ranks."""
    columns = {
        "pass_rate": [r.passed / r.total if r is not None and r.total else 0.0 for r in results],
        "timeouts": [r is not None and r.status == "timeout" for r in results],
        "retried": [r is not None and r.attempts > 1 for r in results],
        "memory": [r is not None and r.status == "memory" for r in results],
        "output_limits": [r is not None and r.status == "output_limit" for r in results],
        "errors": [r is not None and r.status == "error" for r in results],
        "blocked": [r is not None and bool(r.blocked) for r in results],
        "no_code": [r is None for r in results],
        "duration_s": [r.duration_s if r is not None else 0.0 for r in results],
    }
    sums = {key: float(sum(column)) for key, column in columns.items()}
    sums["sandbox_runs"] = float(runs)
    reduced = all_reduce_sum(torch.tensor([*sums.values(), float(len(results))], dtype=torch.float64))
    count = reduced[-1].item()
    if count == 0:
        return {}
    return {key: reduced[i].item() / count for i, key in enumerate(sums)}


__all__ = ["CodeTests", "code_reward", "code_tests", "extract_program", "python_blocks"]
