"""Token entropies and log-probabilities from logits, chunked so a large vocabulary fits in memory.

A [B, T, V] float32 copy of the logits is what kills memory in RL for LMs: with V = 151,936
(Qwen2.5) and 16k response tokens it is about 10 GB, and a naive ``log_softmax(logits.float())`` keeps
two or three such tensors alive for the backward pass. Here the rows (positions) are processed in
blocks of at most ``chunk_size``: each block is upcast to float32 on its own, reduced to one number
per row, and freed. The backward pass is written by hand (a custom autograd function) and recomputes
each block's softmax from the saved logits, so beyond the logits and their gradient (both in the
logits' dtype, which the caller's graph needs anyway) only one block's float32 temporaries and a
few [B, T] vectors ever exist. Peak memory is measured in tests/algorithms/test_entropy.py
(``-m slow``) and reported in docs/algorithms.md.

Conventions the caller must follow:

* **No shifting here.** ``logits[:, t]`` of a causal LM predicts token ``t + 1``; these functions
  pair ``logits[b, t]`` with ``token_ids[b, t]`` as given. The caller aligns them (e.g. passes
  ``logits[:, P-1:-1]`` with the response ids ``ids[:, P:]`` for a prompt of length P).
* **Temperature.** The log-probabilities are those of the distribution the rollout sampled from,
  ``softmax(logits / temperature)``: the rollout engine and the trainer must use the same
  temperature, otherwise the importance ratio pi_theta / pi_old is not 1 at the first update even
  though the weights are the same. The division happens after the upcast to float32, as sampling
  code does.
* **Dtypes.** Input may be bf16, fp16, fp32 or fp64; computation and outputs are float32 (float64
  for float64 input). Logits must be finite (as a model's forward pass gives them).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

from rlvr.algorithms.aggregation import aggregate
from rlvr.algorithms.checks import check_mask, check_tensor
from rlvr.algorithms.outputs import LossOutput
from rlvr.errors import ConfigError, ShapeError

DEFAULT_CHUNK_SIZE = 1024
"""Rows (positions) per block. A block's float32 temporaries are chunk_size * V * 4 bytes each:
0.6 GB for V = 151,936, two or three of them alive at a time."""

ENTROPY_TENSOR_ARGS: tuple[str, ...] = ("entropy", "mask", "num_tokens", "num_sequences", "norm_length")
"""Arguments of :func:`entropy_loss` the loop supplies; the rest are config fields."""


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _blocks(batch: int, length: int, chunk_size: int) -> Iterator[tuple[slice, slice]]:
    """Rectangles (rows b0:b1, positions t0:t1) of at most chunk_size positions covering [B, T].

    Whole sequences are grouped while they fit; longer sequences are cut along T. Indexing a
    rectangle is always a view, even for non-contiguous logits such as ``logits[:, :-1]``.
    """
    if batch == 0 or length == 0:
        return
    if length <= chunk_size:
        rows = chunk_size // length
        for b0 in range(0, batch, rows):
            yield slice(b0, min(b0 + rows, batch)), slice(0, length)
    else:
        for b in range(batch):
            for t0 in range(0, length, chunk_size):
                yield slice(b, b + 1), slice(t0, min(t0 + chunk_size, length))


def _scaled(block: torch.Tensor, temperature: float, dtype: torch.dtype) -> torch.Tensor:
    """A fresh ``dtype`` copy of one block of logits, divided by the temperature."""
    z = block.to(dtype, copy=True)
    if temperature != 1.0:
        z.div_(temperature)
    return z


class _ChunkedEntropy(torch.autograd.Function):
    """H = -sum_v p_v log p_v with p = softmax(z / tau); dH/dz = -p * (log p + H) / tau."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, temperature: float, chunk_size: int) -> torch.Tensor:
        batch, length, _ = logits.shape
        dtype = _compute_dtype(logits.dtype)
        entropy = torch.empty(batch, length, dtype=dtype, device=logits.device)
        lse = torch.empty_like(entropy)
        for rows, cols in _blocks(batch, length, chunk_size):
            z = _scaled(logits[rows, cols], temperature, dtype)
            block_lse = torch.logsumexp(z, dim=-1, keepdim=True)
            logp = z.sub_(block_lse)
            entropy[rows, cols] = -(logp.exp().mul_(logp)).sum(-1)
            lse[rows, cols] = block_lse.squeeze(-1)
        ctx.save_for_backward(logits, entropy, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_entropy: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        logits, entropy, lse = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        dtype = entropy.dtype
        for rows, cols in _blocks(logits.shape[0], logits.shape[1], ctx.chunk_size):
            logp = _scaled(logits[rows, cols], ctx.temperature, dtype).sub_(lse[rows, cols, None])
            p = logp.exp()
            scale = grad_entropy[rows, cols, None].to(dtype) / -ctx.temperature
            grad[rows, cols] = logp.add_(entropy[rows, cols, None]).mul_(p).mul_(scale)
        return grad, None, None


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """log p_y with p = softmax(z / tau); d log p_y / dz = (onehot(y) - p) / tau."""

    @staticmethod
    def forward(
        ctx, logits: torch.Tensor, token_ids: torch.Tensor, temperature: float, chunk_size: int
    ) -> torch.Tensor:
        batch, length, _ = logits.shape
        dtype = _compute_dtype(logits.dtype)
        logprobs = torch.empty(batch, length, dtype=dtype, device=logits.device)
        lse = torch.empty_like(logprobs)
        for rows, cols in _blocks(batch, length, chunk_size):
            z = _scaled(logits[rows, cols], temperature, dtype)
            block_lse = torch.logsumexp(z, dim=-1)
            picked = z.gather(-1, token_ids[rows, cols, None]).squeeze(-1)
            logprobs[rows, cols] = picked - block_lse
            lse[rows, cols] = block_lse
        ctx.save_for_backward(logits, token_ids, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return logprobs

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_logprobs: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, token_ids, lse = ctx.saved_tensors
        grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
        dtype = lse.dtype
        for rows, cols in _blocks(logits.shape[0], logits.shape[1], ctx.chunk_size):
            p = _scaled(logits[rows, cols], ctx.temperature, dtype).sub_(lse[rows, cols, None]).exp_()
            g = grad_logprobs[rows, cols, None].to(dtype) / ctx.temperature
            block_grad = p.mul_(-g).scatter_add_(-1, token_ids[rows, cols, None], g)
            grad[rows, cols] = block_grad
        return grad, None, None, None


def _check_logits(logits: object, temperature: float, chunk_size: int) -> torch.Tensor:
    logits = check_tensor(logits, "logits", 3)
    if not logits.dtype.is_floating_point:
        raise ShapeError(f"logits must be a floating tensor [B, T, V], got dtype {logits.dtype}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive integer (rows per block), got {chunk_size!r}")
    return logits


def _check_token_ids(token_ids: object, logits: torch.Tensor) -> torch.Tensor:
    """``token_ids`` checked: an integer [B, T] tensor matching ``logits`` [B, T, V], ids in [0, V)."""
    token_ids = check_tensor(token_ids, "token_ids", 2)
    if token_ids.dtype.is_floating_point or token_ids.dtype == torch.bool:
        raise ShapeError(f"token_ids must be an integer tensor, got dtype {token_ids.dtype}")
    if tuple(token_ids.shape) != tuple(logits.shape[:2]):
        raise ShapeError(
            f"token_ids has shape {tuple(token_ids.shape)} but logits has shape {tuple(logits.shape)}; "
            "token_ids must be [B, T] matching logits [B, T, V] (align them before the call)"
        )
    vocab = logits.shape[2]
    if token_ids.numel():
        low, high = int(token_ids.min()), int(token_ids.max())
        if low < 0 or high >= vocab:
            raise ShapeError(
                f"token_ids must lie in [0, {vocab}) (the vocabulary of logits), got values in [{low}, {high}]; "
                "replace ignore-index padding (e.g. -100) by a real id and mask the result"
            )
    return token_ids


def entropy_from_logits(
    logits: torch.Tensor, *, temperature: float = 1.0, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Entropy [B, T] of softmax(logits / temperature) at each position, chunked and differentiable.

    ``H = logsumexp(z) - sum_v softmax(z)_v z_v = -sum_v p_v log p_v`` with ``z = logits / temperature``.
    Pass the rollout temperature to get the entropy of the distribution that was sampled from.

    >>> entropy_from_logits(torch.zeros(1, 1, 4))  # uniform over 4 tokens: log 4
    tensor([[1.3863]])
    """
    logits = _check_logits(logits, temperature, chunk_size)
    return _ChunkedEntropy.apply(logits, float(temperature), chunk_size)


def token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """log softmax(logits / temperature) [B, T] gathered at ``token_ids`` [B, T], chunked and differentiable.

    ``logits[b, t]`` is paired with ``token_ids[b, t]`` as given (no shift; see the module doc). Every
    id must be a valid vocabulary index, padding included: replace an ignore index such as -100 by
    any real id (the pad token) and mask the result.

    >>> token_logprobs(torch.tensor([[[0.0, 0.0, 2.0]]]), torch.tensor([[2]]), temperature=2.0)
    tensor([[-0.5514]])

    (z / 2 = (0, 0, 1): log(e / (2 + e)) = 1 - log(4.7183) = -0.5514.)
    """
    logits = _check_logits(logits, temperature, chunk_size)
    token_ids = _check_token_ids(token_ids, logits)
    return _ChunkedTokenLogprobs.apply(logits, token_ids.long(), float(temperature), chunk_size)


def entropy_loss(
    *,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    aggregation: str = "token-mean",
) -> LossOutput:
    """The aggregated token entropy [B, T] -> 0-D; the loop subtracts ``entropy_coef * loss``.

    The entropy bonus of PPO (Schulman et al. 2017, arXiv 1707.06347 eq. 9, the ``c2 S[pi]`` term),
    aggregated like the policy loss. Padding values never matter. Metrics: ``entropy/mean``, the
    mean over this call's response tokens.
    """
    entropy = check_tensor(entropy, "entropy", 2)
    check_mask(mask, "mask", tuple(entropy.shape))
    if not entropy.dtype.is_floating_point:
        raise ShapeError(f"entropy must be a floating tensor, got dtype {entropy.dtype}")
    entropy = torch.where(mask.bool(), entropy, torch.zeros_like(entropy))
    loss = aggregate(
        entropy,
        mask,
        aggregation,
        num_tokens=num_tokens,
        num_sequences=num_sequences,
        norm_length=norm_length,
    )
    mean = aggregate(entropy.detach(), mask, "token-mean")
    return LossOutput(loss=loss, metrics={"entropy/mean": mean})
