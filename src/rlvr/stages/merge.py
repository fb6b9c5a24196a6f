"""``rlvr merge``: one model out of several of the same architecture, by a weighted average (Kimi
k1.5's long2short merging) or by task arithmetic::

    average          θ = Σᵢ wᵢ θᵢ                      (Σᵢ wᵢ = 1)
    task arithmetic  θ = θ_base + Σᵢ wᵢ (θᵢ − θ_base)

The inputs are model directories, ``toy`` (the model shipped with rlvr) or ``rlvr train`` run
directories (their ``final`` model). All they must share is checked before a byte is written: the
architecture (config.json's model_type, architectures and the fields that fix tensor shapes), the set
of tensor names, each tensor's shape and dtype, and the tokenizer's vocabulary; a mismatch is an
error naming it and the two models.

The merge streams: each tensor is read from the inputs' safetensors files (``model.safetensors``, or
shards listed in ``model.safetensors.index.json``) a slice of rows at a time, combined in float64,
rounded once to the output dtype and appended to the output file, so memory stays near one slice of
each input whatever the size of the model. The output is a model directory that ``from_pretrained``
loads: safetensors (shards and an index beyond ``max_shard_size``), the first model's config.json,
generation_config.json and tokenizer, and ``merge.json`` (the recipe). It is written into a hidden
sibling directory that is renamed into place at the end: an interrupted merge leaves no half-written
output.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlvr.errors import ConfigError, DataError, ShapeError
from rlvr.training.tensor_files import (
    CHUNK_ELEMENTS,
    FLOAT_CODES,
    TORCH_DTYPES,
    TensorFiles,
    TensorPlan,
    open_tensor_files,
    plan_shards,
    read_json,
    row_slices,
    shard_names,
    torch_dtype,
    write_index,
    write_shard,
)

if TYPE_CHECKING:  # torch is imported where it is used: `rlvr --help` stays quick
    import torch

MERGE_RECORD = "merge.json"
OUTPUT_EMBEDDING = "lm_head.weight"
"""The output embedding of a Hugging Face causal LM; with tie_word_embeddings it is the input
embedding, so it is not stored and ``from_pretrained`` ties it back."""
ARCHITECTURE_FIELDS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "tie_word_embeddings",
    "num_experts",
    "num_local_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
)
"""The config.json fields two models must agree on (a field absent from both is no difference)."""
WEIGHT_SUM_TOLERANCE = 1e-6
PROGRESS_EVERY_S = 5.0
"""Seconds between two progress lines on the console."""

_OUTPUT_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


# --- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeConfig:
    """Settings of ``rlvr merge``: from a YAML file, ``key=value`` items and flags (flags win)."""

    models: list[str] = field(default_factory=list)
    """The models to merge: model directories, 'toy', or `rlvr train` run directories (their final
    model); two or more, or one with a base. The first gives the output its config.json, generation
    config and tokenizer."""
    weights: list[float] | None = None
    """One finite weight per model. Averaging: they must sum to 1 unless normalize is set; None gives
    each model 1/n. Task arithmetic: the coefficient of each task vector, any sum; required."""
    base: str | None = None
    """None: average the models. A model (named as in models): task arithmetic,
    base + sum_i w_i (model_i - base)."""
    normalize: bool = False
    """Divide the weights by their sum (which must not be 0) before merging."""
    output: str | None = None
    """The model directory to write (required)."""
    overwrite: bool = False
    """Replace an output directory that is not empty; otherwise it is refused."""
    dtype: Literal["input", "float32", "bfloat16", "float16"] = "input"
    """Dtype of the merged floating-point tensors: 'input' keeps each tensor's stored dtype, which must
    then be the same in every model; a dtype name converts every one to it (the inputs may differ)."""
    max_shard_size: str = "5GB"
    """Largest safetensors file written (5GB, 500MB, 2GiB, ...); a larger model is written in shards
    with model.safetensors.index.json."""


def validate_merge_config(c: MergeConfig) -> None:
    """Refuse settings that cannot merge, naming the setting."""
    if not c.models:
        raise ConfigError("setting 'models' is empty; name the models to merge")
    if c.base is None and len(c.models) < 2:
        raise ConfigError(f"averaging needs two or more models, got {len(c.models)} (or pass a base)")
    if not c.output:
        raise ConfigError("setting 'output' is required: the model directory to write (--output DIR)")
    if c.dtype not in ("input", *_OUTPUT_CODES):
        raise ConfigError(f"setting 'dtype' must be input, float32, bfloat16 or float16, got {c.dtype!r}")
    if c.weights is None:
        if c.base is not None:
            raise ConfigError("task arithmetic (a base is given) needs setting 'weights', one per model")
        return
    if len(c.weights) != len(c.models):
        raise ConfigError(f"setting 'weights' gives {len(c.weights)} weight(s) for {len(c.models)} models")
    for i, w in enumerate(c.weights):
        if not math.isfinite(w):
            raise ConfigError(f"setting 'weights': the weight of model {c.models[i]!r} is {w}, not finite")
    total = math.fsum(c.weights)
    if c.normalize and total == 0:
        raise ConfigError("setting 'normalize': the weights sum to 0 and cannot be divided by their sum")
    if c.base is None and not c.normalize and abs(total - 1) > WEIGHT_SUM_TOLERANCE:
        raise ConfigError(
            f"setting 'weights' sums to {total:g}; an average needs weights that sum to 1 "
            "(pass --normalize to divide them by their sum)"
        )


def merge_weights(c: MergeConfig) -> list[float]:
    """The weights the merge applies: as given, 1/n each when none are given, divided by their sum
    under ``normalize``."""
    weights = list(c.weights) if c.weights is not None else [1.0 / len(c.models)] * len(c.models)
    if c.normalize:
        total = math.fsum(weights)
        weights = [w / total for w in weights]
    return weights


def load_merge_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    flags: dict[str, Any] | None = None,
) -> MergeConfig:
    """The validated settings from defaults, a YAML file, ``key=value`` items, then flags."""
    from rlvr.config import merge_layers, parse_overrides, read_yaml

    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    if overrides:
        layers.append(("command line", parse_overrides(list(overrides))))
    if flags:
        layers.append(("command-line flags", {k: v for k, v in flags.items() if v is not None}))
    config: MergeConfig = merge_layers(layers, MergeConfig)
    validate_merge_config(config)
    return config


# --- the math -------------------------------------------------------------------------------------


def _check_terms(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> None:
    if not tensors or len(tensors) != len(weights):
        raise ShapeError(f"{len(tensors)} tensors and {len(weights)} weights; need one weight per tensor")
    for t in tensors:
        if not t.is_floating_point():
            raise ShapeError(f"merging needs floating-point tensors, got {t.dtype}")
        if t.shape != tensors[0].shape:
            raise ShapeError(f"tensors of shapes {list(tensors[0].shape)} and {list(t.shape)} cannot merge")


def weighted_average(
    tensors: Sequence[torch.Tensor], weights: Sequence[float], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """θ = Σᵢ wᵢ θᵢ, one tensor of several models of the same architecture.

    Kimi k1.5's long2short model merging (Kimi Team 2025, arXiv 2501.12599, sec. 2.4) averages a
    long-chain-of-thought model with a short one this way. The weights are applied as given (the
    caller makes them sum to 1). Computed in float64 and rounded once to ``dtype`` (default: the dtype
    of ``tensors[0]``); a term of weight 0 is left out, so weights (1, 0) return the first tensor bit
    for bit and a zero weight never turns an infinity into NaN.

    Example: tensors [1., 2.] and [3., 6.] with weights (0.5, 0.5) give [2., 4.].
    """
    import torch

    _check_terms(tensors, weights)
    total: torch.Tensor | None = None
    for tensor, weight in zip(tensors, weights, strict=True):
        if weight == 0:
            continue
        term = tensor.to(torch.float64) * weight
        total = term if total is None else total.add_(term)
    if total is None:
        total = torch.zeros(tensors[0].shape, dtype=torch.float64)
    return total.to(dtype or tensors[0].dtype)


def task_arithmetic(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """θ = θ_base + Σᵢ wᵢ (θᵢ − θ_base), one tensor of a base model and models fine-tuned from it.

    Task arithmetic (Ilharco et al. 2023, "Editing Models with Task Arithmetic", arXiv 2212.04089,
    sec. 2): τᵢ = θᵢ − θ_base is the task vector of model i, and the merged model adds the scaled
    task vectors to the base (the paper scales their sum by one λ: wᵢ = λ for every i; a negative
    weight subtracts a task). With weights summing to 1 it is the weighted average of the models.
    Computed in float64 and rounded once to ``dtype`` (default: the dtype of ``base``).

    Example: base [1., 1.], model [3., 0.], weight 0.5 give [2., 0.5].
    """
    import torch

    _check_terms([base, *tensors], [1.0, *weights])
    base64 = base.to(torch.float64)
    total = base64.clone()
    for tensor, weight in zip(tensors, weights, strict=True):
        if weight != 0:
            total.add_((tensor.to(torch.float64) - base64) * weight)
    return total.to(dtype or base.dtype)


# --- reading the inputs ---------------------------------------------------------------------------


def resolve_input(spec: str) -> Path:
    """The model directory ``spec`` names: ``toy``, the ``final`` model of a run directory, or itself."""
    from rlvr.evaluation.run import is_run_dir
    from rlvr.training.model import resolve_model_path

    path = Path(resolve_model_path(spec))
    if is_run_dir(path):
        if not (path / "final").is_dir():
            raise ConfigError(
                f"model {spec!r} is a run directory without a final model (was it interrupted?); "
                f"name one of its checkpoints instead ({path / 'checkpoints'}/step-...)"
            )
        return path / "final"
    if not path.is_dir():
        raise ConfigError(
            f"model {spec!r} is not a directory; merge reads local model directories (download a hub "
            "model first, for example with `hf download NAME --local-dir DIR`)"
        )
    return path


@dataclass
class InputModel:
    """One input: its config.json and its tensors, read on demand."""

    config: dict[str, Any]
    tensors: TensorFiles

    @property
    def label(self) -> str:
        return self.tensors.label

    @property
    def path(self) -> Path:
        return self.tensors.path


def open_model(spec: str, stack: ExitStack) -> InputModel:
    """The model ``spec`` names, opened for reading tensor by tensor until ``stack`` closes."""
    path = resolve_input(spec)
    if not (path / "config.json").is_file():
        raise ConfigError(f"model {spec!r} ({path}) has no config.json")
    return InputModel(read_json(path / "config.json"), open_tensor_files(path, spec, stack))


# --- checks ---------------------------------------------------------------------------------------


def merged_names(model: InputModel, tied: bool) -> set[str]:
    """The tensors to merge: all of them, less the output embedding when the embeddings are tied."""
    return {name for name in model.tensors.handles if not (tied and name == OUTPUT_EMBEDDING)}


def check_architecture(ref: InputModel, other: InputModel) -> None:
    for key in ARCHITECTURE_FIELDS:
        a, b = ref.config.get(key), other.config.get(key)
        if a != b:
            raise ConfigError(
                f"models {ref.label!r} and {other.label!r} differ in architecture: config.json {key!r} is "
                f"{a!r} in {ref.label!r} and {b!r} in {other.label!r}"
            )


def check_tensors(ref: InputModel, other: InputModel, names: set[str], same_dtype: bool) -> None:
    """Same tensor names, shapes and (when ``same_dtype``) dtypes in ``other`` as in ``ref``."""
    others = merged_names(other, ref.config.get("tie_word_embeddings") is True)
    for missing, has, lacks in ((names - others, ref, other), (others - names, other, ref)):
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ConfigError(
                f"tensor {min(missing)!r} is in model {has.label!r} but not in {lacks.label!r}{more}"
            )
    for name in sorted(names):
        (dtype_a, shape_a), (dtype_b, shape_b) = ref.tensors.info(name), other.tensors.info(name)
        if shape_a != shape_b:
            raise ConfigError(
                f"tensor {name!r} has shape {list(shape_a)} in model {ref.label!r} and {list(shape_b)} "
                f"in {other.label!r}"
            )
        if same_dtype and dtype_a != dtype_b:
            raise ConfigError(
                f"tensor {name!r} is {dtype_a} in model {ref.label!r} and {dtype_b} in {other.label!r} "
                "(set dtype=float32, bfloat16 or float16 to convert both)"
            )


def load_tokenizer_of(model: InputModel) -> Any:
    from rlvr.training.model import tokenizer_from_pretrained

    try:
        return tokenizer_from_pretrained(model.path)
    except (OSError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(
            f"cannot load the tokenizer of model {model.label!r} ({model.path}): {first}"
        ) from None


def check_vocabulary(
    ref: InputModel, ref_vocab: dict[str, int], other: InputModel, vocab: dict[str, int]
) -> None:
    """The same token for every id; the first difference (by id) is named."""
    if ref_vocab == vocab:
        return
    differ = [t for t in ref_vocab.keys() | vocab.keys() if ref_vocab.get(t) != vocab.get(t)]
    token = min(differ, key=lambda t: (min(i for i in (ref_vocab.get(t), vocab.get(t)) if i is not None), t))

    def where(v: dict[str, int], label: str) -> str:
        return f"id {v[token]} in {label!r}" if token in v else f"absent from {label!r}"

    raise ConfigError(
        f"models {ref.label!r} and {other.label!r} have different tokenizers: token {token!r} is "
        f"{where(ref_vocab, ref.label)} and {where(vocab, other.label)} ({len(differ)} tokens differ)"
    )


# --- writing the output ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MergeResult:
    """What a merge wrote: the directory, its files, the number of tensors and their bytes."""

    output: Path
    files: list[str]
    tensors: int
    total_bytes: int


def check_output(output: Path, overwrite: bool, inputs: Sequence[InputModel]) -> None:
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output {output} is a file, not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConfigError(f"output {output} is not empty; pass --overwrite (overwrite=true) to replace it")
    for model in inputs:
        if model.path.resolve().is_relative_to(output.resolve()):
            raise ConfigError(f"output {output} holds model {model.label!r}, which it would replace")


def _merged_chunks(
    models: Sequence[InputModel], weights: Sequence[float], base: InputModel | None, out: TensorPlan
) -> Iterator[torch.Tensor]:
    """The output tensor ``out``, slice by slice: the weighted average or task arithmetic of the inputs'
    slices; a tensor that is not floating point (a buffer of ids, a mask) must be equal in all inputs."""
    import torch

    live = [(m, w) for m, w in zip(models, weights, strict=True) if w != 0]
    inputs = [base] if base is not None else []
    for rows in row_slices(out.shape, CHUNK_ELEMENTS):
        if out.dtype not in FLOAT_CODES:
            everyone = [*inputs, *models]
            parts = [m.tensors.read(out.name, rows) for m in everyone]
            for m, part in zip(everyone[1:], parts[1:], strict=True):
                if not torch.equal(part, parts[0]):
                    raise DataError(
                        f"tensor {out.name!r} ({part.dtype}, not floating point) differs between models "
                        f"{everyone[0].label!r} and {m.label!r}: it can be copied, not averaged"
                    )
            yield parts[0]
        elif base is None:
            yield weighted_average(
                [m.tensors.read(out.name, rows) for m, _ in live],
                [w for _, w in live],
                torch_dtype(out.dtype),
            )
        else:
            parts = [m.tensors.read(out.name, rows) for m, _ in live]
            yield task_arithmetic(
                base.tensors.read(out.name, rows), parts, [w for _, w in live], torch_dtype(out.dtype)
            )


def _output_config(ref: InputModel, plans: Sequence[TensorPlan]) -> dict[str, Any]:
    """The first model's config.json, its dtype set to that of the merged floating-point tensors."""
    config = dict(ref.config)
    codes = {p.dtype for p in plans if p.dtype in FLOAT_CODES}
    if len(codes) == 1 and next(iter(codes)) in ("F64", "F32", "F16", "BF16"):
        name = TORCH_DTYPES[next(iter(codes))]
        config["dtype"] = name
        if "torch_dtype" in config:
            config["torch_dtype"] = name
    return config


