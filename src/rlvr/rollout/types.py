"""What every rollout engine takes and returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample.

    ``temperature`` 0 decodes greedily. Logprobs are those of ``softmax(logits / temperature)``
    (``softmax(logits)`` when greedy): the distribution the token was drawn from before top-p/top-k
    truncation. The trainer recomputes logprobs with the same convention
    (:func:`rlvr.algorithms.entropy.token_logprobs` with the same temperature), so the importance
    ratio is exactly 1 before the first update; truncation by top-p/top-k is not part of either,
    unless ``truncated_logprobs`` is set.
    """

    n: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop_strings: tuple[str, ...] = ()
    seed: int = 0
    truncated_logprobs: bool = False
    """Record each token's logprob under the top-k / top-p truncated, renormalised distribution it
    was drawn from in ``Completion.logprobs``, and the untruncated one in
    ``Completion.untruncated_logprobs`` (``algorithm.replay_sampling_support``; the trainer replays
    the truncation with :func:`rlvr.algorithms.sampling_support.truncated_token_logprobs`)."""


@dataclass
class Completion:
    """One sampled completion of prompt ``prompt_index``.

    ``token_ids`` include the end-of-sequence token when generation stopped on it, and
    ``logprobs`` has one entry per token (0 on observation tokens). ``finish_reason`` is ``stop`` (end-of-sequence token or
    a stop string) or ``length`` (the budget ran out).
    """

    prompt_index: int
    prompt_ids: list[int]
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: FinishReason
    mask: list[int] | None = None
    """Multi-turn trajectories: 1 on the tokens the policy sampled, 0 on observation tokens (which
    are not trained on); None means every token was sampled."""
    untruncated_logprobs: list[float] | None = None
    """With ``SamplingParams.truncated_logprobs``: the logprobs of ``softmax(logits / temperature)``
    before truncation (``logprobs`` then holds the truncated ones); None otherwise."""
    weight_version: int | None = None
    """The version of the weights that sampled it, for engines that hold their own copy of the
    policy (vllm: 0 for the weights it was built from, then one more per weight push); None for the
    built-in engine, which samples from the policy module itself."""


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Completion]:
        """``sampling.n`` completions for each tokenized prompt, grouped by prompt in order."""
        ...
