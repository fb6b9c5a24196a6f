import pytest

from rlvr.rewards.base import REWARDS, RewardBatch
from rlvr.rewards.format import format_reward, format_strict_reward, is_strictly_well_formed, is_well_formed
from rlvr.tasks.base import Problem


def batch_of(*completions: str) -> RewardBatch:
    return RewardBatch(
        completions=list(completions),
        problems=[Problem(id=str(i), question="q", answer="a") for i in range(len(completions))],
    )


GOOD = "<think>2 + 2 is 4</think>\n<answer>4</answer>"

# (completion, lenient verdict, strict verdict)
CASES = [
    (GOOD, True, True),
    ("  \n<think>\nx\n</think>\n\n<answer>\n4\n</answer>\n  ", True, True),  # whitespace everywhere
    ("<think></think><answer></answer>", True, True),  # empty blocks are still the template
    ("<answer>4</answer>", False, False),  # missing think block
    ("<think>x</think>", False, False),  # missing answer block
    ("<think>x</think><answer>4", False, False),  # unclosed answer
    ("<think>x<answer>4</answer>", False, False),  # unclosed think
    ("<answer>4</answer><think>x</think>", False, False),  # wrong order
    ("</think>x<think><answer>4</answer>", False, False),  # think tags swapped
    ("<think>x</think> so <answer>4</answer>", False, False),  # text between the blocks
    (GOOD + " The answer is 4.", True, False),  # text after </answer>
    ("Sure. " + GOOD, True, False),  # text before <think>
    (GOOD + "<answer>5</answer>", True, False),  # duplicate answer
    ("<think>a</think><think>b</think><answer>4</answer>", True, False),  # duplicate think
    ("<think><think>x</think></think><answer>4</answer>", True, False),  # nested think
    ("<think>x <answer>3</answer></think><answer>4</answer>", True, False),  # answer nested in think
    ("<THINK>x</THINK><ANSWER>4</ANSWER>", False, False),  # tags are case-sensitive
]


@pytest.mark.parametrize("completion,lenient,strict", CASES)
def test_lenient_and_strict_verdicts(completion, lenient, strict):
    assert is_well_formed(completion) is lenient
    assert is_strictly_well_formed(completion) is strict


def test_strict_is_never_looser_than_lenient():
    for completion, _, _ in CASES:
        if is_strictly_well_formed(completion):
            assert is_well_formed(completion)


def test_think_opened_reads_the_completion_as_continuing_the_prompts_think():
    continuation = "2 + 2 is 4</think><answer>4</answer>"
    assert not is_strictly_well_formed(continuation)
    assert is_strictly_well_formed(continuation, think_opened=True)
    assert is_well_formed(continuation, think_opened=True)
    # Opening <think> again after the prompt already did is a duplicate tag.
    assert not is_strictly_well_formed(GOOD, think_opened=True)
    assert is_well_formed(GOOD, think_opened=True)  # lenient: a think block still precedes the answer


def test_registered_rewards_score_with_configurable_values():
    batch = batch_of(GOOD, GOOD + " trailing", "<answer>4</answer>")
    assert REWARDS.get("format") is format_reward
    assert REWARDS.get("format_strict") is format_strict_reward
    assert format_reward(batch).values == [1.0, 1.0, 0.0]
    assert format_strict_reward(batch).values == [1.0, 0.0, 0.0]
    # Logic-RL scores +1 / -1.
    assert format_strict_reward(batch, well_formed=1.0, malformed=-1.0).values == [1.0, -1.0, -1.0]
    assert format_reward(batch, well_formed=0.5, malformed=-0.5).values == [0.5, 0.5, -0.5]


def test_think_opened_parameter_reaches_the_rule():
    batch = batch_of("x</think><answer>4</answer>")
    assert format_strict_reward(batch).values == [0.0]
    assert format_strict_reward(batch, think_opened=True).values == [1.0]
    assert format_reward(batch, think_opened=True).values == [1.0]


def test_empty_batch():
    assert format_reward(batch_of()).values == []
