"""Rollout engines: sample completions (token ids, logprobs, finish reasons) from the policy."""

from rlvr.rollout.types import Completion, SamplingParams

__all__ = ["Completion", "SamplingParams"]
