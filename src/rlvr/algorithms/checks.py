"""Argument checks shared by the algorithm functions.

Each check raises :class:`~rlvr.errors.ShapeError` naming the argument, its shape or dtype, and
what was expected, before any arithmetic runs.
"""

from __future__ import annotations

import torch

from rlvr.errors import ShapeError


def check_tensor(x: object, name: str, ndim: int | tuple[int, ...] | None = None) -> torch.Tensor:
    """Check that ``x`` is a tensor with ``ndim`` dimensions (one of them, for a tuple)."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.dim() not in allowed:
            want = " or ".join(f"{d}-D" for d in allowed)
            raise ShapeError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    return x


def check_mask(mask: object, name: str = "mask", shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """Check a response mask: a bool or floating tensor (0/1), of ``shape`` when given.

    Integer masks are refused: sums and Bessel factors computed with them differ from the float
    ones in some code paths, so the caller converts once, explicitly (``mask.bool()``).
    """
    mask = check_tensor(mask, name)
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise ShapeError(
            f"{name} must be a bool or floating tensor, got dtype {mask.dtype}; "
            f"convert it once with {name}.bool()"
        )
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise ShapeError(f"{name} must have shape {tuple(shape)}, got {tuple(mask.shape)}")
    return mask


def check_same_shape(reference_name: str, reference: torch.Tensor, **others: torch.Tensor | None) -> None:
    """Check that every tensor in ``others`` (``None`` is skipped) has the shape of ``reference``."""
    for name, t in others.items():
        if t is None:
            continue
        check_tensor(t, name)
        if t.shape != reference.shape:
            raise ShapeError(
                f"{name} has shape {tuple(t.shape)} but {reference_name} has shape "
                f"{tuple(reference.shape)}; they must match"
            )


def float_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The mask cast once to the computation dtype."""
    return mask.to(dtype)


def check_group_ids(group_ids: object, batch_size: int) -> torch.Tensor:
    """Check group ids: a 1-D integer tensor with one id per completion."""
    group_ids = check_tensor(group_ids, "group_ids", 1)
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ShapeError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if group_ids.shape[0] != batch_size:
        raise ShapeError(
            f"group_ids has {group_ids.shape[0]} entries but the batch has {batch_size} completions"
        )
    return group_ids


def group_ids_from_size(
    batch_size: int, group_size: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Group ids for a batch laid out as consecutive groups: [0]*g + [1]*g + ...

    >>> group_ids_from_size(6, 3).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    if group_size <= 0:
        raise ShapeError(f"group_size must be positive, got {group_size}")
    if batch_size % group_size != 0:
        raise ShapeError(
            f"group_size {group_size} does not divide the batch of {batch_size} completions "
            f"(remainder {batch_size % group_size})"
        )
    return torch.arange(batch_size // group_size, device=device).repeat_interleave(group_size)
