"""The run directory of ``rlvr train``: what a new run, ``--resume`` and ``--overwrite`` may do with it.

- A new run starts only in a directory that is new or empty. One that holds a run (an rlvr
  ``config.json``, a checkpoint or a file of :data:`RUN_FILES`) is refused, with the flag to pass:
  ``--resume`` to continue it, ``--overwrite`` to delete the run's files (:data:`RUN_FILES`,
  :data:`RUN_DIRS`) and start again. A non-empty directory that holds no run is refused either way,
  and a file rlvr did not write is never deleted.
- ``--resume`` compares the config with the one the run saved (``config.json``). The keys of
  :data:`SAFE_TO_CHANGE_ON_RESUME` (logging, evaluation frequency, steps, checkpointing, how the
  work is spread and sized in memory) may change; a change to any other key alters what the run
  trains and is refused, listed as ``key: saved -> new``, unless ``--force-resume`` is given (the old
  config is then kept as ``config.until-step-NNNNNN.json``). The keys of
  :data:`RESTORED_FROM_CHECKPOINT` are refused even then: the checkpoint would restore their values.
- ``--resume`` in a run directory without a checkpoint starts the run over, and says so.

:func:`prepare_run_dir` runs on rank 0 only; the trainer hands its verdict to every rank.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rlvr.errors import ConfigError
from rlvr.training.checkpoint import checkpoint_name, checkpoint_step, latest_checkpoint

CONFIG_FILE = "config.json"
"""The resolved config of the run, written by every start of it."""

SAFE_TO_CHANGE_ON_RESUME: tuple[str, ...] = (
    "logging.*",
    "eval.every",
    "training.steps",
    "training.cpu_threads",
    "training.micro_batch_tokens",
    "checkpoint.*",
    "model.gradient_checkpointing",
    "parallel.strategy",
    "parallel.cpu_offload",
    "parallel.timeout_s",
)
"""Settings a resumed run may change: where and how often it logs, evaluates and saves, how many steps
it runs, and how the same computation is split (threads, micro-batches, activation recomputation, DDP
or FSDP2 sharding, which a checkpoint resumes under either). ``prefix.*`` covers a whole section."""


RESTORED_FROM_CHECKPOINT: tuple[str, ...] = (
    "optim.lr",
    "optim.betas",
    "optim.eps",
    "optim.weight_decay",
    "critic.lr",
    "training.seed",
)
"""Settings whose saved values a checkpoint restores (the optimizers' parameter groups and base
learning rates; the sampler's, generators' and RNG states), so that even ``--force-resume`` could not
change them: a change is refused."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and other values are leaves."""
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def is_safe_to_change(key: str) -> bool:
    """Whether ``key`` is one of :data:`SAFE_TO_CHANGE_ON_RESUME`."""
    return any(
        key.startswith(pattern[:-1]) if pattern.endswith(".*") else key == pattern
        for pattern in SAFE_TO_CHANGE_ON_RESUME
    )


_ABSENT = object()


