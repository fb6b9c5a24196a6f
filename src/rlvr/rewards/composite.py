"""A task's reward: a weighted sum of named reward components.

::

    reward = CompositeReward([
        RewardSpec("math"),                                         # verifier
        RewardSpec("format", weight=0.1),
        RewardSpec("overlong", params={"buffer_length": 4096}),
    ])
    result = reward(batch)          # RewardResult: total values, correct, outcomes, metrics

In a config file the same list reads
``rewards: [{name: math}, {name: overlong, weight: 1.0, params: {buffer_length: 4096}}]``.

Components run **in the order given**. A *verifier* is a component whose result sets ``correct``
(``math``, ``countdown``, ...); from then on the batch handed to the following components carries
that ``correct``, which shaping rewards such as ``kimi_length`` or ``cosine`` read. So list the
verifier first; a shaping reward that needs correctness and runs before any verifier raises an
error saying so. At most one component may be a verifier.

A name is either registered in :data:`rlvr.rewards.base.REWARDS` or a plugin path
``"package.module:function"`` to a user's own reward function (same signature,
``fn(batch, **params) -> RewardResult``).

Metrics (means over the whole batch, reduced over ranks): ``reward/<name>`` the unweighted mean of
each component, ``reward/total`` the mean of the weighted sum, and when a verifier ran,
``reward/accuracy`` and ``reward/outcome/<correct|wrong|no_answer|timeout>`` fractions (``timeout``: the
check ran out of time twice; scored like a wrong answer, counted apart). Each component's own
metrics are passed on as ``reward/<name>/<key>``.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import numbers
import pkgutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import torch

from rlvr.distributed import all_reduce_sum
from rlvr.errors import ConfigError, RLVRError, ShapeError
from rlvr.registry import nearest_name_hint
from rlvr.rewards import format as _format  # noqa: F401  (registers the format rewards)
from rlvr.rewards import shaping as _shaping  # noqa: F401  (registers the shaping rewards)
from rlvr.rewards.base import REWARDS, Outcome, RewardBatch, RewardFn, RewardResult
from rlvr.tasks.base import RewardSpec

OUTCOMES: tuple[str, ...] = get_args(Outcome)


def _load_builtin_rewards() -> None:
    """Import every module of :mod:`rlvr.rewards`, so that each built-in reward is registered."""
    package = importlib.import_module("rlvr.rewards")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"rlvr.rewards.{module.name}")


def _resolve_plugin(path: str) -> RewardFn:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"reward plugin path '{path}' must look like 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise ConfigError(
                f"reward plugin '{path}': no module named '{missing}' (is it installed or on PYTHONPATH?)"
            ) from None
        raise ConfigError(f"reward plugin '{path}': importing '{module_name}' failed: {err}") from err
    except Exception as err:  # the user's module raised while importing
        raise ConfigError(f"reward plugin '{path}': importing '{module_name}' failed: {err!r}") from err
    for part in attribute.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            hint = nearest_name_hint(part, public)
            raise ConfigError(f"reward plugin '{path}': '{module_name}' has no attribute '{attribute}'{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(
            f"reward plugin '{path}' is not callable (type {type(obj).__name__}); it must be a function "
            "fn(batch: RewardBatch, **params) -> RewardResult"
        )
    return obj


def resolve_reward(name: str) -> RewardFn:
    """The reward function a config names: a registered name or a ``module:function`` plugin path.

    An unknown registered name raises :class:`UnknownNameError` with the nearest valid name; a bad
    plugin path raises :class:`ConfigError` naming the path and what is missing.
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a reward name must be a non-empty string, got {name!r}")
    if ":" in name:
        return _resolve_plugin(name)
    if name not in REWARDS:
        _load_builtin_rewards()
    return REWARDS.get(name)


def _as_spec(spec: Any, index: int) -> RewardSpec:
    if isinstance(spec, RewardSpec):
        return spec
    if isinstance(spec, Mapping):
        fields = {f.name for f in dataclasses.fields(RewardSpec)}
        unknown = [k for k in spec if k not in fields]
        if unknown:
            hint = nearest_name_hint(str(unknown[0]), fields)
            raise ConfigError(
                f"rewards[{index}]: unknown key '{unknown[0]}'{hint} (valid: {', '.join(sorted(fields))})"
            )
        if "name" not in spec:
            raise ConfigError(f"rewards[{index}]: missing 'name'")
        return RewardSpec(**dict(spec))
    if all(hasattr(spec, key) for key in ("name", "weight", "params")):  # e.g. a config dataclass
        return RewardSpec(name=spec.name, weight=spec.weight, params=dict(spec.params))
    raise ConfigError(
        f"rewards[{index}] must be a RewardSpec, a mapping or an object with name, weight and params; "
        f"got {type(spec).__name__}"
    )


