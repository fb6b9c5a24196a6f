"""The padded tensors of one step's rollouts, and how they split into micro-batches.

Layout (the response-aligned layout: every algorithm tensor is [B, T] over response tokens)::

    input_ids  [B, P + T]   prompt left-padded to P, completion right-padded to T
    attention  [B, P + T]   1 on real tokens
    response   [B, T]       the response mask
    old_logprobs, ref_logprobs, advantages, ...   [B, T]

so ``logits[:, P - 1 + t]`` predicts response token ``t`` of every row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from rlvr.rollout.types import Completion


@dataclass
class RolloutBatch:
    input_ids: torch.Tensor  # [B, P + T]
    attention: torch.Tensor  # [B, P + T] long
    response_mask: torch.Tensor  # [B, T] float
    prompt_width: int  # P
    old_logprobs: torch.Tensor  # [B, T] from the rollout (float32)
    rewards: torch.Tensor  # [B]
    correct: torch.Tensor  # [B] bool
    group_ids: torch.Tensor  # [B]
    prompt_lengths: list[int]
    response_lengths: list[int]
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    """Per-step tensors added later: advantages, returns, ref_logprobs, values."""

    @property
    def size(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device) -> RolloutBatch:
        move = lambda t: t.to(device)  # noqa: E731
        self.input_ids, self.attention = move(self.input_ids), move(self.attention)
        self.response_mask, self.old_logprobs = move(self.response_mask), move(self.old_logprobs)
        self.rewards, self.correct, self.group_ids = (
            move(self.rewards),
            move(self.correct),
            move(self.group_ids),
        )
        self.extra = {k: move(v) for k, v in self.extra.items()}
        return self


def make_batch(
    completions: Sequence[Completion],
    rewards: Sequence[float],
    correct: Sequence[bool],
    group_ids: Sequence[int],
    pad_id: int,
) -> RolloutBatch:
    """Pad completions (with their prompts) into a :class:`RolloutBatch`."""
    P = max(len(c.prompt_ids) for c in completions)
    T = max(1, max(len(c.token_ids) for c in completions))
    B = len(completions)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    old = torch.zeros((B, T), dtype=torch.float32)
    for i, c in enumerate(completions):
        p, t = len(c.prompt_ids), len(c.token_ids)
        ids[i, P - p : P] = torch.tensor(c.prompt_ids)
        attention[i, P - p : P + t] = 1
        if t:
            ids[i, P : P + t] = torch.tensor(c.token_ids)
            mask[i, :t] = 1.0
            old[i, :t] = torch.tensor(c.logprobs, dtype=torch.float32)
    return RolloutBatch(
        input_ids=ids,
        attention=attention,
        response_mask=mask,
        prompt_width=P,
        old_logprobs=old,
        rewards=torch.tensor(list(rewards), dtype=torch.float32),
        correct=torch.tensor(list(correct), dtype=torch.bool),
        group_ids=torch.tensor(list(group_ids), dtype=torch.long),
        prompt_lengths=[len(c.prompt_ids) for c in completions],
        response_lengths=[len(c.token_ids) for c in completions],
    )


@dataclass
class MicroBatch:
    """Rows ``rows`` of a batch, trimmed to their own widths."""

    rows: torch.Tensor  # [b] indices into the batch
    input_ids: torch.Tensor  # [b, p + t]
    attention: torch.Tensor  # [b, p + t]
    position_ids: torch.Tensor  # [b, p + t]
    prompt_width: int  # p: logits[:, p - 1 + j] predict response token j
    response_width: int  # t


def micro_batches(batch: RolloutBatch, rows: Sequence[int], max_tokens: int) -> Iterator[MicroBatch]:
    """Split ``rows`` into micro-batches of at most ``max_tokens`` padded tokens each.

    Rows are sorted by length so that rows of similar length share a micro-batch; each
    micro-batch is trimmed to its longest prompt and response, so little compute goes to padding.
    A single row longer than ``max_tokens`` still gets a micro-batch of its own.
    """
    P = batch.prompt_width
    order = sorted(rows, key=lambda r: batch.prompt_lengths[r] + batch.response_lengths[r])
    current: list[int] = []
    p_max = t_max = 0

    def emit(chunk: list[int], p: int, t: int) -> MicroBatch:
        t = max(t, 1)
        index = torch.tensor(chunk, device=batch.input_ids.device)
        ids = batch.input_ids[index, P - p : P + t]
        attention = batch.attention[index, P - p : P + t]
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        return MicroBatch(index, ids, attention, positions, p, t)

    for r in order:
        p, t = batch.prompt_lengths[r], batch.response_lengths[r]
        new_p, new_t = max(p_max, p), max(t_max, t)
        if current and (len(current) + 1) * (new_p + new_t) > max_tokens:
            yield emit(current, p_max, t_max)
            current, new_p, new_t = [], p, t
        current.append(r)
        p_max, t_max = new_p, new_t
    if current:
        yield emit(current, p_max, t_max)


def to_response_width(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pad [b, t] response values with zeros (or cut) to [b, width]."""
    if values.shape[1] == width:
        return values
    if values.shape[1] > width:
        return values[:, :width]
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))
