"""Checkpoints written atomically, kept few, and loaded back to continue a run exactly, on any
number of ranks.

A checkpoint is a directory ``run_dir/checkpoints/step-000123/``::

    state/                                  the training state, written with torch.distributed.checkpoint
                                            (DCP): the trainable weights and the optimizer state of the
                                            model (key ``model``, ``optimizer``) and of each ``modules``
                                            entry (``<name>.model``, ``<name>.optimizer``), one shard file
                                            per rank plus ``.metadata``
    config.json, model.safetensors, ...     the model exported as ``save_pretrained`` writes it (rank 0):
                                            a Hugging Face model directory that ``from_pretrained`` loads
                                            (for a peft model: adapter_config.json + adapter_model.safetensors)
    tokenizer.json, tokenizer_config.json   the tokenizer, when one is given
    scheduler.pt                            ``torch.save`` of the scheduler's state dict
    <name>.pt                               the state dict of each ``extra_states`` object
    rng.pt                                  RNG states (python, numpy, torch CPU and CUDA) of every rank
    trainer_state.pt                        the trainer-state entries that hold tensors, if any
    trainer_state.json                      the JSON-able trainer-state entries, always with ``step``;
                                            written last

Resuming reads ``state/``: DCP reshards on load, so a run saved on 2 ranks continues on 1 and the
reverse, whatever the strategy (replicated or FSDP2-sharded). Frozen weights (the base model under a
LoRA adapter) are not saved: they are the ones ``model.path`` loads.

Atomicity: everything is written into a hidden sibling ``.tmp-step-000123-<id>/``, every file and the
directory are fsync'd, then the directory is renamed into place (a rename within one file system is
atomic). A directory named ``step-*`` is therefore always complete: a kill at any moment leaves the
earlier checkpoints intact and at worst a ``.tmp-*`` directory, which :func:`latest_checkpoint` ignores
and the next save removes. Deletion is a rename to ``.deleting-*`` followed by removal, so a half-deleted
directory never looks like a checkpoint either. Saving a step that already has a checkpoint (for example
once more after the final evaluation) renames the old one to ``.replaced-step-000123-<id>`` before the new
one takes its place; should a kill fall between those two renames, the ``.replaced`` copy (complete) still
counts as that step's checkpoint and the next save renames it back.

Damage: :func:`load_checkpoint` reads every file it loads from (and checks the size of every shard the
DCP metadata names) before it applies any, and a missing, truncated or unreadable file raises
:class:`CorruptCheckpointError` naming it; :func:`load_latest_checkpoint` then falls back to the checkpoint
before, saying so. A shard whose bytes changed but whose size did not is not detected.

Distributed runs: every rank calls :func:`save_checkpoint`, :func:`load_checkpoint` and
:func:`load_latest_checkpoint` (all are collective; a file one rank cannot read stops every rank). Every rank writes its shard of ``state/`` into rank 0's temporary directory (several
machines need a shared file system for the run directory); rank 0 writes the rest and publishes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from rlvr.distributed import barrier, broadcast_object, gather_objects, rank, world_size
from rlvr.errors import ConfigError, DataError
from rlvr.training.rng import capture_rng_state as capture_rng_state  # re-exported
from rlvr.training.rng import gather_rng_states, restore_rng_state
from rlvr.training.sharded_state import (
    apply_training_state,
    check_saved_keys,
    export_state,
    single_process_quiet,
    training_state,
    unwrap,
)

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE_JSON = "trainer_state.json"
TRAINER_STATE_PT = "trainer_state.pt"
RNG_FILE = "rng.pt"
STATE_DIR = "state"
SCHEDULER_FILE = "scheduler.pt"
ADAPTER_CONFIG = "adapter_config.json"

_STEP_DIR = re.compile(r"^step-(\d+)$")
_REPLACED_DIR = re.compile(r"^\.replaced-step-(\d+)-[0-9a-f]+$")
_TMP_PREFIX = ".tmp-"
_DELETING_PREFIX = ".deleting-"
_RESERVED_NAMES = {"optimizer", "scheduler", "rng", "trainer_state", "model", "adapter_model", "state"}


def checkpoint_name(step: int) -> str:
    """``step-000123``: zero-padded so that names sort like steps up to a million."""
    return f"step-{step:06d}"


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint directory holds, read from its name."""
    name = Path(path).name
    match = _STEP_DIR.match(name) or _REPLACED_DIR.match(name)
    if match is None:
        raise DataError(f"{path}: not a checkpoint directory name (expected step-<number>)")
    return int(match.group(1))


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / TRAINER_STATE_JSON).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """The complete checkpoints of ``run_dir``, oldest step first; temporary directories are ignored."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    by_step: dict[int, Path] = {}
    replaced: dict[int, Path] = {}
    for entry in root.iterdir():
        if _STEP_DIR.match(entry.name) and _is_complete(entry):
            by_step[checkpoint_step(entry)] = entry
        elif _REPLACED_DIR.match(entry.name) and _is_complete(entry):
            replaced[checkpoint_step(entry)] = entry
    for step, entry in replaced.items():  # a kill fell between the two renames of an overwrite
        by_step.setdefault(step, entry)
    return [by_step[step] for step in sorted(by_step)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of ``run_dir`` with the highest step, or None when there is none."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


# ---------------------------------------------------------------------------------------------------
# Saving


def _needs_torch(value: Any, where: str) -> bool:
    """Whether a trainer-state value holds tensors (False: plain JSON); other types are refused."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return isinstance(value, torch.Tensor)
    if isinstance(value, (list, tuple)):
        return any([_needs_torch(v, f"{where}[{i}]") for i, v in enumerate(value)]) or isinstance(
            value, tuple
        )
    if isinstance(value, dict):
        return any([_needs_torch(v, f"{where}[{k!r}]") for k, v in value.items()]) or not all(
            isinstance(k, str) for k in value
        )
    raise ConfigError(
        f"trainer_state{where}: cannot be checkpointed ({type(value).__name__}); use JSON types, "
        "tensors, and lists/dicts of them"
    )


