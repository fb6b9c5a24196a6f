"""The ``math`` and ``gsm8k`` tasks: competition math and grade-school word problems.

``math`` trains on the MATH train split shipped with rlvr (7474 problems with extracted answers,
filtered by level; Level 3-5 is the set simpleRL-Zoo and Dr. GRPO train on) and evaluates on
MATH-500. ``gsm8k`` trains on GSM8K train (7473) and evaluates on GSM8K test (1319). Both accept
any local file or hub dataset with a field mapping instead. Every gold answer is checked by the
math grader at load time: one it cannot parse is a data error naming file and line, never a free
reward.
"""

from __future__ import annotations

import random
from pathlib import Path

from rlvr.tasks.base import TASKS, Problem, RewardSpec, Task
from rlvr.tasks.benchmarks import DATA_DIR, load_benchmark
from rlvr.tasks.loading import FieldMap, LoadResult, load_any
from rlvr.tasks.templates import TEMPLATES, stop_strings_for

MATH_TRAIN = DATA_DIR / "train" / "math_train.json"
GSM8K_TRAIN = DATA_DIR / "train" / "gsm8k_train.jsonl"


def _subsample(problems: list[Problem], limit: int | None, seed: int) -> list[Problem]:
    if limit is None or limit >= len(problems):
        return problems
    return random.Random(seed).sample(problems, limit)


def _math_rewards(template: str, strict: bool, format_weight: float) -> tuple[RewardSpec, ...]:
    slot = TEMPLATES.get(template).answer_slot
    specs = [RewardSpec("math", 1.0, {"strict": strict, "answer_slot": slot})]
    if format_weight:
        specs.append(
            RewardSpec("format", format_weight, {"think_opened": TEMPLATES.get(template).think_opened})
        )
    return tuple(specs)


def _level(problem: Problem, level_field: str) -> int | None:
    raw = problem.meta.get(level_field)
    if raw is None:
        return None
    if isinstance(raw, str):  # "Level 3"
        digits = "".join(ch for ch in raw if ch.isdigit())
        return int(digits) if digits else None
    return int(raw)


def _load(
    source: str | Path, fields: FieldMap, skip_bad_rows: bool, levels=None, level_field: str | None = None
) -> LoadResult:
    from rlvr.rewards.math import check_gold

    keep = None
    if levels and level_field:
        wanted = set(levels)
        keep = lambda p: _level(p, level_field) in wanted  # noqa: E731
    return load_any(
        source,
        fields,
        skip_bad_rows=skip_bad_rows,
        check_gold=check_gold,
        keep=keep,
        skip_setting="task.params.skip_bad_rows",
    )


@TASKS.register("math")
def math_task(
    *,
    train_file: str | None = None,
    question_field: str = "problem",
    answer_field: str = "answer",
    answer_format: str = "plain",
    levels: tuple[int, ...] | None = (3, 4, 5),
    level_field: str | None = None,
    test_benchmark: str = "math500",
    template: str = "r1_zero",
    strict: bool = False,
    format_weight: float = 0.0,
    num_train: int | None = None,
    num_test: int | None = None,
    skip_bad_rows: bool | None = None,
    seed: int = 0,
) -> Task:
    """MATH (Hendrycks et al. 2021) with the R1-Zero template by default.

    With no ``train_file`` the shipped MATH train split is used; its four rows without an answer
    are skipped (``skip_bad_rows`` defaults to True for that file only). ``levels`` filters by MATH
    level: the shipped file's ``difficulty``, or ``level_field`` of a user's file (no filter without it).
    """
    if train_file is None:
        source, fields = MATH_TRAIN, FieldMap("problem", "answer", "plain", meta=("difficulty", "type"))
        level_field = "difficulty"
        skip = True if skip_bad_rows is None else skip_bad_rows
    else:
        meta = (level_field,) if level_field else ()
        source, fields = train_file, FieldMap(question_field, answer_field, answer_format, meta=meta)  # type: ignore[arg-type]
        skip = bool(skip_bad_rows)
    from rlvr.rewards.math import check_gold

    train = _load(source, fields, skip, levels, level_field)
    test = load_benchmark(test_benchmark, check_gold=check_gold)
    return Task(
        name="math",
        train=_subsample(train.problems, num_train, seed),
        test=_subsample(test.problems, num_test, seed),
        template=template,
        rewards=_math_rewards(template, strict, format_weight),
        stop_strings=stop_strings_for(template),
        skipped_rows=tuple(train.skipped),
    )


@TASKS.register("gsm8k")
def gsm8k_task(
    *,
    train_file: str | None = None,
    question_field: str = "question",
    answer_field: str = "answer",
    answer_format: str = "gsm8k",
    template: str = "r1_zero",
    strict: bool = False,
    format_weight: float = 0.0,
    num_train: int | None = None,
    num_test: int | None = None,
    skip_bad_rows: bool = False,
    seed: int = 0,
) -> Task:
    """GSM8K (Cobbe et al. 2021, arXiv 2110.14168); the gold is the number after ``####``."""
    source = GSM8K_TRAIN if train_file is None else train_file
    train = _load(source, FieldMap(question_field, answer_field, answer_format), skip_bad_rows)  # type: ignore[arg-type]
    from rlvr.rewards.math import check_gold

    test = load_benchmark("gsm8k", check_gold=check_gold)
    return Task(
        name="gsm8k",
        train=_subsample(train.problems, num_train, seed),
        test=_subsample(test.problems, num_test, seed),
        template=template,
        rewards=_math_rewards(template, strict, format_weight),
        stop_strings=stop_strings_for(template),
        skipped_rows=tuple(train.skipped),
    )
