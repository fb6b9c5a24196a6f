"""What the algorithm functions return: tensors plus a dict of metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class AdvantageOutput:
    """Result of an advantage estimator.

    ``advantages`` [B, T] is zero on padding. ``returns`` [B, T] are the critic's value targets
    (GAE and VAPO) and None for critic-free estimators. ``metrics`` are plain floats.
    """

    advantages: torch.Tensor
    returns: torch.Tensor | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    loss_mask: torch.Tensor | None = None
    """[B, T] bool: the response tokens the policy loss keeps (SPO's probability mask); the loop
    multiplies the response mask by it before the update. None keeps every response token."""


@dataclass
class LossOutput:
    """Result of a loss term: a 0-D ``loss`` to differentiate and detached 0-D ``metrics``.

    Coefficients (``kl_coef``, ``entropy_coef``, ``lm_coef``) are applied by the caller, so each term
    is returned unweighted and can be logged as it is.
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class FilterOutput:
    """Result of a group filter: which completions to keep [B] (bool) and counts as metrics."""

    keep: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
