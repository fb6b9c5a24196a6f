"""The byte counts behind ``rlvr plan``, one pure function per term (formulas and sources in
:mod:`rlvr.memory_plan`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlvr.config import Config
from rlvr.errors import ConfigError
from rlvr.memory_plan.shape import ModelShape

ACTIVATION_BYTES: dict[str, tuple[int, int, int]] = {
    "float32": (24, 20, 16),
    "bfloat16": (16, 8, 8),
    "autocast": (26, 8, 8),
}
"""Bytes kept per token per decoder layer for the backward pass, as coefficients of (hidden size h,
query width q = heads x head_dim, MLP width f), by compute mode (derivation in rlvr.memory_plan)."""

SAMPLING_LOGIT_COPIES = 4
"""[A, V] float32 tensors alive while a token is drawn: the model's logits, their float32 copy, the
unnormalised probabilities and their cumulative sum (rlvr.rollout.sampling)."""
FSDP_GATHERED_LAYERS = 2
"""Decoder layers whose full parameters FSDP2 holds at once in forward and backward: the current
one and the next, prefetched."""

_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


@dataclass(frozen=True)
class Precision:
    """The dtypes a run computes in, as bytes."""

    mode: str
    """float32 | bfloat16 | autocast: which row of :data:`ACTIVATION_BYTES`."""
    weight_bytes: int
    """The stored parameters (the shards under fsdp2)."""
    compute_param_bytes: int
    """Parameters as the forward uses them: FSDP2 gathers them in this dtype."""

    @property
    def activation_bytes(self) -> int:
        """Logits, KV cache, masks: float32 unless the weights themselves are 16-bit (autocast
        gives float32 logits and, through the float32 rotary embedding, a float32 KV cache)."""
        return 2 if self.mode == "bfloat16" else 4


def resolve_precision(config: Config, device: str, strategy: str) -> Precision:
    """Weights as ``rlvr.training.model.weights_dtype`` makes them: auto is bfloat16 on ``cuda``."""
    m = config.model
    if strategy == "fsdp2" and config.parallel.mixed_precision == "bfloat16":
        return Precision("bfloat16", 4, 2)  # float32 shards (the trainer loads float32), bfloat16 compute
    if m.dtype == "auto" and m.autocast == "none":
        weight = 2 if device == "cuda" else 4
    else:
        import torch

        from rlvr.training.model import weights_dtype

        weight = torch.empty((), dtype=weights_dtype(m, torch.device("cpu"))).element_size()
    if m.autocast != "none":
        return Precision("autocast", weight, weight)
    return Precision("float32" if weight == 4 else "bfloat16", weight, weight)


def layer_activation_bytes(shape: ModelShape, rows: int, seq_len: int, mode: str) -> int:
    """Bytes one decoder layer keeps for backward over a micro-batch of ``rows x seq_len`` tokens:
    :data:`ACTIVATION_BYTES` per token, the padding mask (rows s^2) and the softmax normaliser.

    Example: the toy model (h = q = 128, f = 352, 4 heads) in float32, 2 rows of 10 tokens:
    20 x (24 x 128 + 20 x 128 + 16 x 352 + 4 x 4) + 2 x 10^2 x 4 = 20 x 11,280 + 800 = 226,400 bytes.
    """
    tokens = rows * seq_len
    per_h, per_q, per_f = ACTIVATION_BYTES[mode]
    per_token = per_h * shape.hidden_size + per_q * shape.query_width + per_f * shape.intermediate_size
    mask = rows * seq_len * seq_len * (4 if mode == "float32" else 2)
    return tokens * (per_token + 4 * shape.num_heads) + mask


def activation_bytes(shape: ModelShape, rows: int, seq_len: int, mode: str, checkpointing: bool) -> int:
    """Activations of one micro-batch's forward, kept for backward.

    Without checkpointing: L layers (:func:`layer_activation_bytes`). With it: each layer's input
    (rows x s x h in the residual dtype, float32 unless the weights are bfloat16) plus one layer
    recomputed. Both add the final norm's float32 input and output (8 h bytes per token).
    """
    tokens = rows * seq_len
    one_layer = layer_activation_bytes(shape, rows, seq_len, mode)
    outside = 8 * tokens * shape.hidden_size
    if checkpointing:
        residual = 2 if mode == "bfloat16" else 4
        return shape.num_layers * tokens * shape.hidden_size * residual + one_layer + outside
    return shape.num_layers * one_layer + outside


def logits_bytes(
    rows: int, response_len: int, vocab: int, dtype_bytes: int, mode: str, entropy_grad: bool
) -> int:
    """Peak bytes of a micro-batch's logits over its ``rows x (T + 1)`` response positions in backward.

    The chunked log-softmax and entropy (rlvr.algorithms.entropy) keep the logits ``Z`` and make one
    gradient ``G`` of the same size, working on one float32 block ``B`` of ``min(1024, positions)``
    rows at a time; an entropy bonus adds a second gradient. Then the slice ``logits[:, :T]`` pads
    the gradient back to ``T + 1`` positions (``P``, in the LM head's dtype: bfloat16 under
    autocast, whose logits are upcast copies) while ``Z`` and ``G`` are still alive::

        peak = max(Z + G + B (+ G with an entropy bonus), Z + G + P)

    Example: 2 rows x (9 + 1) positions x 100 tokens in float32: Z = G = B = P = 8,000 bytes, so
    24,000 bytes, or 32,000 with an entropy bonus.
    """
    from rlvr.algorithms.entropy import DEFAULT_CHUNK_SIZE

    positions = rows * (response_len + 1)
    held = positions * vocab * dtype_bytes
    block = min(DEFAULT_CHUNK_SIZE, positions) * vocab * 4
    padded = positions * vocab * (2 if mode == "autocast" else dtype_bytes)
    return 2 * held + max(block + (held if entropy_grad else 0), padded)


def kv_cache_bytes(shape: ModelShape, sequences: int, length: int, dtype_bytes: int) -> int:
    """``2 L A S kv_heads head_dim`` elements (keys and values of every layer), plus one layer more:
    rlvr's Llama-family decoder preallocates the full length and compacts rows through a one-layer
    scratch; transformers' DynamicCache grows a layer by concatenation, old and new alive for a moment.

    Example: 4 layers, 8 sequences of 100 tokens, 2 kv heads of 32, bfloat16:
    2 x (4 + 1) x 8 x 100 x 64 x 2 = 1,024,000 bytes.
    """
    per_layer = 2 * sequences * length * shape.kv_width * dtype_bytes
    return (shape.num_layers + 1) * per_layer


def parse_memory_size(text: str, flag: str = "--device-memory") -> int:
    """Bytes of a size such as ``80GB`` (10^9 bytes), ``80GiB`` (2^30), ``24000MB`` or ``1.5TiB``."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]+)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(
            f"{flag} must be a positive size with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), "
            f"such as 80GB, 80GiB or 24000MB; got {text!r}"
        )
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(value: int) -> str:
    """``12.34 GiB`` / ``56.7 MiB``: binary units, as GPU tools report memory."""
    if abs(value) >= 2**30:
        return f"{value / 2**30:.2f} GiB"
    return f"{value / 2**20:.1f} MiB"
