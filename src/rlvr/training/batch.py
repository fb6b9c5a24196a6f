"""The padded tensors of one step's rollouts, and how they split into micro-batches.

Layout (the response-aligned layout: every algorithm tensor is [B, T] over response tokens)::

    input_ids  [B, P + T]   prompt left-padded to P, completion right-padded to T
    attention  [B, P + T]   1 on real tokens
    response   [B, T]       the response mask (0 also on the observation tokens inside a
                            multi-turn trajectory: holes the losses and counts skip)
    old_logprobs, ref_logprobs, advantages, ...   [B, T]

so ``logits[:, P - 1 + t]`` predicts response token ``t`` of every row.

A multi-turn trajectory whose chat template rewrites earlier turns is several rows, one per turn
(:class:`~rlvr.rollout.multi_turn.Segment`), each with the context its turn was sampled from;
:class:`TrajectoryLayout` records where each row's tokens lie in its trajectory, so that the
advantage estimators see a trajectory as one sequence, as they do a trajectory that is one row.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from rlvr.distributed import all_reduce_max, gather_objects, world_size
from rlvr.rollout.types import Completion


@dataclass
class TrajectoryLayout:
    """Where the response tokens of each row lie in its trajectory, for a batch whose trajectories
    may be split into rows (one per turn).

    Row ``r``'s response token ``t`` is token ``offset[r] + t`` of trajectory ``trajectory[r]``.
    :meth:`gather_tokens` lays [rows, T] values out as [trajectories, L] (the turns of a trajectory
    one after the other, as a trajectory that is one row has them), :meth:`scatter_tokens` puts
    them back; estimators that look at whole sequences (group baselines, GAE's recursion, the last
    token's reward) therefore treat a split trajectory exactly as an unsplit one.
    """

    trajectory: list[int]
    """Per row, the index of its trajectory."""
    offset: list[int]
    """Per row, where its first response token lies in its trajectory."""
    widths: list[int]
    """Per row, its number of response tokens."""
    lengths: list[int]
    """Per trajectory, its number of tokens."""

    @property
    def turns(self) -> list[int]:
        """Per row, its place among its trajectory's rows (0 for the first)."""
        seen: dict[int, int] = {}
        out = []
        for t in self.trajectory:
            out.append(seen.get(t, 0))
            seen[t] = out[-1] + 1
        return out

    @property
    def first_rows(self) -> list[int]:
        """Per trajectory, its first row."""
        first: dict[int, int] = {}
        for r, t in enumerate(self.trajectory):
            first.setdefault(t, r)
        return [first[t] for t in range(len(self.lengths))]

    def _index(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        rows, cols, trajs, positions = [], [], [], []
        for r, (t, o, w) in enumerate(zip(self.trajectory, self.offset, self.widths, strict=True)):
            rows += [r] * w
            cols += range(w)
            trajs += [t] * w
            positions += range(o, o + w)
        return tuple(torch.tensor(x, dtype=torch.long, device=device) for x in (rows, cols, trajs, positions))

    def gather_rows(self, values: torch.Tensor) -> torch.Tensor:
        """[rows, ...] -> [trajectories, ...]: each trajectory's first row (values shared by its rows)."""
        return values[torch.tensor(self.first_rows, dtype=torch.long, device=values.device)]

    def gather_tokens(self, values: torch.Tensor) -> torch.Tensor:
        """[rows, T] -> [trajectories, L]: each trajectory's tokens in order (zeros past its end)."""
        rows, cols, trajs, positions = self._index(values.device)
        out = values.new_zeros((len(self.lengths), max(self.lengths, default=0) or 1))
        out[trajs, positions] = values[rows, cols]
        return out

    def estimator_inputs(
        self, rewards: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """An advantage estimator's ``rewards`` ([rows] or [rows, T]), ``mask`` and ``group_ids``
        over whole trajectories."""
        rewards = self.gather_tokens(rewards) if rewards.dim() == 2 else self.gather_rows(rewards)
        return rewards, self.gather_tokens(mask), self.gather_rows(group_ids)

    def scatter_tokens(self, values: torch.Tensor, width: int) -> torch.Tensor:
        """[trajectories, L] -> [rows, width]: the inverse of :meth:`gather_tokens` (zeros on padding)."""
        rows, cols, trajs, positions = self._index(values.device)
        out = values.new_zeros((len(self.trajectory), width))
        out[rows, cols] = values[trajs, positions]
        return out


def training_rows(completions: Sequence[Completion]) -> tuple[list[Completion], TrajectoryLayout | None]:
    """The rows a step trains on: each completion, or each turn of a trajectory that has
    ``segments`` (its rendered context as the prompt, the turn's tokens as the response), with the
    layout that maps them back; None (and the completions themselves) when no trajectory is split."""
    if not any(getattr(c, "segments", None) for c in completions):
        return list(completions), None
    rows: list[Completion] = []
    trajectory, offset, widths = [], [], []
    for i, c in enumerate(completions):
        segments = getattr(c, "segments", None)
        if not segments:
            rows.append(c)
            trajectory.append(i), offset.append(0), widths.append(len(c.token_ids))
            continue
        for s in segments:
            rows.append(
                Completion(
                    prompt_index=c.prompt_index,
                    prompt_ids=list(s.prompt_ids),
                    token_ids=c.token_ids[s.start : s.end],
                    logprobs=c.logprobs[s.start : s.end],
                    text="",
                    finish_reason=c.finish_reason,
                    mask=c.mask[s.start : s.end] if c.mask is not None else None,
                )
            )
            trajectory.append(i), offset.append(s.start), widths.append(s.end - s.start)
    lengths = [len(c.token_ids) for c in completions]
    return rows, TrajectoryLayout(trajectory, offset, widths, lengths)


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
    """Per-step tensors added later: advantages, returns, ref_logprobs, values; and
    ``untruncated_old_logprobs`` [B, T] when the rollout recorded truncated logprobs as
    ``old_logprobs`` (``algorithm.replay_sampling_support``)."""
    row_keys: list[tuple[int, ...]] = field(default_factory=list)
    """(group position in the step, index in the group) of every row, and the turn for a
    trajectory split into turns: unique over all ranks, so the rows of all ranks sort into the
    order one process would have them in."""
    layout: TrajectoryLayout | None = None
    """Set when trajectories are split into rows (:func:`training_rows`): how rows map to them."""

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
    row_keys: Sequence[tuple[int, ...]] | None = None,
) -> RolloutBatch:
    """Pad completions (with their prompts) into a :class:`RolloutBatch`.

    ``row_keys`` defaults to (group id, index within the group). No completions give a batch of
    zero rows (a rank whose share of the step is empty still takes part in every collective).
    """
    P = max((len(c.prompt_ids) for c in completions), default=1)
    T = max(1, max((len(c.token_ids) for c in completions), default=1))
    B = len(completions)
    ids = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention = torch.zeros((B, P + T), dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.float32)
    old = torch.zeros((B, T), dtype=torch.float32)
    # Truncated logprobs in ``logprobs`` (SamplingParams.truncated_logprobs): keep the untruncated too.
    untruncated = (
        torch.zeros((B, T), dtype=torch.float32)
        if B and all(c.untruncated_logprobs is not None for c in completions)
        else None
    )
    for i, c in enumerate(completions):
        p, t = len(c.prompt_ids), len(c.token_ids)
        ids[i, P - p : P] = torch.tensor(c.prompt_ids)
        attention[i, P - p : P + t] = 1
        if t:
            ids[i, P : P + t] = torch.tensor(c.token_ids)
            mask[i, :t] = 1.0 if c.mask is None else torch.tensor(c.mask, dtype=torch.float32)
            old[i, :t] = torch.tensor(c.logprobs, dtype=torch.float32)
            if untruncated is not None:
                untruncated[i, :t] = torch.tensor(c.untruncated_logprobs, dtype=torch.float32)
    batch = RolloutBatch(
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
        row_keys=list(row_keys) if row_keys is not None else _keys_from_groups(group_ids),
    )
    if untruncated is not None:
        batch.extra["untruncated_old_logprobs"] = untruncated
    return batch


def _keys_from_groups(group_ids: Sequence[int]) -> list[tuple[int, int]]:
    seen: dict[int, int] = {}
    keys = []
    for g in group_ids:
        keys.append((int(g), seen.get(g, 0)))
        seen[g] = seen.get(g, 0) + 1
    return keys


def global_row_positions(row_keys: Sequence[tuple[int, ...]]) -> tuple[list[int], int]:
    """Each local row's position among the rows of all ranks, and how many rows there are in all.

    Positions follow the sorted keys, which is the order of the rows in one process; mini-batches
    drawn over positions are therefore the same whatever the number of ranks.
    """
    everyone = gather_objects([tuple(k) for k in row_keys])
    order = sorted(k for part in everyone for k in part)  # type: ignore[union-attr]
    index = {k: i for i, k in enumerate(order)}
    if len(index) != len(order):
        raise ValueError(f"row keys are not unique over the ranks: {everyone}")
    return [index[tuple(k)] for k in row_keys], len(order)


@dataclass
class MicroBatch:
    """Rows ``rows`` of a batch, trimmed to their own widths."""

    rows: torch.Tensor  # [b] indices into the batch
    input_ids: torch.Tensor  # [b, p + t]
    attention: torch.Tensor  # [b, p + t]
    position_ids: torch.Tensor  # [b, p + t]
    prompt_width: int  # p: logits[:, p - 1 + j] predict response token j
    response_width: int  # t

    @property
    def is_idle(self) -> bool:
        """A placeholder forward of one token: see :func:`aligned_micro_batches`."""
        return self.rows.numel() == 0


def idle_micro_batch(device: torch.device) -> MicroBatch:
    """Two tokens of id 0, no rows: a forward pass whose output is discarded (or backpropagated
    times zero) so that this rank takes part in the collectives of a sharded model."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    positions = torch.arange(2, device=device).unsqueeze(0)
    return MicroBatch(
        torch.zeros(0, dtype=torch.long, device=device), ids, torch.ones_like(ids), positions, 1, 1
    )


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


def aligned_micro_batches(batch: RolloutBatch, rows: Sequence[int], max_tokens: int) -> list[MicroBatch]:
    """:func:`micro_batches`, padded with idle micro-batches to the largest count of any rank.

    Under FSDP2 every forward and backward pass gathers and reduces parameters with the other
    ranks, so every rank must run the same number of them; with one process nothing is added.
    """
    out = list(micro_batches(batch, rows, max_tokens))
    if world_size() > 1:
        most = int(all_reduce_max(torch.tensor(len(out))).item())
        out += [idle_micro_batch(batch.input_ids.device) for _ in range(most - len(out))]
    return out


def to_response_width(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pad [b, t] response values with zeros (or cut) to [b, width]."""
    if values.shape[1] == width:
        return values
    if values.shape[1] > width:
        return values[:, :width]
    return torch.nn.functional.pad(values, (0, width - values.shape[1]))
