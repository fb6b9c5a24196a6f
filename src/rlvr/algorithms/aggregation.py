"""Loss aggregation: how a (B, T) matrix of per-token losses becomes one number.

The modes differ in how much a long sequence weighs against a short one (ALGORITHM-TRAPS in
docs/algorithms.md, "Aggregation"). With mask m, per-token values v, N sequences with at least
one response token and N_tok response tokens in the whole batch:

* ``token-mean`` (DAPO, arXiv 2503.14476 eq. 12): every token of the batch weighs the same::

      sum_{i,t} m_it v_it / N_tok

* ``seq-mean-token-mean`` (GRPO, DeepSeekMath arXiv 2402.03300 eq. 3): average the tokens of each
  sequence, then the sequences::

      (1/N) sum_i (sum_t m_it v_it / sum_t m_it)

* ``seq-mean-token-sum``: each sequence's token sum, averaged over sequences::

      (1/N) sum_i sum_t m_it v_it

* ``token-sum``: the plain sum over every response token of the batch, no average::

      sum_{i,t} m_it v_it

  The loss then grows with the batch and the response lengths (the learning rate must absorb
  both); it is the sum that REINFORCE's gradient estimator writes before any normalisation.

* ``seq-mean-token-sum-norm`` (Dr. GRPO, arXiv 2503.20783 sec. 3.2): each sequence's token sum
  divided by a *fixed* length L (the generation budget), averaged over sequences::

      (1/N) sum_i sum_t m_it v_it / L

Micro-batches and ranks: pass the global ``num_tokens`` / ``num_sequences`` of the whole
mini-batch (summed over micro-batches and ranks); then the aggregates of the micro-batches add up
exactly to the aggregate of the whole. Left as None they are counted from this batch.
"""

from __future__ import annotations

import torch

from rlvr.algorithms.checks import check_mask, check_tensor
from rlvr.errors import ShapeError
from rlvr.registry import Registry

AGGREGATIONS: Registry = Registry("aggregation mode")


def count_tokens(mask: torch.Tensor) -> torch.Tensor:
    """Number of response tokens (0-D tensor, float64)."""
    return mask.to(torch.float64).sum()


def count_sequences(mask: torch.Tensor) -> torch.Tensor:
    """Number of sequences with at least one response token (0-D tensor, float64)."""
    return (mask.to(torch.float64).sum(-1) > 0).to(torch.float64).sum()


def _denominator(
    value: float | torch.Tensor | None, fallback: torch.Tensor, like: torch.Tensor
) -> torch.Tensor:
    d = fallback if value is None else torch.as_tensor(value, dtype=torch.float64)
    # An empty batch contributes zero loss rather than NaN.
    return d.clamp(min=1.0).to(device=like.device, dtype=like.dtype)


@AGGREGATIONS.register("token-mean")
def token_mean(values, mask, *, num_tokens=None, num_sequences=None, norm_length=None):
    m = mask.to(values.dtype)
    return (values * m).sum() / _denominator(num_tokens, count_tokens(mask), values)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(values, mask, *, num_tokens=None, num_sequences=None, norm_length=None):
    m = mask.to(values.dtype)
    per_seq = (values * m).sum(-1) / m.sum(-1).clamp(min=1.0)
    return per_seq.sum() / _denominator(num_sequences, count_sequences(mask), values)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(values, mask, *, num_tokens=None, num_sequences=None, norm_length=None):
    m = mask.to(values.dtype)
    return (values * m).sum() / _denominator(num_sequences, count_sequences(mask), values)


@AGGREGATIONS.register("token-sum")
def token_sum(values, mask, *, num_tokens=None, num_sequences=None, norm_length=None):
    m = mask.to(values.dtype)
    return (values * m).sum()


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values, mask, *, num_tokens=None, num_sequences=None, norm_length=None):
    if norm_length is None or norm_length <= 0:
        raise ShapeError(
            "aggregation 'seq-mean-token-sum-norm' needs norm_length, the fixed generation budget "
            f"(Dr. GRPO), as a positive number; got {norm_length!r}"
        )
    m = mask.to(values.dtype)
    n = _denominator(num_sequences, count_sequences(mask), values)
    return (values * m).sum() / (n * float(norm_length))


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
) -> torch.Tensor:
    """Aggregate per-token ``values`` [B, T] under ``mask`` [B, T] with the named ``mode``.

    Worked example, two sequences of 1 and 3 tokens with values 1 and (2, 2, 2)::

        token-mean          (1 + 6) / 4        = 1.75
        seq-mean-token-mean (1/1 + 6/3) / 2    = 1.5
        seq-mean-token-sum  (1 + 6) / 2        = 3.5
        token-sum           1 + 6              = 7
        ...-sum-norm, L=4   (1 + 6) / (2 * 4)  = 0.875
    """
    fn = AGGREGATIONS.get(mode)
    check_tensor(values, "values", 2)
    check_mask(mask, "mask", tuple(values.shape))
    return fn(values, mask, num_tokens=num_tokens, num_sequences=num_sequences, norm_length=norm_length)
