"""Format rewards for the ``<think>...</think><answer>...</answer>`` template.

DeepSeek-R1 (arXiv 2501.12948, sec. 2.2.2, "Format rewards") asks the model to put its reasoning
between ``<think>`` and ``</think>`` and its answer between ``<answer>`` and ``</answer>``, and
rewards following that template. The paper gives no exact rule, so two are offered:

* ``format`` (lenient): somewhere in the completion, a think block is followed, after nothing
  but whitespace, by an answer block. Text before the think block or after the answer block,
  repeated tags and tags inside the blocks are tolerated.
* ``format_strict`` (Logic-RL, arXiv 2502.14768, sec. 3.1, "Format Reward"): each of the four
  tags occurs exactly once, in the order ``<think>`` < ``</think>`` < ``<answer>`` < ``</answer>``,
  with nothing but whitespace before ``<think>``, between ``</think>`` and ``<answer>``, and after
  ``</answer>``. This refuses the shortcuts Logic-RL saw a model take (answering without thinking,
  several answers, text after the answer).

Both return ``well_formed`` (default 1.0) for a completion that follows the template and
``malformed`` (default 0.0) otherwise; Logic-RL uses +1 / -1 (``malformed: -1.0``).

Prompt templates that end with ``<think>`` (the model continues inside the think block) pass
``think_opened=True``: the completion is then read as if it started with ``<think>``, so a
completion that opens a second ``<think>`` is malformed under the strict rule. Tags are
case-sensitive and must be written exactly as above (no spaces or attributes inside the brackets).
"""

from __future__ import annotations

import re

from rlvr.rewards.base import REWARDS, RewardBatch, RewardResult

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

# A think block, only whitespace, then an answer block; the shortest such span is enough.
_LENIENT = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)


def _as_read(completion: str, think_opened: bool) -> str:
    """The completion as the template sees it: prefixed with ``<think>`` when the prompt opened it."""
    return THINK_OPEN + completion if think_opened else completion


def is_well_formed(completion: str, *, think_opened: bool = False) -> bool:
    """Lenient rule: a think block followed, after optional whitespace, by an answer block.

    >>> is_well_formed("<think> 2+2 is 4 </think>\\n<answer>4</answer>")
    True
    >>> is_well_formed("<answer>4</answer><think>...</think>")  # wrong order
    False
    """
    return _LENIENT.search(_as_read(completion, think_opened)) is not None


def is_strictly_well_formed(completion: str, *, think_opened: bool = False) -> bool:
    """Strict rule (Logic-RL sec. 3.1): each tag exactly once, in order, only whitespace outside.

    >>> is_strictly_well_formed("<think>a</think> <answer>b</answer>\\n")
    True
    >>> is_strictly_well_formed("<think>a</think><answer>b</answer> done")  # text after the answer
    False
    """
    text = _as_read(completion, think_opened)
    if any(text.count(tag) != 1 for tag in TAGS):
        return False
    think_open, think_close = text.index(THINK_OPEN), text.index(THINK_CLOSE)
    answer_open, answer_close = text.index(ANSWER_OPEN), text.index(ANSWER_CLOSE)
    if not think_open < think_close < answer_open < answer_close:
        return False
    outside = (
        text[:think_open],
        text[think_close + len(THINK_CLOSE) : answer_open],
        text[answer_close + len(ANSWER_CLOSE) :],
    )
    return all(part.strip() == "" for part in outside)


def _score(flags: list[bool], well_formed: float, malformed: float) -> RewardResult:
    values = [float(well_formed) if ok else float(malformed) for ok in flags]
    return RewardResult(values=values)


@REWARDS.register("format")
def format_reward(
    batch: RewardBatch, *, well_formed: float = 1.0, malformed: float = 0.0, think_opened: bool = False
) -> RewardResult:
    """DeepSeek-R1's format reward (arXiv 2501.12948, sec. 2.2.2), lenient reading.

    ``well_formed`` if the completion contains ``<think>...</think>``, then only whitespace, then
    ``<answer>...</answer>``; ``malformed`` otherwise. Example: ``"<think>x</think> <answer>1</answer>"``
    scores 1.0, ``"<answer>1</answer>"`` scores 0.0.
    """
    return _score(
        [is_well_formed(c, think_opened=think_opened) for c in batch.completions], well_formed, malformed
    )


@REWARDS.register("format_strict")
def format_strict_reward(
    batch: RewardBatch, *, well_formed: float = 1.0, malformed: float = 0.0, think_opened: bool = False
) -> RewardResult:
    """Logic-RL's strict format reward (arXiv 2502.14768, sec. 3.1): +1 / -1 there (``malformed=-1``).

    ``well_formed`` only if each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` occurs exactly
    once, in that order, with nothing but whitespace before the think block, between the blocks and
    after the answer block. Example: ``"<think>x</think><answer>1</answer><answer>2</answer>"``
    (two answers) scores ``malformed``.
    """
    flags = [is_strictly_well_formed(c, think_opened=think_opened) for c in batch.completions]
    return _score(flags, well_formed, malformed)
