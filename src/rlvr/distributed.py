"""The few global reductions the training loop needs, correct on 1 or N ranks.

Every quantity defined over the whole batch (token counts for ``token-mean``, batch whitening,
filter counts, logged metrics) goes through :func:`all_reduce_sum`: with no process group it is the
identity, under ``torchrun`` it sums over ranks. Algorithm code calls it unconditionally, so
scaling out changes no algorithm code.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import weakref
from collections.abc import Callable

import torch
import torch.distributed as dist

LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets in every worker's environment."""


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (``--max-restarts``); 0 at first."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def init_from_environment(*, timeout_s: float, use_cuda: bool) -> bool:
    """Join the process group torchrun describes in the environment; False when not under torchrun.

    NCCL when the ranks train on CUDA devices (each rank on ``cuda:LOCAL_RANK``), gloo on CPU. A
    collective that waits more than ``timeout_s`` seconds for another rank fails instead of hanging.

    The ranks meet in torchrun's store under a prefix of their own per restart: after
    ``--max-restarts`` restarts a group, the addresses the previous group left there must not be
    read (gloo would try to connect to ranks that no longer exist).
    """
    if is_distributed():
        return True
    if not launched_by_torchrun():
        return False
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    timeout = datetime.timedelta(seconds=timeout_s)
    size, me = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        size,
        is_master=not agent_store and me == 0,
        timeout=timeout,
    )
    store = dist.PrefixStore(f"rlvr/attempt-{restart_count()}", store)
    dist.init_process_group(backend, store=store, rank=me, world_size=size, timeout=timeout)
    return True


_BEFORE_LEAVING: list[weakref.WeakMethod] = []


def before_leaving(close: Callable[[], None]) -> None:
    """Run the bound method ``close`` when this process leaves its process group (:func:`shutdown`),
    before the group is destroyed: for what shares the group and tears down groups of its own on
    exit (an in-process vLLM engine builds its groups on top of the trainer's). Held by a weak
    reference: an object dropped before then is not kept alive for it."""
    _BEFORE_LEAVING.append(weakref.WeakMethod(close))  # type: ignore[arg-type]


def shutdown(synchronize: bool = False) -> None:
    """Leave the process group. With ``synchronize`` (a run that ended normally) every rank first waits
    for the others: a rank that tears its group down while another still works (rank 0 writing the
    final model) can abort at exit. After an error there is no waiting: another rank may be dead.
    What :func:`before_leaving` registered runs first (errors in it are ignored: the process is
    leaving)."""
    if is_distributed():
        if synchronize:
            dist.barrier()
        while _BEFORE_LEAVING:
            close = _BEFORE_LEAVING.pop()()
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
        if is_distributed():  # what ran before may have destroyed the default group itself
            dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of ``tensor`` over all ranks (a new tensor; the input is not modified).

    Differentiable inputs are detached: reductions are for statistics, not for gradients.
    """
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum of ``tensor`` over all ranks."""
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
