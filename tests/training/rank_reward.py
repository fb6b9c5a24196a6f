"""A reward for tests/training/parallel_worker.py: 0 for every completion on rank 1, so that all of
that rank's groups have zero variance and dynamic sampling filters them out; on other ranks, 1 for
every other completion (mixed groups, which are kept)."""

from __future__ import annotations

from rlvr.distributed import rank
from rlvr.rewards.base import RewardBatch, RewardResult


def reward_on_rank_0_only(batch: RewardBatch) -> RewardResult:
    if rank() == 1:
        values = [0.0] * len(batch.completions)
    else:
        values = [float(i % 2 == 0) for i in range(len(batch.completions))]
    return RewardResult(values=values, correct=[v > 0 for v in values])
