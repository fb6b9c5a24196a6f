"""The training state of replicated or sharded models, as ``torch.distributed.checkpoint`` saves it.

The state of a model and its optimizer is their trainable weights and optimizer state, by parameter
name (``get_state_dict``); DCP writes each rank's shard and reshards on load, so the same state
loads on any number of ranks. The Hugging Face export of a sharded model is gathered on rank 0.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from rlvr.distributed import rank
from rlvr.errors import DataError


def unwrap(model: Any) -> Any:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def is_peft_model(model: Any) -> bool:
    peft = sys.modules.get("peft")  # a peft model implies peft is imported
    return peft is not None and isinstance(model, peft.PeftModel)


def is_sharded(model: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def state_options(*, for_loading: bool = False) -> Any:
    """Trainable weights only; loading them leaves the frozen ones (DCP has already checked that
    every trainable weight is in the checkpoint)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=not for_loading)


def training_state(model: Any, optimizer: Any, modules: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """The DCP state: trainable weights and optimizer state of the model and of each of ``modules``."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    state: dict[str, Any] = {}
    for prefix, (module, opt) in {"": (model, optimizer), **modules}.items():
        key = f"{prefix}." if prefix else ""
        if opt is None:
            state[f"{key}model"] = get_model_state_dict(module, options=state_options())
        else:
            state[f"{key}model"], state[f"{key}optimizer"] = get_state_dict(
                module, optimizers=opt, options=state_options()
            )
    return state


def apply_training_state(
    state: dict[str, Any], model: Any, optimizer: Any, modules: Mapping[str, tuple[Any, Any]]
) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_state_dict

    for prefix, (module, opt) in {"": (model, optimizer), **modules}.items():
        key = f"{prefix}." if prefix else ""
        if opt is None:
            set_model_state_dict(module, state[f"{key}model"], options=state_options(for_loading=True))
        else:
            set_state_dict(
                module,
                optimizers=opt,
                model_state_dict=state[f"{key}model"],
                optim_state_dict=state[f"{key}optimizer"],
                options=state_options(for_loading=True),
            )


@contextlib.contextmanager
def single_process_quiet() -> Iterator[None]:
    """DCP warns that it runs in a single process when there is no process group: that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _flat_keys(state: Mapping[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in state.items():
        name = f"{prefix}{key}"
        keys |= _flat_keys(value, f"{name}.") if isinstance(value, Mapping) else {name}
    return keys


def check_saved_keys(directory: Path, state: Mapping[str, Any], metadata: Any = None) -> None:
    """Weights the checkpoint has but the model lacks are an error (DCP would skip them silently).

    ``metadata`` is the DCP metadata of ``directory`` when the caller has read it already.
    """
    if metadata is None:
        import torch.distributed.checkpoint as dcp

        metadata = dcp.FileSystemReader(str(directory)).read_metadata()
    saved = metadata.state_dict_metadata
    wanted = _flat_keys(state)
    prefixes = tuple(f"{key}." for key in state if key == "model" or key.endswith(".model"))
    extra = sorted(k for k in saved if k.startswith(prefixes) and k not in wanted)
    if extra:
        raise DataError(
            f"{directory}: the checkpoint holds weights this model does not have: {extra[:5]} "
            "(was it saved with other model, critic or lora settings?)"
        )


def export_state(model: Any) -> dict[str, torch.Tensor] | None:
    """The state dict a sharded model's Hugging Face export is written from, on rank 0 (None on
    the others); collective. None for a replicated model, which ``save_pretrained`` reads itself.

    Tied weights (an LM head that is the embedding) are gathered once and exported under the
    name ``save_pretrained`` keeps, so that both exports hold the same keys.
    """
    model = unwrap(model)
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(
        full_state_dict=True, cpu_offload=True, ignore_frozen_params=is_peft_model(model)
    )
    state = get_model_state_dict(model, options=options)
    if rank() != 0:
        return None
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):  # a tied pair is one Parameter
        if id(param) in seen:
            state.pop(name, None)
        seen.add(id(param))
    return state