def _split_trainer_state(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(entries written as JSON, entries that hold tensors, tuples or non-string keys: torch.save)."""
    as_json, as_torch = {}, {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise ConfigError(f"trainer_state keys must be strings, got {key!r}")
        (as_torch if _needs_torch(value, f"[{key!r}]") else as_json)[key] = value
    return as_json, as_torch


def _check_extra_names(extra_states: Mapping[str, Any] | None) -> None:
    for name in extra_states or {}:
        if not re.fullmatch(r"[A-Za-z0-9_]+", name) or name in _RESERVED_NAMES:
            raise ConfigError(
                f"extra_states name {name!r} must be letters, digits and _ and not one of {sorted(_RESERVED_NAMES)}"
            )


def _fsync(path: str | Path) -> None:
    if os.name == "nt" and os.path.isdir(path):  # Windows cannot open a directory for fsync
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync(os.path.join(directory, name))
        _fsync(directory)


def _remove(path: Path) -> None:
    """Delete a directory so that no moment shows it half-deleted under its own name."""
    doomed = path.with_name(f"{_DELETING_PREFIX}{path.name.lstrip('.')}-{uuid.uuid4().hex[:8]}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _clean_leftovers(root: Path) -> None:
    """Remove what an interrupted save or deletion left behind; restore an interrupted overwrite."""
    for entry in sorted(root.iterdir()):
        if entry.name.startswith((_TMP_PREFIX, _DELETING_PREFIX)) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif _REPLACED_DIR.match(entry.name):
            target = root / checkpoint_name(checkpoint_step(entry))
            if target.exists() or not _is_complete(entry):
                _remove(entry)
            else:
                os.rename(entry, target)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` directory to ``final``, replacing an existing ``final``."""
    if not final.exists():
        os.rename(tmp, final)
        return
    replaced = final.with_name(f".replaced-{final.name}-{uuid.uuid4().hex[:8]}")
    os.rename(final, replaced)
    os.rename(tmp, final)
    _fsync(final.parent)
    _remove(replaced)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Writing model shards" bar: a checkpoint is not worth a console line."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _write_checkpoint(
    directory: Path,
    *,
    model: Any,
    exported: dict[str, torch.Tensor] | None,
    tokenizer: Any,
    scheduler: Any,
    extra_states: Mapping[str, Any],
    json_state: dict[str, Any],
    torch_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
) -> None:
    if not hasattr(model, "save_pretrained"):
        raise ConfigError(
            f"save_checkpoint: model of type {type(model).__name__} has no save_pretrained; "
            "pass a Hugging Face (or peft) model"
        )
    with _no_progress_bars():  # safetensors: the only format of transformers 5, peft's default
        if exported is None:
            model.save_pretrained(directory)
        else:
            model.save_pretrained(directory, state_dict=exported)
    if not any(directory.glob("*.safetensors")):
        raise ConfigError(
            f"save_checkpoint: {type(model).__name__}.save_pretrained wrote no safetensors file"
        )
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    if scheduler is not None:
        torch.save(scheduler.state_dict(), directory / SCHEDULER_FILE)
    for name, obj in extra_states.items():
        torch.save(obj.state_dict(), directory / f"{name}.pt")
    torch.save({"world_size": len(rng_states), "ranks": rng_states}, directory / RNG_FILE)
    if torch_state:
        torch.save(torch_state, directory / TRAINER_STATE_PT)
    # Written last: a directory with trainer_state.json has everything else.
    (directory / TRAINER_STATE_JSON).write_text(json.dumps(json_state, indent=2) + "\n", encoding="utf-8")


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: Any,
    tokenizer: Any = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    trainer_state: Mapping[str, Any] | None = None,
    keep_last: int | None = 2,
    extra_states: Mapping[str, Any] | None = None,
    modules: Mapping[str, tuple[Any, Any]] | None = None,
) -> Path:
    """Write ``run_dir/checkpoints/step-<step>/`` atomically, then delete all but the ``keep_last`` newest.

    Args:
        run_dir: the run directory.
        step: the number of completed training steps.
        model: a Hugging Face model (full weights) or a peft model (the adapter is saved).
        tokenizer: saved beside the model so that the directory is self-contained; optional.
        optimizer: its state goes to ``state/`` with the model's trainable weights; optional.
        scheduler: its ``state_dict()`` is saved; optional.
        trainer_state: the loop's own state (position in the data, counters, generators). Entries of JSON
            types go to ``trainer_state.json``; entries holding tensors to ``trainer_state.pt``. ``step``
            is added (and must equal ``step`` if given).
        keep_last: how many checkpoints to keep (>= 1), counting this one; None keeps all. Only
            checkpoints of steps up to ``step`` are deleted; the one just written is always kept.
        extra_states: more objects with ``state_dict()`` that are the same on every rank (a critic's
            schedule, a grad scaler), saved as ``<name>.pt`` by rank 0.
        modules: more trained models, ``name -> (module, optimizer or None)`` (a critic), saved in
            ``state/`` like the model.

    Returns the checkpoint directory (on every rank). Call it on every rank (see the module docstring).
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"save_checkpoint: step must be a non-negative int, got {step!r}")
    if keep_last is not None and (
        isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1
    ):
        raise ConfigError(
            f"save_checkpoint: keep_last must be an int >= 1 or None (keep all), got {keep_last!r}"
        )
    _check_extra_names(extra_states)
    _check_extra_names(modules)
    state = dict(trainer_state or {})
    if "step" in state and state["step"] != step:
        raise ConfigError(f"save_checkpoint: trainer_state['step'] = {state['step']!r} but step = {step}")
    state["step"] = step
    json_state, torch_state = _split_trainer_state(state)
    rng_states = gather_rng_states()  # collective: before the rank-0-only part

    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / checkpoint_name(step)
    tmp: Path | None = None
    if rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        _clean_leftovers(root)
        tmp = root / f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
    tmp = broadcast_object(tmp)  # type: ignore[assignment]
    assert tmp is not None
    try:
        import torch.distributed.checkpoint as dcp

        with single_process_quiet():
            dcp.save(training_state(unwrap(model), optimizer, modules or {}), checkpoint_id=tmp / STATE_DIR)
        exported = export_state(model)  # collective for a sharded model
        if rank() == 0:
            _write_checkpoint(
                tmp,
                model=unwrap(model),
                exported=exported,
                tokenizer=tokenizer,
                scheduler=scheduler,
                extra_states=extra_states or {},
                json_state=json_state,
                torch_state=torch_state,
                rng_states=rng_states,
            )
            _fsync_tree(tmp)
    except BaseException:
        if rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()  # every rank's shard is written
    if rank() == 0:
        _publish(tmp, final)
        _fsync(root)
        if keep_last is not None:
            older = [p for p in list_checkpoints(run_dir) if checkpoint_step(p) <= step and p != final]
            for path in older[: max(len(older) - (keep_last - 1), 0)]:
                _remove(path)
            _fsync(root)
    barrier()
    return final


# ---------------------------------------------------------------------------------------------------
# Loading


class CorruptCheckpointError(DataError):
    """A file of a checkpoint is missing, truncated or cannot be read; the message names the file."""


def _unreadable(path: Path, err: BaseException) -> str:
    text = str(err).strip()
    if not text:
        detail = "empty or cut short"
    elif "weights_only" in text or "Weights only" in text:  # torch's advice on an unpickling failure
        detail = "not a file torch.save wrote"
    else:
        detail = text.splitlines()[0][:200]
    return f"{path}: cannot be read, the file is damaged or truncated ({type(err).__name__}: {detail})"


def _read_file(path: Path, read: Callable[[Path], Any]) -> Any:
    """``read(path)``, with a missing or unreadable file turned into a :class:`CorruptCheckpointError`."""
    if not path.is_file():
        raise CorruptCheckpointError(f"{path}: missing from the checkpoint")
    try:
        return read(path)
    except Exception as err:  # pickle, zip, EOF, JSON and OS errors alike: the file is bad
        raise CorruptCheckpointError(_unreadable(path, err)) from None


def _torch_read(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True)


def _json_read(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _dcp_metadata(state_dir: Path) -> Any:
    """The DCP metadata of ``state_dir``, after checking that every shard file it names is there in full."""
    import torch.distributed.checkpoint as dcp

    metadata = _read_file(
        state_dir / ".metadata", lambda _: dcp.FileSystemReader(str(state_dir)).read_metadata()
    )
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = info.offset + info.length
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, size in sorted(needed.items()):
        shard = state_dir / name
        if not shard.is_file():
            raise CorruptCheckpointError(f"{shard}: missing from the checkpoint")
        if shard.stat().st_size < size:
            raise CorruptCheckpointError(
                f"{shard}: truncated ({shard.stat().st_size} bytes, the metadata needs {size})"
            )
    return metadata


def _read_parts(
    path: Path, *, scheduler: bool, extra_names: list[str], rng: bool
) -> tuple[dict[str, Any], str | None]:
    """Every file of checkpoint ``path`` that is loaded into an object, read before any is applied.

    Returns the parts read and, when a file is missing or damaged, the error naming it (None when all
    are intact), so that the ranks can agree on it before any of them raises.
    """
    parts: dict[str, Any] = {}
    try:
        parts["metadata"] = _dcp_metadata(path / STATE_DIR)
        parts["trainer_state"] = _read_file(path / TRAINER_STATE_JSON, _json_read)
        if not isinstance(parts["trainer_state"], dict) or "step" not in parts["trainer_state"]:
            raise CorruptCheckpointError(f"{path / TRAINER_STATE_JSON}: holds no trainer state with a step")
        if (path / TRAINER_STATE_PT).exists():
            tensors = _read_file(path / TRAINER_STATE_PT, _torch_read)
            if not isinstance(tensors, dict):
                raise CorruptCheckpointError(f"{path / TRAINER_STATE_PT}: holds no trainer state")
            parts["trainer_state"].update(tensors)
        if scheduler:
            parts["scheduler"] = _read_file(path / SCHEDULER_FILE, _torch_read)
        for name in extra_names:
            parts[f"extra.{name}"] = _read_file(path / f"{name}.pt", _torch_read)
        if rng and (path / RNG_FILE).exists():
            parts["rng"] = _read_file(path / RNG_FILE, _torch_read)
            if not isinstance(parts["rng"], dict) or not {"world_size", "ranks"} <= parts["rng"].keys():
                raise CorruptCheckpointError(f"{path / RNG_FILE}: holds no RNG states of ranks")
    except CorruptCheckpointError as err:
        return parts, str(err)
    return parts, None


def _agree_intact(error: str | None) -> None:
    """Raise the first rank's :class:`CorruptCheckpointError` on every rank (collective)."""
    errors = [e for e in gather_objects(error) if e is not None]
    if errors:
        raise CorruptCheckpointError(errors[0])


