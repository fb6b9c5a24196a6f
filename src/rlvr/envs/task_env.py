"""A single-turn task as a one-turn environment: the prompt is the task's, the one action is
scored by the task's rewards, and the episode ends."""

from __future__ import annotations

from typing import Any

from rlvr.envs.base import ENVS, Environment, Messages, StepResult
from rlvr.errors import ConfigError
from rlvr.tasks.base import Problem, Task


@ENVS.register("task")
class TaskEnv(Environment):
    """One turn: the configured task's prompt, its rewards on the completion.

    ``task`` comes from the run (the ``task`` section). The reward is scored one completion at a
    time, so group-based shaping rewards see a group of one; rewards that need the whole group
    belong to the single-turn path (no ``env`` section).
    """

    name = "task"

    def __init__(self, task: Task | None = None, template: str | None = None) -> None:
        if task is None:
            raise ConfigError("environment 'task' wraps the run's task; none was given")
        from rlvr.tasks.templates import TEMPLATES

        self.task = task
        self.template = TEMPLATES.get(template or task.template)
        self.stop_strings = tuple(task.stop_strings)
        self._reward = _reward_of(task)
        self._problem: Problem | None = None

    def reset(self, problem: Problem, seed: int) -> str | Messages:
        self._problem = problem
        return self.template.render(problem.question)

    def step(self, action: str) -> StepResult:
        from rlvr.rewards.base import RewardBatch

        assert self._problem is not None, "step() before reset()"
        result = self._reward(
            RewardBatch(
                completions=[action],
                problems=[self._problem],
                group_ids=[0],
                truncated=[self.action_truncated],
            )
        )
        correct = result.correct[0] if result.correct is not None else result.values[0] > 0
        info: dict[str, Any] = {"correct": bool(correct)}
        if result.outcomes is not None:
            info["outcome"] = result.outcomes[0]
        return StepResult("", float(result.values[0]), True, False, info)


_REWARDS: dict[int, tuple[Task, Any]] = {}


def _reward_of(task: Task) -> Any:
    """One composite reward per task object (building it resolves and checks every component)."""
    from rlvr.rewards.composite import CompositeReward

    entry = _REWARDS.get(id(task))
    if entry is None or entry[0] is not task:
        entry = _REWARDS[id(task)] = (task, CompositeReward(task.rewards))
    return entry[1]
