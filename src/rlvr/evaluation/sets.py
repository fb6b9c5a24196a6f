"""What one evaluation runs on: an :class:`EvalSet` is problems, a prompt template, a grader.

A benchmark entry names one of three things:

* a shipped benchmark (``math500``, ``math``, ``gsm8k``, ``aime24``, ``amc23``, ``minerva_math``,
  ``olympiadbench``; provenance in ``rlvr/data/benchmarks/README.md``), graded by the ``math``
  reward and broken down by the metadata its file has (MATH level and subject);
* a local ``.jsonl`` / ``.json`` / ``.parquet`` file, read with a field mapping, graded by ``math``;
* ``task``: the held-out split of a training task, with that task's own template and rewards (how
  a run of ``rlvr train`` on countdown or arithmetic is evaluated).

Math grading for evaluation reads the final answer wherever it is (answer tag, last ``\\boxed{}``,
"the answer is"), as the papers' evaluators do, and by default also grades completions cut at the
length limit (those rarely hold an answer; the truncation rate is reported beside the accuracy).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem, RewardSpec, Task
from rlvr.tasks.loading import FieldMap
from rlvr.tasks.templates import stop_strings_for

Equivalence = Literal["math", "exact"]


@dataclass(frozen=True)
class EvalSet:
    name: str
    problems: list[Problem]
    template: str
    rewards: tuple[RewardSpec, ...]
    stop_strings: tuple[str, ...] = ()
    equivalence: Equivalence = "exact"
    """How answers are grouped for majority voting: through the math grader, or identical text."""
    breakdown: tuple[str, ...] = ()
    """Problem metadata fields the results are broken down by (level, subject, ...)."""
    skipped: tuple[str, ...] = ()
    """Rows of the benchmark file left out, one message each (file, line, why)."""


@dataclass(frozen=True)
class FileFields:
    """How the rows of a local benchmark file map to problems (see :class:`FieldMap`)."""

    question: str = "question"
    answer: str = "answer"
    answer_format: str = "plain"
    id: str | None = None
    meta: tuple[str, ...] = ()


def math_rewards(*, grade_truncated: bool, timeout_s: float) -> tuple[RewardSpec, ...]:
    return (RewardSpec("math", params={"grade_truncated": grade_truncated, "timeout_s": timeout_s}),)


def _subset(problems: list[Problem], num_problems: int | None) -> list[Problem]:
    return problems[:num_problems] if num_problems else problems


def benchmark_set(
    name: str,
    template: str,
    *,
    num_problems: int | None = None,
    grade_truncated: bool = True,
    timeout_s: float = 5.0,
) -> EvalSet:
    """A shipped benchmark (rows the grader cannot use are skipped, as loading reports)."""
    from rlvr.rewards.math import check_gold
    from rlvr.tasks.benchmarks import BENCHMARKS, load_benchmark

    spec = BENCHMARKS.get(name)
    loaded = load_benchmark(name, check_gold=check_gold, skip_bad_rows=True)
    return EvalSet(
        name=name,
        problems=_subset(loaded.problems, num_problems),
        template=template,
        rewards=math_rewards(grade_truncated=grade_truncated, timeout_s=timeout_s),
        stop_strings=stop_strings_for(template),
        equivalence="math",
        breakdown=spec.fields.meta,
        skipped=tuple(loaded.skipped),
    )


def file_set(
    path: str | Path,
    template: str,
    fields: FileFields,
    *,
    num_problems: int | None = None,
    grade_truncated: bool = True,
    timeout_s: float = 5.0,
    skip_bad_rows: bool = False,
    skip_setting: str = "skip_bad_rows",
) -> EvalSet:
    """A local benchmark file; a row without a usable question or gold answer is an error naming it
    and ``skip_setting``, the setting that skips such rows (with ``skip_bad_rows``, they are left out
    and listed in ``EvalSet.skipped``)."""
    from rlvr.rewards.math import check_gold
    from rlvr.tasks.loading import load_problems

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"benchmark file {path} does not exist")
    field_map = FieldMap(fields.question, fields.answer, fields.answer_format, id=fields.id, meta=fields.meta)  # type: ignore[arg-type]
    loaded = load_problems(
        path, field_map, check_gold=check_gold, skip_bad_rows=skip_bad_rows, skip_setting=skip_setting
    )
    return EvalSet(
        name=path.stem,
        problems=_subset(loaded.problems, num_problems),
        template=template,
        rewards=math_rewards(grade_truncated=grade_truncated, timeout_s=timeout_s),
        stop_strings=stop_strings_for(template),
        equivalence="math",
        breakdown=fields.meta,
        skipped=tuple(loaded.skipped),
    )


def task_set(task: Task, *, template: str | None = None, num_problems: int | None = None) -> EvalSet:
    """The held-out split of a training task, graded by the task's own rewards."""
    if not task.test:
        raise ConfigError(f"task '{task.name}' has no held-out problems to evaluate on")
    template = template or task.template
    meta = sorted({k for p in task.test for k in p.meta if k != "source"})
    return EvalSet(
        name=task.name,
        problems=_subset(task.test, num_problems),
        template=template,
        rewards=task.rewards,
        stop_strings=task.stop_strings if template == task.template else stop_strings_for(template),
        equivalence="math" if any(r.name == "math" for r in task.rewards) else "exact",
        breakdown=tuple(meta),
    )


def with_template(eval_set: EvalSet, template: str) -> EvalSet:
    """A shipped benchmark or file set presented with ``template`` (and its stop strings) instead."""
    return dataclasses.replace(eval_set, template=template, stop_strings=stop_strings_for(template))


def is_benchmark_file(entry: str) -> bool:
    return Path(entry).suffix.lower() in (".jsonl", ".json", ".parquet")


def check_benchmark_name(name: str, key: str = "benchmarks") -> None:
    """ConfigError naming ``key`` unless ``name`` is a shipped benchmark, 'task' or a data file."""
    from rlvr.registry import nearest_name_hint
    from rlvr.tasks.benchmarks import BENCHMARKS

    valid = [*BENCHMARKS.names(), "task"]
    if name not in valid and not is_benchmark_file(name):
        raise ConfigError(
            f"setting '{key}': unknown benchmark '{name}'{nearest_name_hint(name, valid)} "
            f"(valid: {', '.join(valid)}, or a .jsonl/.json/.parquet file)"
        )


def resolve_set(
    name: str,
    template: str,
    *,
    task: Task | None = None,
    task_template: str | None = None,
    fields: FileFields = FileFields(),
    num_problems: int | None = None,
    grade_truncated: bool = True,
    timeout_s: float = 5.0,
    skip_bad_rows: bool = False,
    skip_setting: str = "skip_bad_rows",
) -> EvalSet:
    """The set a benchmark entry names (module docstring). ``task`` is the training task 'task'
    evaluates, with ``task_template`` overriding its template; other entries use ``template``."""
    check_benchmark_name(name)
    grading = {"grade_truncated": grade_truncated, "timeout_s": timeout_s}
    if name == "task":
        if task is None:
            raise ConfigError(
                "benchmark 'task' (a training task's held-out split) needs a run directory as the model "
                "or the setting 'train_config'"
            )
        return task_set(task, template=task_template, num_problems=num_problems)
    if is_benchmark_file(name):
        return file_set(
            name,
            template,
            fields,
            num_problems=num_problems,
            skip_bad_rows=skip_bad_rows,
            skip_setting=skip_setting,
            **grading,
        )
    return benchmark_set(name, template, num_problems=num_problems, **grading)
