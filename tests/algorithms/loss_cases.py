"""Small float64 cases for the policy-loss tests: the loss and its gradient, and random batches."""

from __future__ import annotations

import torch

from rlvr.algorithms.losses import POLICY_LOSSES

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


def run(name, logprobs, old_logprobs, advantages, mask, **kw):
    """Policy loss ``name`` on the batch, and the gradient of its loss with respect to ``logprobs``
    (zeros where the loss does not depend on them)."""
    lp = logprobs.detach().clone().requires_grad_(True)
    out = POLICY_LOSSES.get(name)(
        logprobs=lp, old_logprobs=old_logprobs, advantages=advantages, mask=mask, **kw
    )
    (grad,) = torch.autograd.grad(out.loss, lp, allow_unused=True)
    return out, torch.zeros_like(lp) if grad is None else grad


def random_batch(seed, b=4, width=5, spread=0.4):
    """(logprobs, old logprobs, advantages, mask) [b, width]: logprobs within ``spread`` of the old
    ones, a sequence-level advantage per row, about a third of the tokens masked (never the first)."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, width, generator=g, dtype=F64) * 3 - 0.05
    lp = old + spread * (torch.rand(b, width, generator=g, dtype=F64) - 0.5)
    mask = torch.rand(b, width, generator=g) > 0.3
    mask[:, 0] = True
    adv = torch.randn(b, 1, generator=g, dtype=F64).expand(b, width) * mask
    return lp, old, adv, mask
