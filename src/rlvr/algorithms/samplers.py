"""Which prompts a training step uses: uniform epochs, curriculum, or prioritized by failure.

:class:`PromptSampler` draws prompt indices, records each prompt's running success rate, and saves
and restores all of its state (the random generator included), so a resumed run draws exactly the
prompts the uninterrupted run would have drawn. The kinds (``algorithm.sampler``):

* ``uniform``: epochs over the dataset; each epoch is a fresh permutation drawn from the seeded
  generator, so every prompt is used once per epoch and a step may run across an epoch boundary.
* ``curriculum`` (Kimi k1.5, arXiv 2501.12599 sec. 2.3.4, "curriculum sampling": start with easy
  problems, move to hard ones): the prompts are ranked easiest first and step t draws uniformly,
  without replacement, from the easiest fraction::

      c(t) = min(1, c0 + (1 - c0) * t / T)           c0 = curriculum_start, T = curriculum_steps

  (the linear competence schedule of Platanios et al., arXiv 1903.09848). The difficulty of a
  prompt is given (e.g. the MATH level, :func:`difficulties_from_problems`; higher is harder) or,
  when none is given, estimated as 1 - s_i from its running success rate, 0.5 while unseen.
  Ties (equal difficulty) are ordered by a seeded random permutation, not by dataset position.
* ``prioritized`` (Kimi k1.5 sec. 2.3.4, "prioritized sampling"): draw prompt i with probability
  proportional to 1 - s_i, so that rarely solved prompts come back more often. An unseen prompt
  counts as s = 0 (never solved yet: the highest priority, so every prompt is tried early). When
  every prompt has s = 1 the draw falls back to uniform. A step's prompts are distinct.

Success rates (:meth:`PromptSampler.update`): with ``sampler_momentum = None`` s_i is the mean of
all the success rates observed for prompt i (the fraction of its attempts that were correct, each
step weighing the same); with a momentum m in [0, 1) the first observation sets s_i and later ones
move it by s_i <- m * s_i + (1 - m) * observed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch

from rlvr.errors import ConfigError, DataError, ShapeError

SAMPLER_KINDS: tuple[str, ...] = ("uniform", "curriculum", "prioritized")

SAMPLER_FIELDS: tuple[str, ...] = ("sampler", "sampler_momentum", "curriculum_start", "curriculum_steps")
"""The AlgorithmConfig fields :meth:`PromptSampler.from_config` reads."""

UNSEEN_DIFFICULTY = 0.5
"""Estimated difficulty (1 - success rate) of a prompt never attempted, for ``curriculum``."""

F64 = torch.float64


def check_sampler_settings(
    kind: str, sampler_momentum: float | None, curriculum_start: float, curriculum_steps: int
) -> None:
    """Raise ConfigError naming the field for a sampler setting out of range."""
    if kind not in SAMPLER_KINDS:
        from rlvr.registry import nearest_name_hint

        raise ConfigError(
            f"algorithm.sampler: unknown prompt sampler {kind!r}{nearest_name_hint(str(kind), SAMPLER_KINDS)} "
            f"(valid: {', '.join(SAMPLER_KINDS)})"
        )
    if sampler_momentum is not None and not 0.0 <= sampler_momentum < 1.0:
        raise ConfigError(f"algorithm.sampler_momentum must be None or in [0, 1), got {sampler_momentum}")
    if not 0.0 < curriculum_start <= 1.0:
        raise ConfigError(f"algorithm.curriculum_start must be in (0, 1], got {curriculum_start}")
    if isinstance(curriculum_steps, bool) or not isinstance(curriculum_steps, int) or curriculum_steps < 0:
        raise ConfigError(f"algorithm.curriculum_steps must be an integer >= 0, got {curriculum_steps!r}")


class PromptSampler:
    """Draws prompt indices for each step; state saved and restored exactly.

    >>> s = PromptSampler(5, seed=0)
    >>> batch = s.sample(3)          # three distinct prompts of the first epoch
    >>> state = s.state_dict()
    >>> later = s.sample(4)          # the rest of epoch 0, then the start of epoch 1
    >>> s.load_state_dict(state); s.sample(4) == later
    True
    """

    def __init__(
        self,
        num_prompts: int,
        *,
        kind: str = "uniform",
        seed: int = 0,
        difficulties: Sequence[float] | torch.Tensor | None = None,
        sampler_momentum: float | None = None,
        curriculum_start: float = 0.25,
        curriculum_steps: int = 1000,
    ) -> None:
        if isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts <= 0:
            raise ConfigError(f"a prompt sampler needs a positive number of prompts, got {num_prompts!r}")
        check_sampler_settings(kind, sampler_momentum, curriculum_start, curriculum_steps)
        self.kind = kind
        self.num_prompts = num_prompts
        self.seed = int(seed)
        self.sampler_momentum = sampler_momentum
        self.curriculum_start = curriculum_start
        self.curriculum_steps = curriculum_steps
        self.difficulties = None if difficulties is None else self._check_difficulties(difficulties)
        self._generator = torch.Generator().manual_seed(self.seed)
        self._tie_order = torch.randperm(num_prompts, generator=self._generator)
        self._order = torch.randperm(num_prompts, generator=self._generator)
        self._position = 0
        self._epoch = 0
        self._success = torch.zeros(num_prompts, dtype=F64)
        self._observations = torch.zeros(num_prompts, dtype=torch.long)

    @classmethod
    def from_config(
        cls,
        num_prompts: int,
        config: Any,
        *,
        seed: int,
        difficulties: Sequence[float] | torch.Tensor | None = None,
    ) -> PromptSampler:
        """A sampler with the kind and settings of an :class:`AlgorithmConfig` (its SAMPLER_FIELDS)."""
        return cls(
            num_prompts,
            kind=config.sampler,
            seed=seed,
            difficulties=difficulties,
            sampler_momentum=config.sampler_momentum,
            curriculum_start=config.curriculum_start,
            curriculum_steps=config.curriculum_steps,
        )

    def _check_difficulties(self, difficulties: Sequence[float] | torch.Tensor) -> torch.Tensor:
        d = torch.as_tensor(difficulties, dtype=F64).detach().cpu()
        if d.dim() != 1 or d.shape[0] != self.num_prompts:
            raise ShapeError(
                f"difficulties must hold one number per prompt ({self.num_prompts}), got shape {tuple(d.shape)}"
            )
        if not torch.isfinite(d).all():
            raise ShapeError("difficulties must be finite numbers")
        return d

    # --- statistics -------------------------------------------------------------------------------------

    @property
    def success_rates(self) -> torch.Tensor:
        """The running success rate s_i of every prompt [N] (0 for a prompt never attempted)."""
        return self._success.clone()

    @property
    def observations(self) -> torch.Tensor:
        """How many success rates were recorded for each prompt [N]."""
        return self._observations.clone()

    @property
    def epoch(self) -> int:
        """uniform: the number of completed passes over the dataset."""
        return self._epoch

    def update(
        self, indices: Sequence[int] | torch.Tensor, success_rates: Sequence[float] | torch.Tensor
    ) -> None:
        """Record the success rate (fraction correct, in [0, 1]) observed for each drawn prompt."""
        idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1).cpu()
        rates = torch.as_tensor(success_rates, dtype=F64).reshape(-1).detach().cpu()
        if idx.shape != rates.shape:
            raise ShapeError(f"update got {idx.numel()} indices but {rates.numel()} success rates")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.num_prompts):
            raise ShapeError(f"prompt indices must be in [0, {self.num_prompts}), got {idx.tolist()}")
        if not ((rates >= 0) & (rates <= 1)).all():
            raise ShapeError(f"success rates must be in [0, 1], got {rates.tolist()}")
        for i, rate in zip(idx.tolist(), rates.tolist(), strict=True):
            n = int(self._observations[i])
            if n == 0:
                new = rate
            elif self.sampler_momentum is None:
                new = (float(self._success[i]) * n + rate) / (n + 1)
            else:
                m = self.sampler_momentum
                new = m * float(self._success[i]) + (1.0 - m) * rate
            self._success[i] = new
            self._observations[i] = n + 1

    # --- distributions ----------------------------------------------------------------------------------

    def curriculum_fraction(self, step: int) -> float:
        """c(t) = min(1, c0 + (1 - c0) * t / T): the fraction of prompts available at ``step``."""
        if self.curriculum_steps == 0:
            return 1.0
        return min(
            1.0, self.curriculum_start + (1.0 - self.curriculum_start) * max(step, 0) / self.curriculum_steps
        )

    def difficulty(self) -> torch.Tensor:
        """The difficulty used by ``curriculum`` [N]: given, or 1 - s_i (0.5 while unseen)."""
        if self.difficulties is not None:
            return self.difficulties.clone()
        return torch.where(self._observations > 0, 1.0 - self._success, UNSEEN_DIFFICULTY)

    def easiest_first(self) -> torch.Tensor:
        """Prompt indices ordered by difficulty, easiest first; ties in the seeded tie order."""
        d = self.difficulty()[self._tie_order]
        return self._tie_order[torch.sort(d, stable=True).indices]

    def _pool(self, step: int, at_least: int = 1) -> torch.Tensor:
        size = max(at_least, math.ceil(self.curriculum_fraction(step) * self.num_prompts - 1e-9))
        return self.easiest_first()[: min(size, self.num_prompts)]

    def probabilities(self, step: int = 0) -> torch.Tensor:
        """The probability of each prompt [N] for one draw at ``step`` (float64, sums to 1).

        uniform: 1/N. prioritized: (1 - s_i) / sum_j (1 - s_j). curriculum: 1 / |pool| on the
        c(step) easiest prompts, 0 elsewhere.
        """
        n = self.num_prompts
        if self.kind == "prioritized":
            weights = (1.0 - self._success).clamp(min=0.0)
            total = weights.sum()
            return weights / total if total > 0 else torch.full((n,), 1.0 / n, dtype=F64)
        if self.kind == "curriculum":
            pool = self._pool(step)
            probs = torch.zeros(n, dtype=F64)
            probs[pool] = 1.0 / pool.numel()
            return probs
        return torch.full((n,), 1.0 / n, dtype=F64)

    # --- drawing -----------------------------------------------------------------------------------------

    def sample(self, count: int, step: int = 0) -> list[int]:
        """``count`` prompt indices for training step ``step`` (only ``curriculum`` reads the step).

        ``uniform`` continues the current epoch and starts a new permutation when it runs out;
        ``curriculum`` and ``prioritized`` return ``count`` distinct prompts (count <= N).
        """
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ConfigError(f"the number of prompts to sample must be an integer >= 0, got {count!r}")
        if self.kind == "uniform":
            return self._sample_uniform(count)
        if count > self.num_prompts:
            raise ConfigError(
                f"sampler '{self.kind}' draws distinct prompts; {count} requested but the dataset has "
                f"{self.num_prompts} (lower rollout.prompts_per_step or use sampler 'uniform')"
            )
        if self.kind == "curriculum":
            pool = self._pool(step, at_least=count)
            chosen = pool[torch.randperm(pool.numel(), generator=self._generator)[:count]]
            return chosen.tolist()
        return self._sample_prioritized(count)

    def _sample_uniform(self, count: int) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if self._position == self.num_prompts:
                self._order = torch.randperm(self.num_prompts, generator=self._generator)
                self._position = 0
                self._epoch += 1
            take = min(count - len(out), self.num_prompts - self._position)
            out.extend(self._order[self._position : self._position + take].tolist())
            self._position += take
        return out

    def _sample_prioritized(self, count: int) -> list[int]:
        probs = self.probabilities()
        positive = int((probs > 0).sum())
        first = min(count, positive)
        chosen = (
            torch.multinomial(probs, first, replacement=False, generator=self._generator) if first else None
        )
        out = [] if chosen is None else chosen.tolist()
        if count > first:  # every prompt with weight > 0 is taken; the rest uniformly among the solved ones
            zero = (probs == 0).nonzero().squeeze(1)
            out.extend(
                zero[torch.randperm(zero.numel(), generator=self._generator)[: count - first]].tolist()
            )
        return out

    # --- checkpointing -----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: generator state, epoch order and position, statistics."""
        return {
            "kind": self.kind,
            "num_prompts": self.num_prompts,
            "seed": self.seed,
            "generator": self._generator.get_state(),
            "tie_order": self._tie_order.clone(),
            "order": self._order.clone(),
            "position": self._position,
            "epoch": self._epoch,
            "success": self._success.clone(),
            "observations": self._observations.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; the kind and the number of prompts must match."""
        for key in ("kind", "num_prompts"):
            if state.get(key) != getattr(self, key):
                raise ConfigError(
                    f"cannot resume the prompt sampler: checkpoint has {key}={state.get(key)!r} but this run "
                    f"has {key}={getattr(self, key)!r}"
                )
        self.seed = int(state["seed"])
        self._generator.set_state(state["generator"])
        self._tie_order = state["tie_order"].clone()
        self._order = state["order"].clone()
        self._position = int(state["position"])
        self._epoch = int(state["epoch"])
        self._success = state["success"].clone().to(F64)
        self._observations = state["observations"].clone().to(torch.long)


_LEVEL = re.compile(r"-?\d+(?:\.\d+)?")


def difficulties_from_problems(problems: Sequence[Any], key: str = "level") -> torch.Tensor | None:
    """One difficulty per problem from ``problem.meta[key]`` (e.g. MATH's "Level 3" -> 3.0).

    Returns None when no problem has ``key`` (the curriculum then estimates difficulty from
    success rates); raises DataError naming the problem when only some have it or it has no number.
    """
    raw = [getattr(p, "meta", {}).get(key) for p in problems]
    if all(v is None for v in raw):
        return None
    values = []
    for problem, value in zip(problems, raw, strict=True):
        match = _LEVEL.search(str(value)) if value is not None else None
        if match is None:
            where = getattr(problem, "meta", {}).get("source") or getattr(problem, "id", "?")
            raise DataError(
                f"problem {where}: meta['{key}'] = {value!r} is not a difficulty number; every problem needs one "
                "for a curriculum by given difficulty"
            )
        values.append(float(match.group()))
    return torch.tensor(values, dtype=F64)
