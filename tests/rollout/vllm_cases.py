"""What the vLLM engine tests and the vLLM server tests share."""

from __future__ import annotations

import torch

from rlvr.training.batch import make_batch
from rlvr.training.update import compute_logprobs

PARITY = 1e-4
"""float32: the largest difference allowed between the rollout's logprobs and the trainer's."""


def rollout_and_trainer_logprobs(model, completions, temperature) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled tokens' logprobs as the engine recorded them and as the trainer recomputes them
    (:func:`rlvr.training.update.compute_logprobs`), over the tokens the policy sampled."""
    count = len(completions)
    batch = make_batch(completions, [0.0] * count, [False] * count, list(range(count)), 0)
    mask = batch.response_mask.bool()
    trainer = compute_logprobs(model, batch, temperature, 4096, None)
    return batch.old_logprobs[mask], trainer[mask]