def _check_params(name: str, fn: RewardFn, params: Mapping[str, Any]) -> None:
    """Every configured parameter is a keyword of ``fn``, and ``fn`` gets all it requires."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return
    rest = list(signature.parameters.values())[1:]  # the first one receives the batch
    if any(p.kind is p.VAR_KEYWORD for p in rest):
        accepted = None
    else:
        accepted = [p.name for p in rest if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in params:
        if accepted is not None and key not in accepted:
            hint = nearest_name_hint(str(key), accepted)
            valid = ", ".join(accepted) or "none"
            raise ConfigError(f"reward '{name}' has no parameter '{key}'{hint} (its parameters: {valid})")
    for p in rest:
        required = p.default is p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        if required and p.name not in params:
            raise ConfigError(f"reward '{name}' requires the parameter '{p.name}'; set it in params")


@dataclass(frozen=True)
class RewardComponent:
    """One resolved term of the sum: ``weight * fn(batch, **params)``."""

    name: str
    weight: float
    params: dict[str, Any]
    fn: RewardFn


def _check_result(name: str, result: object, n: int) -> RewardResult:
    if not isinstance(result, RewardResult):
        raise ConfigError(f"reward '{name}' returned a {type(result).__name__}, not a RewardResult")
    if len(result.values) != n:
        raise ShapeError(f"reward '{name}' returned {len(result.values)} values for {n} completions")
    for i, value in enumerate(result.values):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise RLVRError(
                f"reward '{name}' returned {value!r} for completion {i}; rewards must be finite numbers"
            )
    if result.correct is not None and len(result.correct) != n:
        raise ShapeError(
            f"reward '{name}' returned {len(result.correct)} `correct` flags for {n} completions"
        )
    if result.outcomes is not None:
        if len(result.outcomes) != n:
            raise ShapeError(f"reward '{name}' returned {len(result.outcomes)} outcomes for {n} completions")
        bad = [o for o in result.outcomes if o not in OUTCOMES]
        if bad:
            raise RLVRError(f"reward '{name}' returned outcome {bad[0]!r}; valid: {', '.join(OUTCOMES)}")
    if result.answers is not None and len(result.answers) != n:
        raise ShapeError(f"reward '{name}' returned {len(result.answers)} answers for {n} completions")
    return result


class CompositeReward:
    """A weighted sum of reward components, verifier first (see the module docstring)."""

    def __init__(self, specs: Sequence[RewardSpec | Mapping[str, Any]]) -> None:
        if isinstance(specs, (str, bytes)) or not isinstance(specs, Sequence) or len(specs) == 0:
            raise ConfigError("rewards must be a non-empty list of reward specs")
        components = []
        seen: set[str] = set()
        for index, raw in enumerate(specs):
            spec = _as_spec(raw, index)
            if spec.name in seen:
                raise ConfigError(
                    f"reward '{spec.name}' is listed twice; to use it twice, register it a second time "
                    "under another name (REWARDS.register) so that each component has its own metrics"
                )
            seen.add(spec.name)
            weight = spec.weight
            if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
                raise ConfigError(f"reward '{spec.name}': weight must be a finite number, got {weight!r}")
            if not isinstance(spec.params, Mapping):
                raise ConfigError(
                    f"reward '{spec.name}': params must be a mapping, got {type(spec.params).__name__}"
                )
            fn = resolve_reward(spec.name)
            params = dict(spec.params)
            _check_params(spec.name, fn, params)
            components.append(RewardComponent(spec.name, float(weight), params, fn))
        self.components: tuple[RewardComponent, ...] = tuple(components)

    def __call__(self, batch: RewardBatch) -> RewardResult:
        n = len(batch.completions)
        total = [0.0] * n
        means: dict[str, list[float]] = {}
        extra_metrics: dict[str, float] = {}
        verifier: str | None = None
        outcomes: list[Outcome] | None = None
        answers: list[str | None] | None = None
        components: dict[str, list[float]] = {}
        for component in self.components:
            result = _check_result(component.name, component.fn(batch, **component.params), n)
            if result.correct is not None:
                if verifier is not None:
                    raise ConfigError(
                        f"rewards '{verifier}' and '{component.name}' both return `correct`; "
                        "use one verifier per task"
                    )
                verifier, outcomes, answers = component.name, result.outcomes, result.answers
                batch = dataclasses.replace(batch, correct=[bool(c) for c in result.correct])
            for i, value in enumerate(result.values):
                total[i] += component.weight * float(value)
            means[f"reward/{component.name}"] = [float(v) for v in result.values]
            components[component.name] = means[f"reward/{component.name}"]
            for key, value in result.metrics.items():
                # A component's own "reward/x" metric becomes "reward/<name>/x", not ".../reward/x".
                key = key.removeprefix("reward/")
                extra_metrics[f"reward/{component.name}/{key}"] = float(value)
        means["reward/total"] = total
        if batch.correct is not None:
            means["reward/accuracy"] = [float(c) for c in batch.correct]
        if outcomes is not None:
            for outcome in OUTCOMES:
                means[f"reward/outcome/{outcome}"] = [float(o == outcome) for o in outcomes]
        metrics = global_means(means, n)
        metrics.update(extra_metrics)
        return RewardResult(
            values=total,
            metrics=metrics,
            correct=batch.correct,
            outcomes=outcomes,
            answers=answers,
            components=components,
        )


def global_means(columns: dict[str, list[float]], n: int) -> dict[str, float]:
    """Mean of each column over the completions of all ranks (one all-reduce for all of them)."""
    sums = [math.fsum(column) for column in columns.values()]
    reduced = all_reduce_sum(torch.tensor([*sums, float(n)], dtype=torch.float64))
    count = reduced[-1].item()
    if count == 0:
        return {}
    return {key: reduced[i].item() / count for i, key in enumerate(columns)}


__all__ = ["CompositeReward", "RewardComponent", "resolve_reward"]
