"""The ``countdown`` task: reach a target number with a few given numbers and + - * /.

The Countdown game as used for R1-Zero-style training in TinyZero (Pan et al. 2025,
https://github.com/Jiayi-Pan/TinyZero), whose data (``Countdown-Tasks-3to4``) has 3 or 4 numbers per
problem. rlvr generates its own problems from a seed. Every problem is solvable by construction: the
target is the value of a random expression over the drawn numbers, combined pairwise in a random
order with random operators, kept only when it is an integer in ``[min_target, max_target]``. The
expression is kept in ``meta["solution"]``.

Difficulty is the number count (``num_numbers``; more numbers, more combinations to search).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from fractions import Fraction

from rlvr.errors import ConfigError
from rlvr.rewards.countdown import countdown_reward  # noqa: F401  (registers the "countdown" reward)
from rlvr.tasks.base import TASKS, Problem, RewardSpec, Task
from rlvr.tasks.templates import TEMPLATES

OPERATORS = ("+", "-", "*", "/")
_MAX_ATTEMPTS_PER_PROBLEM = 10_000


def countdown_question(numbers: Sequence[int], target: int) -> str:
    """The question text: the R1-Zero style Countdown instruction (TinyZero's wording, paraphrased)."""
    return (
        f"Using the numbers {list(numbers)}, create an equation that equals {target}. "
        "You can use basic arithmetic operations (+, -, *, /) and each number must be used exactly once. "
        "Show your reasoning in <think> </think> tags and return the final equation in <answer> </answer> "
        "tags, for example <answer> (1 + 2) / 3 </answer>."
    )


def _combine(a: Fraction, b: Fraction, op: str) -> Fraction | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def _random_expression(
    rng: random.Random, numbers: Sequence[int], operators: Sequence[str]
) -> tuple[Fraction, str] | None:
    """Combine ``numbers`` pairwise in random order with random operators: (value, expression)."""
    pool = [(Fraction(n), str(n)) for n in numbers]
    while len(pool) > 1:
        i, j = rng.sample(range(len(pool)), 2)
        (va, ea), (vb, eb) = pool[i], pool[j]
        op = rng.choice(operators)
        value = _combine(va, vb, op)
        if value is None:
            return None
        pool = [p for k, p in enumerate(pool) if k not in (i, j)]
        pool.append((value, f"({ea} {op} {eb})"))
    value, expr = pool[0]
    return value, expr[1:-1] if expr.startswith("(") else expr


def generate_countdown(
    n: int,
    *,
    seed: int,
    num_numbers: int | Sequence[int] = (3, 4),
    min_number: int = 1,
    max_number: int = 100,
    min_target: int = 1,
    max_target: int = 100,
    operators: Sequence[str] = OPERATORS,
) -> list[Problem]:
    """``n`` distinct solvable Countdown problems, the same for the same arguments.

    Each problem draws its number count from ``num_numbers``, the numbers uniformly from
    ``[min_number, max_number]``, and builds the target from a random expression over them (see the
    module docstring). Two problems are the same when their number multisets and targets are equal;
    duplicates are skipped, so the list is distinct. ``answer = {"numbers": [...], "target": int}``.
    """
    counts = (num_numbers,) if isinstance(num_numbers, int) else tuple(num_numbers)
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if not counts or any(not isinstance(k, int) or k < 2 for k in counts):
        raise ConfigError(f"num_numbers must be integers >= 2, got {num_numbers!r}")
    if not 0 <= min_number <= max_number:
        raise ConfigError(f"need 0 <= min_number <= max_number, got {min_number}, {max_number}")
    if min_target > max_target:
        raise ConfigError(f"need min_target <= max_target, got {min_target}, {max_target}")
    unknown = [op for op in operators if op not in OPERATORS]
    if unknown or not operators:
        raise ConfigError(f"operators must be a non-empty subset of {OPERATORS}, got {tuple(operators)!r}")

    rng = random.Random(seed)
    problems: list[Problem] = []
    seen: set[tuple[tuple[int, ...], int]] = set()
    while len(problems) < n:
        k = rng.choice(counts)  # drawn once per problem, so the mix of counts follows num_numbers
        for _ in range(_MAX_ATTEMPTS_PER_PROBLEM):
            numbers = [rng.randint(min_number, max_number) for _ in range(k)]
            built = _random_expression(rng, numbers, operators)
            if built is None or built[0].denominator != 1 or not min_target <= built[0] <= max_target:
                continue
            key = (tuple(sorted(numbers)), int(built[0]))
            if key not in seen:
                break
        else:
            raise ConfigError(
                f"could only generate {len(problems)} of {n} distinct countdown problems with "
                f"{k} numbers in [{min_number}, {max_number}] and targets in [{min_target}, {max_target}]"
            )
        seen.add(key)
        target = key[1]
        index = len(problems)
        problems.append(
            Problem(
                id=f"countdown-{seed}-{index}",
                question=countdown_question(numbers, target),
                answer={"numbers": numbers, "target": target},
                meta={
                    "difficulty": k,
                    "num_numbers": k,
                    "solution": built[1],
                    "source": f"generated:countdown(seed={seed}) #{index}",
                },
            )
        )
    return problems


@TASKS.register("countdown")
def countdown_task(
    *,
    num_train: int = 10_000,
    num_test: int = 500,
    num_numbers: int | Sequence[int] = (3, 4),
    min_number: int = 1,
    max_number: int = 100,
    max_target: int = 100,
    template: str = "r1_zero",
    format_score: float = 0.1,
    seed: int = 0,
) -> Task:
    """Countdown with TinyZero's scoring by default (1.0 correct, ``format_score=0.1`` answered but wrong).

    The test split is the first ``num_test`` generated problems and train the next ``num_train``;
    the generator never repeats a problem, so no test problem is in train.
    """
    TEMPLATES.get(template)  # unknown template: error with the valid names
    if num_train < 0 or num_test < 0:
        raise ConfigError(f"num_train and num_test must be >= 0, got {num_train}, {num_test}")
    problems = generate_countdown(
        num_test + num_train,
        seed=seed,
        num_numbers=num_numbers,
        min_number=min_number,
        max_number=max_number,
        max_target=max_target,
    )
    return Task(
        name="countdown",
        train=problems[num_test:],
        test=problems[:num_test],
        template=template,
        rewards=(RewardSpec("countdown", 1.0, {"correct_score": 1.0, "format_score": format_score}),),
        stop_strings=("</answer>",),
    )
