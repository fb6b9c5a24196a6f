"""How the ranks of a ``torchrun`` job hold the models: ``ddp`` replicas or ``fsdp2`` shards.

==========  ======================  ==========================================  ===================
strategy    parameters per rank     gradients                                   optimizer state
==========  ======================  ==========================================  ===================
none        all (one process only)  --                                          all
ddp         all                     all-reduced (mean) once per optimizer step  all
fsdp2       1/N                     reduce-scattered (mean) in every backward   1/N
==========  ======================  ==========================================  ===================

FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every decoder layer (the classes a Hugging Face
model lists in ``_no_split_modules``) and then the root, so one layer's parameters are gathered at a
time in the update. Generation runs many short forward passes whose number differs between ranks,
so :meth:`Parallel.gathered` gathers the whole model once before it and reshards after: during
rollouts every rank holds all the parameters (in the compute dtype), the memory cost of not keeping
a second copy of the model.

The training loop is the same for every strategy. Two rules keep the ranks in step: every rank
runs the same number of forward and backward passes (:func:`rlvr.training.batch.aligned_micro_batches`),
and every loss is a share of a global sum, scaled by the world size because gradients are averaged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from rlvr.config import ParallelConfig
from rlvr.distributed import is_distributed, world_size
from rlvr.errors import ConfigError

GRADIENT_BUCKET_ELEMENTS = 2**25
"""ddp: gradients are all-reduced in flat buckets of at most this many elements (128 MiB in fp32)."""


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of a Hugging Face model (``_no_split_modules``), in order."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in module.modules() if type(m).__name__ in names]


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def clip_grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The global gradient norm (a plain tensor, also for sharded gradients), clipped to ``max_norm``
    (``max_norm <= 0`` only measures it)."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if _is_dtensor(norm):
        norm = norm.full_tensor()
    return norm


class Parallel:
    """The strategy of a run (``parallel.*``), applied to each model it is given.

    Without a process group every method is a no-op, whatever ``parallel.strategy`` says.
    """

    def __init__(self, config: ParallelConfig, device: torch.device | None = None) -> None:
        self.config = config
        self.world = world_size()
        if config.cpu_offload and (device is None or device.type != "cuda") and is_distributed():
            raise ConfigError(
                "setting 'parallel.cpu_offload' keeps shards in CPU memory while a GPU computes; this run "
                "trains on the CPU already (training.device), so leave it false"
            )
        if is_distributed() and self.world > 1 and config.strategy == "none":
            raise ConfigError(
                f"setting 'parallel.strategy' is none but torchrun started {self.world} processes; "
                "set parallel.strategy=ddp or parallel.strategy=fsdp2"
            )
        self.strategy = config.strategy if is_distributed() else "none"

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp2"

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """Shard ``module`` (fsdp2) or make its replicas identical (ddp); before its optimizer exists."""
        if self.strategy == "fsdp2":
            self._shard(module)
        elif self.strategy == "ddp":
            with torch.no_grad():
                for tensor in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(tensor.data, src=0)
        return module

    def _shard(self, module: torch.nn.Module) -> None:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        options: dict[str, Any] = {"reshard_after_forward": True}
        if self.config.mixed_precision == "bfloat16":
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        if self.config.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        for layer in decoder_layers(module):
            fully_shard(layer, **options)
        fully_shard(module, **options)

    @contextlib.contextmanager
    def gathered(self, *modules: torch.nn.Module) -> Iterator[None]:
        """All parameters of ``modules`` gathered on every rank for the duration (fsdp2), then resharded.

        Inside, forward passes run no collective, so ranks may run different numbers of them.
        """
        if self.strategy != "fsdp2":
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        units = [m for module in modules for m in module.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for unit in units:
                unit.set_reshard_after_forward(True, recurse=False)
                unit.reshard()

    def reduce_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """ddp: replace every gradient by its mean over the ranks (a missing gradient counts as zero).

        fsdp2 reduces in the backward pass itself; one process has nothing to do.
        """
        if self.strategy != "ddp" or self.world == 1:
            return
        params = [p for p in params if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        bucket: list[torch.Tensor] = []
        size = 0
        for p in params:
            bucket.append(p.grad)
            size += p.grad.numel()
            if size >= GRADIENT_BUCKET_ELEMENTS:
                self._all_reduce_mean(bucket)
                bucket, size = [], 0
        if bucket:
            self._all_reduce_mean(bucket)

    def _all_reduce_mean(self, grads: list[torch.Tensor]) -> None:
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads), strict=True):
            grad.copy_(synced)

    def describe(self) -> str:
        if self.strategy == "none":
            return "one process"
        extra = ""
        if self.sharded:
            extra = f", mixed precision {self.config.mixed_precision}, CPU offload {self.config.cpu_offload}"
        return f"{self.world} ranks, strategy {self.strategy}{extra}"