def _write_model_files(tmp: Path, ref: InputModel, tokenizer: Any, plans: Sequence[TensorPlan]) -> list[str]:
    """Everything but the weights: config, generation config, tokenizer, remote code of the first model."""
    (tmp / "config.json").write_text(
        json.dumps(_output_config(ref, plans), indent=2) + "\n", encoding="utf-8"
    )
    if (ref.path / "generation_config.json").is_file():
        shutil.copyfile(ref.path / "generation_config.json", tmp / "generation_config.json")
    if "auto_map" in ref.config:  # a model with its own code (trust_remote_code) needs its .py files
        for source in ref.path.glob("*.py"):
            shutil.copyfile(source, tmp / source.name)
    tokenizer.save_pretrained(str(tmp))
    return sorted(p.name for p in tmp.iterdir())


def check_inputs(
    models: Sequence[InputModel], base: InputModel | None, same_dtype: bool
) -> tuple[Any, set[str]]:
    """Every input against the first model: architecture, tensor names and shapes (and dtypes when
    ``same_dtype``), vocabulary. Returns the first model's tokenizer and the names to merge."""
    ref = models[0]
    names = merged_names(ref, ref.config.get("tie_word_embeddings") is True)
    tokenizer = load_tokenizer_of(ref)
    for other in [m for m in [base, *models[1:]] if m is not None]:
        check_architecture(ref, other)
        check_tensors(ref, other, names, same_dtype)
        check_vocabulary(ref, tokenizer.get_vocab(), other, load_tokenizer_of(other).get_vocab())
    return tokenizer, names


