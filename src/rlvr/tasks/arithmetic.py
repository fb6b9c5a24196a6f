"""The ``arithmetic`` task: short integer sums, differences and products for tiny models.

Built for the embedded tiny character-level model, which warm-starts and then trains with RL on this
task on a laptop CPU, so the question is as short as possible: ``17+25=``, and the model answers
``<answer>42</answer>``. Difficulty is the operand length (``digits``) and the operators.

Operands have exactly ``digits`` digits (``digits=1``: 0-9; ``digits=2``: 10-99; ...). For ``-``
the larger operand comes first, so results are never negative. Problems are generated from a seed
and never repeat; the test split is generated first and train after it, so they are disjoint.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from rlvr.errors import ConfigError
from rlvr.rewards.arithmetic import arithmetic_reward  # noqa: F401  (registers the "arithmetic" reward)
from rlvr.tasks.base import TASKS, Problem, RewardSpec, Task
from rlvr.tasks.templates import TEMPLATES

OPERATORS = ("+", "-", "*")


def _operand_range(digits: int) -> tuple[int, int]:
    return (0, 9) if digits == 1 else (10 ** (digits - 1), 10**digits - 1)


def num_distinct_problems(digits: int | Sequence[int], ops: Sequence[str]) -> int:
    """How many distinct problems the generator can make with these settings."""
    total = 0
    for d in (digits,) if isinstance(digits, int) else digits:
        lo, hi = _operand_range(d)
        size = hi - lo + 1
        for op in set(ops):
            total += size * (size + 1) // 2 if op == "-" else size * size
    return total


def generate_arithmetic(
    n: int, *, seed: int, digits: int | Sequence[int] = 2, ops: Sequence[str] = ("+",)
) -> list[Problem]:
    """``n`` distinct problems ``"a<op>b="`` with answer ``str(a <op> b)``, the same for the same seed.

    Each problem draws its operand length from ``digits`` and its operator from ``ops`` uniformly.
    """
    lengths = (digits,) if isinstance(digits, int) else tuple(digits)
    if not lengths or any(not isinstance(d, int) or not 1 <= d <= 18 for d in lengths):
        raise ConfigError(f"digits must be integers in [1, 18], got {digits!r}")
    if not ops or any(op not in OPERATORS for op in ops):
        raise ConfigError(f"ops must be a non-empty subset of {OPERATORS}, got {tuple(ops)!r}")
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    available = num_distinct_problems(lengths, ops)
    if n > available:
        raise ConfigError(
            f"asked for {n} arithmetic problems but digits={digits!r}, ops={tuple(ops)!r} allow only "
            f"{available} distinct ones"
        )

    rng = random.Random(seed)
    problems: list[Problem] = []
    seen: set[tuple[int, str, int]] = set()
    misses = 0
    while len(problems) < n:
        d, op = rng.choice(lengths), rng.choice(tuple(ops))
        lo, hi = _operand_range(d)
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "-" and a < b:
            a, b = b, a
        if (a, op, b) in seen:
            misses += 1
            if misses > 100 * n + 100_000:  # only when n is close to `available`
                raise ConfigError(f"could only generate {len(problems)} of {n} distinct problems")
            continue
        seen.add((a, op, b))
        result = a + b if op == "+" else a - b if op == "-" else a * b
        index = len(problems)
        problems.append(
            Problem(
                id=f"arithmetic-{seed}-{index}",
                question=f"{a}{op}{b}=",
                answer=str(result),
                meta={
                    "difficulty": d,
                    "digits": d,
                    "operator": op,
                    "source": f"generated:arithmetic(seed={seed}) #{index}",
                },
            )
        )
    return problems


@TASKS.register("arithmetic")
def arithmetic_task(
    *,
    num_train: int = 2000,
    num_test: int = 200,
    digits: int | Sequence[int] = 2,
    ops: Sequence[str] = ("+",),
    template: str = "plain",
    seed: int = 0,
) -> Task:
    """Integer arithmetic with the bare question as the prompt (``plain`` template) by default.

    The test split is the first ``num_test`` generated problems and train the next ``num_train``;
    the generator never repeats a problem, so no test problem is in train.
    """
    TEMPLATES.get(template)  # unknown template: error with the valid names
    if num_train < 0 or num_test < 0:
        raise ConfigError(f"num_train and num_test must be >= 0, got {num_train}, {num_test}")
    problems = generate_arithmetic(num_test + num_train, seed=seed, digits=digits, ops=ops)
    return Task(
        name="arithmetic",
        train=problems[num_test:],
        test=problems[:num_test],
        template=template,
        rewards=(RewardSpec("arithmetic"),),
        stop_strings=("</answer>",),
    )
