"""The global random-number generators' state: captured into a checkpoint, restored on resume.

Covers python ``random``, numpy's legacy global generator (if numpy is installed), torch CPU and torch
CUDA on every device (when CUDA is available). Generators a program creates itself
(``torch.Generator``, ``numpy.random.Generator``) are not global: save them in the trainer state.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from rlvr.distributed import is_distributed, world_size


def capture_rng_state() -> dict[str, Any]:
    """The state of every global RNG of this process, as tensors and plain Python values.

    The result is ``torch.save``-able and loads back with ``torch.load(weights_only=True)``.
    """
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        kind, key, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {
            "kind": kind,
            "key": torch.from_numpy(key.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the global RNGs to a state from :func:`capture_rng_state`; parts absent from it are left alone."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        try:
            import numpy as np
        except ImportError:
            warnings.warn("the saved RNG state has a numpy part but numpy is not installed", stacklevel=2)
        else:
            s = state["numpy"]
            key = s["key"].numpy().astype(np.uint32)
            np.random.set_state((s["kind"], key, s["pos"], s["has_gauss"], s["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            warnings.warn(
                f"the saved RNG state has CUDA states of {len(cuda_states)} devices but "
                f"{torch.cuda.device_count()} are visible; CUDA RNG state not restored",
                stacklevel=2,
            )


def gather_rng_states() -> list[dict[str, Any]]:
    """The RNG state of every rank, indexed by rank (a collective call under a process group)."""
    local = capture_rng_state()
    if not is_distributed():
        return [local]
    import torch.distributed as dist

    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, local)
    return states
