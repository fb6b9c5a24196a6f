"""VAPO's positive-example LM loss: negative log-likelihood of the correct completions.

VAPO (arXiv 2504.05118, sec. 3.3, the positive-example LM loss) adds to the PPO loss, with weight
mu = 0.1 (``lm_coef``), the NLL of the completions in the set T of correct answers of the batch::

    L_NLL = - 1 / (sum_{o_i in T} |o_i|) * sum_{o_i in T} sum_t log pi(a_t | s_t)

i.e. a token mean over the tokens of the correct completions only: wrong completions and padding
contribute neither to the sum nor to the denominator.

Micro-batches and ranks: with ``aggregation="token-mean"`` the denominator is ``num_tokens``; pass
the global number of tokens *of correct completions* (not of all completions) summed over
micro-batches and ranks, so that the parts add up to the paper's loss. Left None it is counted from
this batch. (Likewise ``num_sequences`` counts correct completions for the ``seq-mean-*`` modes.)

Worked example: two completions, the first correct with token log-probs (-1, -3), the second
wrong: L_NLL = -(-1 - 3) / 2 = 2.
"""

from __future__ import annotations

import torch

from rlvr.algorithms.aggregation import aggregate
from rlvr.algorithms.checks import check_mask, check_tensor
from rlvr.algorithms.outputs import LossOutput
from rlvr.errors import ShapeError

LM_TENSOR_ARGS: tuple[str, ...] = (
    "logprobs",
    "mask",
    "correct",
    "num_tokens",
    "num_sequences",
    "norm_length",
)
"""Arguments of :func:`positive_lm_loss` the loop supplies; the rest are config fields."""


def positive_lm_loss(
    *,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    correct: torch.Tensor,
    num_tokens: float | torch.Tensor | None = None,
    num_sequences: float | torch.Tensor | None = None,
    norm_length: int | None = None,
    aggregation: str = "token-mean",
) -> LossOutput:
    """NLL of the correct completions, unweighted (the loop adds ``lm_coef * loss``).

    ``logprobs`` [B, T] are the policy's (differentiable) log-probs of the sampled tokens, ``mask``
    [B, T] the response tokens, ``correct`` [B] (bool) which completions are correct. With no
    correct completion the loss is 0, still attached to the graph (its gradient is zero, never nan).
    Values at padding or in wrong completions never matter, not even -inf.

    Metrics: ``lm/nll`` (the loss, detached) and ``lm/correct_fraction`` (correct completions / B
    in this batch).
    """
    logprobs = check_tensor(logprobs, "logprobs", 2)
    check_mask(mask, "mask", tuple(logprobs.shape))
    if not logprobs.dtype.is_floating_point:
        raise ShapeError(f"logprobs must be a floating tensor, got dtype {logprobs.dtype}")
    correct = check_tensor(correct, "correct", 1)
    if correct.dtype != torch.bool:
        raise ShapeError(
            f"correct must be a bool tensor [B], got dtype {correct.dtype}; "
            "derive it once from the verdicts, e.g. rewards > 0"
        )
    if correct.shape[0] != logprobs.shape[0]:
        raise ShapeError(f"correct has {correct.shape[0]} entries but logprobs has {logprobs.shape[0]} rows")

    positive = mask.bool() & correct[:, None]  # [B, T] response tokens of correct completions
    nll = torch.where(positive, -logprobs, torch.zeros_like(logprobs))
    loss = aggregate(
        nll,
        positive,
        aggregation,
        num_tokens=num_tokens,
        num_sequences=num_sequences,
        norm_length=norm_length,
    )
    batch = max(correct.shape[0], 1)
    metrics = {
        "lm/nll": loss.detach(),
        "lm/correct_fraction": correct.to(logprobs.dtype).sum() / batch,
    }
    return LossOutput(loss=loss, metrics=metrics)
