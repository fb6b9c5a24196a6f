"""The environment interface: ``reset`` and ``step``, in the style of Gymnasium.

An environment plays one trajectory. The rollout driver (:mod:`rlvr.rollout.multi_turn`) makes one
environment object per trajectory, so an environment keeps its state in plain attributes::

    env = make()                                   # one per trajectory; many run at once
    observation = env.reset(problem, seed)         # the first prompt: text or chat messages
    observation, reward, terminated, truncated, info = env.step(action_text)

``action_text`` is the text the policy wrote in its turn (stop string included). ``terminated``
ends the episode on its own terms (solved, given up); ``truncated`` ends it from outside (a limit
of the environment's). The rewards of all steps add up to the trajectory's reward; each step's
reward is also kept per turn (``env.turn_rewards``).

Faults are the environment's to turn into observations: a tool that raises or times out should
answer with an error observation. An exception that escapes ``reset`` or ``step`` is reported with
the environment's name and the trajectory, and the step trains without that trajectory.

Environments are registered by name (``ENVS``) and a config names one, or a user class as
``module:Class``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, Literal, NamedTuple

from rlvr.errors import ConfigError
from rlvr.registry import Registry, nearest_name_hint
from rlvr.tasks.base import Problem

Messages = list[dict[str, str]]


class StepResult(NamedTuple):
    """What :meth:`Environment.step` returns; unpacks as Gymnasium's 5-tuple."""

    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = {}


class Environment:
    """Base class of environments; subclasses implement :meth:`reset` and :meth:`step`.

    Class attributes the driver reads:

    * ``stop_strings``: strings that end the policy's turn (besides the end-of-sequence token),
      e.g. the end of a tool call.
    * ``observation_role``: the chat role observations take in a chat template (``tool`` or
      ``user``); base models get the observation text as it is.
    * ``action_truncated``: set by the driver before each ``step``: True when the per-turn token
      budget cut the action.

    ``info`` keys the driver counts: ``tool_call`` (bool), ``tool_error`` (bool), ``timeout`` (bool),
    ``correct`` (bool, the episode's verdict; else a positive total reward counts as correct).
    """

    name: ClassVar[str] = "environment"
    stop_strings: ClassVar[tuple[str, ...]] = ()
    observation_role: ClassVar[Literal["tool", "user"]] = "user"
    action_truncated: bool = False

    def reset(self, problem: Problem, seed: int) -> str | Messages:
        """Start a trajectory for ``problem``; the first observation (the prompt)."""
        raise NotImplementedError

    def step(self, action: str) -> StepResult:
        """Answer the policy's turn ``action``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the trajectory holds (called once it ends)."""


ENVS: Registry[type[Environment]] = Registry("environment")
"""Environments by name; users add theirs with ``@ENVS.register("name")``."""

BUILTIN_ENV_MODULES = ("task_env", "guess", "tool_math")


def load_builtin_envs() -> None:
    """Import the modules that register the built-in environments."""
    for module in BUILTIN_ENV_MODULES:
        importlib.import_module(f"rlvr.envs.{module}")


def resolve_env(name: str) -> type[Environment]:
    """The environment class ``name`` refers to: a registered name or ``module:Class``."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"setting 'env.name' must be an environment name or 'module:Class', got {name!r}")
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(f"setting 'env.name': cannot import module '{module_name}': {e}") from None
        cls = getattr(module, attr, None)
        if cls is None:
            raise ConfigError(f"setting 'env.name': module '{module_name}' has no '{attr}'")
    else:
        load_builtin_envs()
        try:
            cls = ENVS.get(name)
        except Exception as e:
            raise ConfigError(f"setting 'env.name': {e}") from None
    if not (inspect.isclass(cls) and hasattr(cls, "reset") and hasattr(cls, "step")):
        raise ConfigError(f"setting 'env.name': {name} is not an environment class with reset() and step()")
    return cls


def env_factory(name: str, params: dict[str, Any] | None = None, **context: Any) -> Callable[[], Any]:
    """A function that makes one fresh environment ``name`` with ``params``.

    ``context`` holds what the run offers (``task``: the configured task); it is passed to the
    class only for the keyword parameters its constructor names. An unknown parameter in
    ``params`` is an error naming the nearest valid one.
    """
    cls = resolve_env(name)
    params = dict(params or {})
    accepted = inspect.signature(cls).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in accepted.values())
    if not takes_any:
        for key in params:
            if key not in accepted:
                hint = nearest_name_hint(key, accepted)
                raise ConfigError(
                    f"setting 'env.params.{key}': environment '{name}' has no parameter '{key}'{hint} "
                    f"(valid: {', '.join(k for k in accepted if k not in context) or 'none'})"
                )
    extra = {k: v for k, v in context.items() if k in accepted and k not in params}
    cls(**params, **extra)  # fail now, not in the first step, when the parameters are bad

    def make() -> Any:
        return cls(**params, **extra)

    make.env_name = name  # type: ignore[attr-defined]
    return make


def env_stop_strings(make: Callable[[], Any]) -> tuple[str, ...]:
    """The stop strings an environment factory's environments end turns with."""
    env = make()
    try:
        return tuple(getattr(env, "stop_strings", ()) or ())
    finally:
        close = getattr(env, "close", None)
        if close is not None:
            close()
