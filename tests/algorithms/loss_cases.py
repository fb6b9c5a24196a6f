"""Small float64 cases for the policy-loss tests: the loss and its gradient, and random batches."""

from __future__ import annotations

import pytest
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


# --- invariants every policy loss keeps ------------------------------------------------------------

JUNK = [float("nan"), float("inf"), -float("inf"), 1e6]
"""What padding positions are filled with: no loss, gradient or metric may change."""


def assert_padding_changes_nothing(name, batch, **kw):
    """Loss, gradient and metrics of ``batch`` are the same with its padding filled with junk."""
    lp, old, adv, mask = batch
    out, g = run(name, lp, old, adv, mask, **kw)
    noisy = [x.clone() for x in (lp, old, adv)]
    for i, x in enumerate(noisy):
        x[~mask] = torch.tensor(JUNK * 10, dtype=F64)[: int((~mask).sum())].roll(i)
    out2, g2 = run(name, *noisy, mask, **kw)
    assert out2.loss.item() == pytest.approx(out.loss.item(), abs=1e-12)
    torch.testing.assert_close(g2, g, rtol=0, atol=1e-12)
    assert torch.count_nonzero(g2[~mask]) == 0
    for key, value in out.metrics.items():
        assert out2.metrics[key].item() == pytest.approx(value.item(), abs=1e-12), key


def assert_permuting_sequences_permutes_gradients(name, batch, **kw):
    """Rows of ``batch`` (4 of them) in another order: the same loss, the gradients in that order."""
    lp, old, adv, mask = batch
    perm = torch.tensor([2, 0, 3, 1])
    out, g = run(name, lp, old, adv, mask, **kw)
    out_p, g_p = run(name, lp[perm], old[perm], adv[perm], mask[perm], **kw)
    assert out_p.loss.item() == pytest.approx(out.loss.item(), abs=1e-12)
    torch.testing.assert_close(g_p, g[perm], rtol=0, atol=1e-12)


def assert_micro_batches_add_up(name, batch, mode):
    """``batch`` (6 rows) in micro-batches of 2 with the global token and sequence counts: the
    losses add up to the full batch's and the gradients are its gradients."""
    lp, old, adv, mask = batch
    full, g_full = run(name, lp, old, adv, mask, aggregation=mode, norm_length=5)
    kw = dict(aggregation=mode, norm_length=5, num_tokens=mask.sum().item(), num_sequences=6)
    parts = [
        run(name, lp[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], **kw) for i in (0, 2, 4)
    ]
    assert sum(p[0].loss.item() for p in parts) == pytest.approx(full.loss.item(), abs=1e-12)
    torch.testing.assert_close(torch.cat([p[1] for p in parts]), g_full, rtol=0, atol=1e-12)