def plan_tensors(ref: InputModel, names: set[str], dtype: str) -> list[TensorPlan]:
    """The output tensors in name order: the first model's shapes, in its dtypes or ``dtype``."""
    plans = []
    for name in sorted(names):
        code, shape = ref.tensors.info(name)
        if code not in TORCH_DTYPES:
            raise DataError(
                f"tensor {name!r} of model {ref.label!r} has dtype {code}, which merge cannot read"
            )
        if dtype != "input" and code in FLOAT_CODES:
            code = _OUTPUT_CODES[dtype]
        plans.append(TensorPlan(name, code, shape))
    return plans


@contextlib.contextmanager
def atomic_directory(output: Path) -> Iterator[Path]:
    """A hidden sibling directory of ``output`` to write into, renamed to ``output`` (replacing it)
    when the block ends, removed if it fails; one left by a killed merge is removed first."""
    from rlvr.training.checkpoint import _fsync_tree, _publish

    for leftover in output.parent.glob(f".{output.name}.merging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = output.parent / f".{output.name}.merging-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_tree(tmp)
        _publish(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _merge_record(
    config: MergeConfig, models: Sequence[InputModel], weights: Sequence[float], base: InputModel | None
) -> dict[str, Any]:
    """merge.json: how the output was made."""
    return {
        "method": "average" if base is None else "task_arithmetic",
        "models": [
            {"model": m.label, "path": str(m.path), "weight": w} for m, w in zip(models, weights, strict=True)
        ],
        "base": None if base is None else {"model": base.label, "path": str(base.path)},
        "weights_given": config.weights,
        "normalize": config.normalize,
        "dtype": config.dtype,
    }


def merge_models(config: MergeConfig, log: Callable[[str], None] = print) -> MergeResult:
    """Check the inputs, then write the merged model into ``config.output`` (see the module docstring)."""
    from rlvr.memory_plan.terms import format_size, parse_memory_size

    validate_merge_config(config)
    weights = merge_weights(config)
    max_bytes = parse_memory_size(config.max_shard_size, "setting 'max_shard_size'")
    output = Path(str(config.output))
    with ExitStack() as stack:
        models = [open_model(spec, stack) for spec in config.models]
        base = open_model(config.base, stack) if config.base is not None else None
        check_output(output, config.overwrite, [*models, *([base] if base else [])])
        tokenizer, names = check_inputs(models, base, same_dtype=config.dtype == "input")
        plans = plan_tensors(models[0], names, config.dtype)
        total = sum(p.nbytes for p in plans)
        method = "average" if base is None else f"task arithmetic on base {base.label!r}"
        shown = ", ".join(f"{m.label} x {w:g}" for m, w in zip(models, weights, strict=True))
        log(f"merge: {method} of {shown}: {len(plans)} tensors, {format_size(total)} -> {output}")
        done, last_report = 0, time.monotonic()

        def chunks(out: TensorPlan) -> Iterator[torch.Tensor]:
            nonlocal done, last_report
            yield from _merged_chunks(models, weights, base, out)
            done += out.nbytes
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                last_report = time.monotonic()
                log(f"merge: {done / max(total, 1):.0%} ({format_size(done)} of {format_size(total)})")

        with atomic_directory(output) as tmp:
            shards = plan_shards(plans, max_bytes)
            files = shard_names(len(shards))
            for file, shard in zip(files, shards, strict=True):
                write_shard(tmp / file, shard, chunks)
            if len(shards) > 1:
                write_index(tmp, shards, files)
            record = {
                **_merge_record(config, models, weights, base),
                "tensors": len(plans),
                "total_bytes": total,
            }
            (tmp / MERGE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            written = _write_model_files(tmp, models[0], tokenizer, plans)
    return MergeResult(output, written, len(plans), total)
