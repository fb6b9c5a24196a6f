"""Hugging Face model directories read and written tensor by tensor, without loading a model.

Reading: :func:`open_tensor_files` opens the safetensors files of a model directory
(``model.safetensors``, or the shards that ``model.safetensors.index.json`` lists) and gives each
tensor's dtype and shape from the file headers alone, and the tensor or a slice of its rows on demand
(only those bytes are read).

Writing: :func:`write_shard` writes a safetensors file whose tensors are planned beforehand
(:class:`TensorPlan`: name, dtype, shape), each tensor's data appended slice by slice as it is
computed, so that no more than one slice is ever held in memory. The format is safetensors': an
8-byte little-endian header length, a JSON header (name -> dtype, shape, byte offsets), then the data
back to back. :func:`plan_shards` cuts a model into files of a bounded size and
:func:`write_index` writes the index that ``from_pretrained`` reads for a sharded model.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlvr.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where it is used: `rlvr --help` stays quick
    import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CHUNK_ELEMENTS = 1 << 22
"""Elements of a tensor read or written at a time (whole rows)."""

TORCH_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E5M2": "float8_e5m2",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
"""safetensors dtype codes and the torch dtypes (by name) they hold."""
ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}
ITEM_BYTES.update({"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1})
FLOAT_CODES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (``BF16`` -> ``torch.bfloat16``)."""
    import torch

    return getattr(torch, TORCH_DTYPES[code])


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is a DataError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


# --- reading --------------------------------------------------------------------------------------


@dataclass
class TensorFiles:
    """The tensors of one model directory: the name the user gave it, the directory, and the open
    safetensors file holding each tensor."""

    label: str
    path: Path
    handles: dict[str, Any]

    def info(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype code such as ``BF16``, shape) of a tensor, from the file header."""
        view = self.handles[name].get_slice(name)
        return view.get_dtype(), tuple(view.get_shape())

    def read(self, name: str, rows: slice | None = None) -> torch.Tensor:
        """A tensor, or the rows ``rows`` of it."""
        if rows is None:
            return self.handles[name].get_tensor(name)
        return self.handles[name].get_slice(name)[rows]


def weight_files(path: Path, label: str) -> dict[str, list[str] | None]:
    """Each safetensors file of a model directory, with the tensors its index puts there (None: all)."""
    if (path / INDEX_FILE).is_file():
        weight_map = read_json(path / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise DataError(f"{path / INDEX_FILE}: no 'weight_map' of tensor names to files")
        files: dict[str, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(str(file), []).append(name)
        return dict(files)
    if (path / SINGLE_FILE).is_file():
        return {SINGLE_FILE: None}
    if (path / "adapter_config.json").is_file():
        raise ConfigError(
            f"model {label!r} ({path}) holds a LoRA adapter, not full weights; merge the adapter into "
            "its base first (peft's merge_and_unload, then save_pretrained)"
        )
    if any(path.glob("pytorch_model*.bin")):
        raise ConfigError(
            f"model {label!r} ({path}) has only pytorch_model.bin weights; rlvr reads safetensors (load "
            "it and save it again with save_pretrained(..., safe_serialization=True))"
        )
    raise ConfigError(f"model {label!r} ({path}) has no {SINGLE_FILE} or {INDEX_FILE}")


def open_tensor_files(path: Path, label: str, stack: ExitStack) -> TensorFiles:
    """Open the safetensors files of the model directory ``path``; they stay open until ``stack``
    closes."""
    from safetensors import safe_open

    handles: dict[str, Any] = {}
    for file, names in weight_files(path, label).items():
        try:
            handle = stack.enter_context(safe_open(str(path / file), framework="pt"))
        except Exception as e:  # missing, truncated, or not safetensors
            raise DataError(f"model {label!r}: cannot read {path / file} ({e})") from None
        stored = set(handle.keys())
        for name in names if names is not None else sorted(stored):
            if name not in stored:
                raise DataError(f"{path / INDEX_FILE} puts tensor {name!r} in {file}, which does not hold it")
            handles[name] = handle
    return TensorFiles(label, path, handles)


def row_slices(shape: tuple[int, ...], chunk_elements: int = CHUNK_ELEMENTS) -> list[slice | None]:
    """Slices of whole rows of at most ``chunk_elements`` elements (None: the tensor at once; a row
    larger than that is a slice of its own)."""
    if len(shape) == 0 or math.prod(shape) <= chunk_elements:
        return [None]
    rows = max(1, chunk_elements // math.prod(shape[1:]))
    return [slice(start, min(start + rows, shape[0])) for start in range(0, shape[0], rows)]


# --- writing --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorPlan:
    """One tensor to write: name, safetensors dtype code and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEM_BYTES[self.dtype]


def plan_shards(tensors: Sequence[TensorPlan], max_bytes: int) -> list[list[TensorPlan]]:
    """The tensors in order, cut into files of at most ``max_bytes`` (a larger tensor gets a file of
    its own)."""
    shards: list[list[TensorPlan]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards


def shard_names(count: int) -> list[str]:
    """File names of ``count`` shards, as ``save_pretrained`` names them."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def safetensors_header(tensors: Sequence[TensorPlan]) -> bytes:
    """The header of a safetensors file holding ``tensors`` back to back in this order: the length N of
    the JSON (8 bytes, little-endian), then N bytes of JSON padded with spaces so that the data starts
    8-byte aligned."""
    entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        entries[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write_shard(
    path: Path, tensors: Sequence[TensorPlan], chunks: Callable[[TensorPlan], Iterator[torch.Tensor]]
) -> None:
    """Write the safetensors file ``path``, each tensor's data as ``chunks`` yields it (consecutive
    slices of rows, in the planned dtype), then fsync it."""
    import torch

    with open(path, "wb") as f:
        f.write(safetensors_header(tensors))
        for t in tensors:
            written = 0
            for chunk in chunks(t):
                if chunk.dtype != torch_dtype(t.dtype):
                    raise ValueError(f"tensor {t.name!r}: a slice of {chunk.dtype} for a {t.dtype} tensor")
                data = chunk.contiguous().reshape(-1).view(torch.uint8).numpy()
                f.write(data.data)
                written += data.nbytes
            if written != t.nbytes:
                raise ValueError(f"tensor {t.name!r}: {written} bytes written, {t.nbytes} planned")
        f.flush()
        os.fsync(f.fileno())


def write_index(directory: Path, shards: Sequence[Sequence[TensorPlan]], files: Sequence[str]) -> None:
    """``model.safetensors.index.json``: the total size and the file of every tensor."""
    weight_map = {t.name: file for file, shard in zip(files, shards, strict=True) for t in shard}
    total = sum(t.nbytes for shard in shards for t in shard)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
