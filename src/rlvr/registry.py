"""Registries of named components (advantage estimators, losses, rewards, ...).

A config names a component by a string; the registry turns the string into the function and,
on a typo, raises an error with the nearest valid name and the full list::

    ADVANTAGES = Registry("advantage estimator")

    @ADVANTAGES.register("grpo")
    def grpo(*, rewards, mask, group_ids, values=None, eps=1e-6): ...

    ADVANTAGES.get("grpoo")  # UnknownNameError: unknown advantage estimator 'grpoo'; did you mean 'grpo'? ...

Users extend rlvr from their own code with the same decorator.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from rlvr.errors import UnknownNameError

T = TypeVar("T")


def nearest_name_hint(name: str, valid: Iterable[str]) -> str:
    """Return "; did you mean 'x'?" for the closest valid name, or "" when none is close."""
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """A mapping from names to components of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, *, overwrite: bool = False) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name`` and returns it unchanged."""

        def decorator(obj: T) -> T:
            if name in self._items and not overwrite:
                raise ValueError(
                    f"{self.kind} '{name}' is already registered; pass overwrite=True to replace it"
                )
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The component registered as ``name``; an error with the nearest valid name otherwise."""
        if not isinstance(name, str):
            raise UnknownNameError(f"{self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._items[name]
        except KeyError:
            hint = nearest_name_hint(name, self._items)
            raise UnknownNameError(
                f"unknown {self.kind} '{name}'{hint} (valid: {', '.join(sorted(self._items))})"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def hyperparameters(fn: Callable[..., Any], tensor_args: Iterable[str]) -> dict[str, Any]:
    """The keyword hyperparameters of ``fn`` and their defaults, minus its tensor arguments.

    Used to check, when a config loads, that every hyperparameter a chosen function takes is a
    config field, and to pass the config's values to it.
    """
    skip = set(tensor_args)
    params = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        params[p.name] = p.default
    return params