def load_checkpoint(
    path: str | Path,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    extra_states: Mapping[str, Any] | None = None,
    modules: Mapping[str, tuple[Any, Any]] | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load checkpoint ``path`` into the existing objects and return its trainer state (with ``step``).

    The model, the optimizer and ``modules`` get their state from ``state/`` (resharded to this
    run's ranks); scheduler and ``extra_states`` objects get their state dicts; with ``restore_rng`` the
    global RNGs continue where this rank's left off at the save (skipped, with a warning, when the
    number of ranks changed).

    Every file is read and checked before anything is loaded: a missing, truncated or unreadable file
    (a shard shorter than the metadata says included) raises :class:`CorruptCheckpointError` naming it,
    on every rank, with no object changed by the small files (see :func:`load_latest_checkpoint`).
    A state that does not fit the objects (other model or optimizer settings) is a :class:`DataError`.
    """
    path = Path(path)
    if not _is_complete(path):
        raise DataError(f"{path}: not a complete checkpoint (no {TRAINER_STATE_JSON})")
    _check_extra_names(extra_states)
    parts, error = _read_parts(
        path, scheduler=scheduler is not None, extra_names=list(extra_states or {}), rng=restore_rng
    )
    _agree_intact(error)  # collective: a file one rank cannot read stops every rank
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    state = training_state(unwrap(model), optimizer, modules or {})
    check_saved_keys(path / STATE_DIR, state, parts["metadata"])
    try:
        with single_process_quiet():
            dcp.load(state, checkpoint_id=path / STATE_DIR)
    except (CheckpointException, ValueError, RuntimeError) as err:  # missing keys, shape mismatches
        raise DataError(
            f"{path / STATE_DIR}: the saved training state does not fit this run's model, optimizer or "
            f"critic (was it saved with other model, critic or lora settings?): {str(err)[:800]}"
        ) from None
    apply_training_state(state, unwrap(model), optimizer, modules or {})
    if scheduler is not None:
        scheduler.load_state_dict(parts["scheduler"])
    for name, obj in (extra_states or {}).items():
        obj.load_state_dict(parts[f"extra.{name}"])
    if "rng" in parts:
        saved = parts["rng"]
        if saved["world_size"] == world_size():
            restore_rng_state(saved["ranks"][rank()])
        else:
            warnings.warn(
                f"{path}: saved with {saved['world_size']} ranks, loaded with {world_size()}; "
                "RNG states not restored",
                stacklevel=2,
            )
    return parts["trainer_state"]


def load_latest_checkpoint(
    run_dir: str | Path, *, log: Callable[[str], Any] = print, **objects: Any
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest intact checkpoint of ``run_dir`` (see :func:`load_checkpoint` for ``objects``).

    A checkpoint with a damaged file is skipped with a line to ``log`` naming the file, and the one
    before it is tried (``checkpoint.keep_last`` keeps several). Returns its path and trainer state, or
    None when ``run_dir`` has no checkpoint; raises :class:`DataError` when none of them is intact.
    Collective: every rank calls it; rank 0's list of checkpoints is the one every rank tries.
    """
    checkpoints: list[Path] = broadcast_object(list_checkpoints(run_dir) if rank() == 0 else None)  # type: ignore[assignment]
    damaged: list[str] = []
    for index in range(len(checkpoints) - 1, -1, -1):
        path = checkpoints[index]
        try:
            return path, load_checkpoint(path, **objects)
        except CorruptCheckpointError as err:
            damaged.append(str(err))
            then = (
                f"falling back to the previous checkpoint, {checkpoints[index - 1].name}"
                if index > 0
                else "no earlier checkpoint is left to fall back to"
            )
            log(f"checkpoint {path.name} is damaged: {err}; {then}")
    if damaged:
        raise DataError(
            f"{Path(run_dir) / CHECKPOINTS_DIR}: no intact checkpoint to resume from "
            f"({len(damaged)} damaged, newest first: {'; '.join(damaged)}). Restore the damaged files from a "
            "copy, or start the run over with --overwrite"
        )
    return None


# ---------------------------------------------------------------------------------------------------
# LoRA


def export_merged(
    checkpoint_dir: str | Path, output_dir: str | Path, *, base_model: str | None = None
) -> Path:
    """Merge a LoRA checkpoint's adapter into its base model and save a plain Hugging Face model directory.

    ``base_model`` overrides the base recorded in the adapter config (``base_model_name_or_path``).
    The tokenizer, if the checkpoint has one, is copied too. Needs peft.
    """
    try:
        from peft import PeftConfig, PeftModel
    except ImportError:
        raise ConfigError("export_merged needs peft: pip install peft") from None
    from transformers import AutoModelForCausalLM

    from rlvr.training.model import tokenizer_from_pretrained

    checkpoint_dir, output_dir = Path(checkpoint_dir), Path(output_dir)
    if not (checkpoint_dir / ADAPTER_CONFIG).is_file():
        raise DataError(
            f"{checkpoint_dir}: no {ADAPTER_CONFIG}, so not a LoRA checkpoint; a full-weight checkpoint "
            "already loads with from_pretrained"
        )
    base_path = base_model or PeftConfig.from_pretrained(checkpoint_dir).base_model_name_or_path
    if not base_path:
        raise ConfigError(f"{checkpoint_dir / ADAPTER_CONFIG} names no base model; pass base_model=")
    try:
        base = AutoModelForCausalLM.from_pretrained(base_path)
    except OSError as err:
        raise ConfigError(f"export_merged: cannot load the base model {base_path!r} ({err})") from None
    merged = PeftModel.from_pretrained(base, checkpoint_dir).merge_and_unload()
    output_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(output_dir)
    if (checkpoint_dir / "tokenizer_config.json").is_file():
        tokenizer_from_pretrained(checkpoint_dir).save_pretrained(output_dir)
    return output_dir
