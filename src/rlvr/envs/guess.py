"""Guess the number: a game with state and feedback over several turns.

The policy guesses a whole number in ``[low, high]``, one guess a turn (a turn ends at a newline);
the environment answers ``higher`` or ``lower``, and the game ends when the guess is right or
after ``max_guesses``. Solving pays ``1 - turn_penalty * (guesses - 1)`` (at least 0): the reward
depends on solving it in few turns, so bisection beats guessing up one by one. A turn with no
number in it gets the observation ``no number`` and costs a guess.

Problems come from the task ``guess_number`` (``task.name: guess_number``): ``answer`` is the
secret, ``meta`` holds the bounds. Every character it writes is in the toy model's alphabet.
"""

from __future__ import annotations

import random
import re

from rlvr.envs.base import ENVS, Environment, StepResult
from rlvr.errors import ConfigError
from rlvr.rewards.base import REWARDS, RewardBatch, RewardResult
from rlvr.tasks.base import Problem, RewardSpec, Task
from rlvr.tasks.templates import TEMPLATES

_NUMBER = re.compile(r"-?\d+")


def guess_prompt(low: int, high: int) -> str:
    return f"Guess my number from {low} to {high}.\n"


@ENVS.register("guess_number")
class GuessNumberEnv(Environment):
    name = "guess_number"
    stop_strings = ("\n",)
    observation_role = "user"

    def __init__(self, max_guesses: int = 6, turn_penalty: float = 0.1) -> None:
        if not isinstance(max_guesses, int) or max_guesses < 1:
            raise ConfigError(f"guess_number: max_guesses must be an integer >= 1, got {max_guesses!r}")
        if not 0 <= turn_penalty <= 1:
            raise ConfigError(f"guess_number: turn_penalty must be in [0, 1], got {turn_penalty!r}")
        self.max_guesses, self.turn_penalty = max_guesses, turn_penalty
        self.secret = self.guesses = 0

    def reset(self, problem: Problem, seed: int) -> str:
        self.secret, self.guesses = int(problem.answer), 0
        return guess_prompt(int(problem.meta.get("low", 1)), int(problem.meta.get("high", 16)))

    def step(self, action: str) -> StepResult:
        self.guesses += 1
        numbers = _NUMBER.findall(action)
        out_of_guesses = self.guesses >= self.max_guesses
        if not numbers:
            return StepResult("no number\n", 0.0, False, out_of_guesses, {"correct": False, "invalid": True})
        guess = int(numbers[-1])
        if guess == self.secret:
            reward = max(0.0, 1.0 - self.turn_penalty * (self.guesses - 1))
            return StepResult("right\n", reward, True, False, {"correct": True, "guesses": self.guesses})
        hint = "higher\n" if self.secret > guess else "lower\n"
        return StepResult(hint, 0.0, False, out_of_guesses, {"correct": False})


def _task_factory(
    *, num_train: int = 2000, num_test: int = 100, low: int = 1, high: int = 16, seed: int = 0
) -> Task:
    """Secrets drawn uniformly from ``[low, high]``; the prompt is the game's opening line."""
    if not (isinstance(low, int) and isinstance(high, int) and low < high):
        raise ConfigError(f"guess_number: need integers low < high, got {low!r}, {high!r}")
    rng = random.Random(seed)
    problems = [
        Problem(
            f"guess-{i}",
            f"Guess my number from {low} to {high}.\n",
            rng.randint(low, high),
            {"low": low, "high": high, "source": f"generated:{i}"},
        )
        for i in range(num_train + num_test)
    ]
    return Task(
        name="guess_number",
        train=problems[num_test:],
        test=problems[:num_test],
        template="plain",
        rewards=(RewardSpec("guess_number_first"),),
        stop_strings=("\n",),
    )


def _first_guess_reward(batch: RewardBatch) -> RewardResult:
    """Single-turn scoring of the game: 1 when the first number written is the secret."""
    correct = []
    for text, problem in zip(batch.completions, batch.problems, strict=True):
        numbers = _NUMBER.findall(text)
        correct.append(bool(numbers) and int(numbers[0]) == int(problem.answer))
    return RewardResult(
        [1.0 if c else 0.0 for c in correct],
        correct=correct,
        outcomes=["correct" if c else "wrong" for c in correct],
    )


def _register() -> None:
    from rlvr.tasks.base import TASKS

    TEMPLATES.get("plain")
    if "guess_number" not in TASKS:
        TASKS.register("guess_number")(_task_factory)
    if "guess_number_first" not in REWARDS:
        REWARDS.register("guess_number_first")(_first_guess_reward)


_register()
