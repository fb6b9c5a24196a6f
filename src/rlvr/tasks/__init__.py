"""Tasks: a dataset of problems, a prompt template, and the rewards that score it."""

from __future__ import annotations

import importlib

BUILTIN_TASK_MODULES = ("arithmetic", "countdown", "knights_knaves", "math", "code")


def load_builtin_tasks() -> None:
    """Import the modules that register the built-in tasks (kept lazy: some pull in heavy graders)."""
    for name in BUILTIN_TASK_MODULES:
        importlib.import_module(f"rlvr.tasks.{name}")