def config_differences(
    saved: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every setting that differs, by dotted key.

    With ``defaults`` (the settings of a default config), a setting the saved one does not have
    and the new one holds at its default is no difference: it was added to rlvr since."""
    a, b = flatten(saved), flatten(new)
    d = flatten(defaults) if defaults is not None else {}
    return [
        (key, a.get(key, _ABSENT), b.get(key, _ABSENT))
        for key in sorted(a.keys() | b.keys())
        if a.get(key, _ABSENT) != b.get(key, _ABSENT)
        and not (key not in a and key in d and b.get(key, _ABSENT) == d[key])
    ]


def format_difference(key: str, saved: Any, new: Any) -> str:
    """``key: saved -> new``, values as JSON."""

    def shown(value: Any) -> str:
        return "(not set)" if value is _ABSENT else json.dumps(value)

    return f"{key}: {shown(saved)} -> {shown(new)}"


def as_saved(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from ``config.json`` (tuples as lists, other types as strings)."""
    return json.loads(json.dumps(config, default=str))


def write_config(out: Path, config: dict[str, Any]) -> None:
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")


def _saved_config(out: Path) -> dict[str, Any] | None:
    """The run's ``config.json`` when it is an rlvr run config; None otherwise."""
    try:
        saved = json.loads((out / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not {"training", "logging"} <= saved.keys():
        return None
    return saved if "rollout" in saved or "data" in saved else None  # rlvr train's, or rlvr sft's


RUN_FILES = ("metrics.jsonl", "samples.jsonl", "eval_before.json", "critic_pretrain.jsonl", CONFIG_FILE)
RUN_DIRS = ("checkpoints", "final", "best", "tensorboard", "plots", "eval")
"""What ``rlvr train`` (and ``rlvr eval`` of the run, ``eval/``) writes into a run directory, besides
the ``config.until-*.json`` of forced resumes: all that ``--overwrite`` deletes."""


def holds_a_run(out: Path) -> bool:
    """Whether ``out`` holds an rlvr run: an rlvr ``config.json``, a checkpoint, or one of the files
    only a run writes (``metrics.jsonl``, ``eval_before.json``, ...). An empty ``checkpoints/`` or
    ``tensorboard/`` folder, common in other projects, is not a run."""
    return (
        _saved_config(out) is not None
        or latest_checkpoint(out) is not None
        or any((out / name).is_file() for name in RUN_FILES if name != CONFIG_FILE)
    )


def _is_empty(out: Path) -> bool:
    return not out.exists() or (out.is_dir() and not any(out.iterdir()))


def _clear(out: Path) -> None:
    """Delete what rlvr wrote in ``out`` (:data:`RUN_FILES`, :data:`RUN_DIRS`, forced resumes' old
    configs); everything else, and the directory itself, stays."""
    names = set(RUN_FILES) | set(RUN_DIRS)
    for entry in out.iterdir():
        if entry.name not in names and not (
            entry.name.startswith("config.until-") and entry.name.endswith(".json")
        ):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _describe(out: Path) -> str:
    latest = latest_checkpoint(out)
    saved = _saved_config(out)
    steps = saved.get("training", {}).get("steps") if saved else None
    if latest is None:
        return "no checkpoint yet"
    step = checkpoint_step(latest)
    if steps is not None and step >= steps:
        if (out / "final").is_dir():
            return f"finished: checkpoint at step {step} of {steps}"
        return f"checkpoint at step {step} of {steps}, without the final evaluation"
    return f"latest checkpoint at step {step}" + (f" of {steps}" if steps is not None else "")


def _unsafe_changes(out: Path, config: dict[str, Any]) -> list[tuple[str, Any, Any]] | None:
    """The changes of ``config`` from the saved one that alter what the run trains (None: no saved config)."""
    saved = _saved_config(out)
    if saved is None:
        return None
    return [c for c in config_differences(saved, as_saved(config)) if not is_safe_to_change(c[0])]


def check_run_dir(
    out: str | Path, config: dict[str, Any], *, resume: bool, overwrite: bool, force_resume: bool = False
) -> None:
    """Raise :class:`ConfigError` when a run with ``config`` must not start in ``out`` (the rules of the
    module docstring); reads only, so the command line calls it before any data or model loads."""
    out = Path(out)
    resume = resume or force_resume
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: continue the run or replace it")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"logging.output_dir {out} is a file, not a directory")
    if _is_empty(out):
        return
    if not holds_a_run(out):
        raise ConfigError(
            f"{out} is not empty and holds no rlvr run: set logging.output_dir to a new or empty directory"
        )
    if overwrite:
        return
    if not resume:
        raise ConfigError(
            f"{out} already holds a run ({_describe(out)}). Pass --resume to continue it, --overwrite to "
            "delete it and start again, or set logging.output_dir to a new directory"
        )
    unsafe = _unsafe_changes(out, config) if latest_checkpoint(out) is not None else None
    restored = [c for c in unsafe or () if c[0] in RESTORED_FROM_CHECKPOINT]
    if restored and force_resume:
        listed = "\n".join(f"  {format_difference(*c)}" for c in restored)
        raise ConfigError(
            f"--force-resume cannot change these settings of the run in {out}: its checkpoint restores "
            f"their saved values (optimizer state, random state), so the new ones would be ignored:\n{listed}"
            "\nResume with the saved values, or start a new run (--overwrite, or another logging.output_dir)"
        )
    if unsafe and not force_resume:
        listed = "\n".join(f"  {format_difference(*c)}" for c in unsafe)
        raise ConfigError(
            f"--resume: the config differs from the one {out} was started with, in settings that change "
            f"what the run trains (saved -> new):\n{listed}\nResume with the saved settings (drop these "
            "overrides), pass --force-resume to continue with the new ones anyway, or start a new run "
            "(--overwrite, or another logging.output_dir). Settings a resumed run may change: "
            f"{', '.join(SAFE_TO_CHANGE_ON_RESUME)}"
        )


def prepare_run_dir(
    out: str | Path, config: dict[str, Any], *, resume: bool, overwrite: bool, force_resume: bool = False
) -> list[str]:
    """Check run directory ``out`` for a run with ``config`` (as :func:`rlvr.config.to_dict` gives it,
    :func:`check_run_dir`), then delete the old run where ``overwrite`` says so. Returns the lines to
    log. Rank 0 only (see the module docstring for the rules).
    """
    check_run_dir(out, config, resume=resume, overwrite=overwrite, force_resume=force_resume)
    out = Path(out)
    resume = resume or force_resume
    if _is_empty(out):
        return [f"--resume: {out} holds no run to resume; starting a new run"] if resume else []
    if overwrite:
        what = _describe(out)
        _clear(out)
        return [f"--overwrite: deleted the run that was in {out} ({what})"]
    if latest_checkpoint(out) is None:
        _clear(out)  # a run with no checkpoint has nothing to continue: its logs would mix with the new ones
        return [
            f"--resume: {out} has no checkpoint; starting the run over from step 0 (its logs are replaced)"
        ]
    saved = _saved_config(out)
    if saved is None:
        return [f"{out / CONFIG_FILE} is missing or unreadable: the resumed settings are not compared"]
    changes = config_differences(saved, as_saved(config))
    lines = [f"changed on resume: {format_difference(*c)}" for c in changes if is_safe_to_change(c[0])]
    unsafe = [c for c in changes if not is_safe_to_change(c[0])]
    if unsafe:  # only with force_resume: check_run_dir refused them otherwise
        latest = latest_checkpoint(out)
        kept = out / f"config.until-{checkpoint_name(checkpoint_step(latest) if latest else 0)}.json"
        shutil.copyfile(out / CONFIG_FILE, kept)
        lines += [f"--force-resume: {format_difference(*c)}" for c in unsafe]
        lines.append(f"--force-resume: the settings the run had until now are kept in {kept}")
    return lines
