import pytest

from rlvr.errors import DataError
from rlvr.rewards.base import REWARDS, RewardBatch
from rlvr.rewards.knights_knaves import knights_knaves_reward, parse_identities
from rlvr.tasks.base import Problem
from rlvr.tasks.knights_knaves import load_knights_knaves

LOGIC_RL = {"correct_score": 2.0, "wrong_score": -1.5, "no_answer_score": -2.0}


def kk_problem(names, roles, pid="kk"):
    return Problem(id=pid, question="q", answer={"names": list(names), "roles": list(roles)})


ZO = kk_problem(["Zoey", "Oliver"], ["knight", "knave"])


def score(completions, problem=ZO, **params):
    return knights_knaves_reward(RewardBatch(list(completions), [problem] * len(completions)), **params)


def test_registered():
    assert REWARDS.get("knights_knaves") is knights_knaves_reward


@pytest.mark.parametrize(
    "answer,outcome",
    [
        ("(1) Zoey is a knight\n(2) Oliver is a knave", "correct"),
        ("Oliver is a knave, and Zoey is a knight.", "correct"),  # any order
        ("ZOEY IS A KNIGHT; oliver is a KNAVE", "correct"),  # case-insensitive
        ("(1) Zoey is a knave\n(2) Oliver is a knave", "wrong"),  # one identity wrong
        ("(1) Zoey is a knave\n(2) Oliver is a knight", "wrong"),  # both wrong
        ("(1) Zoey is a knight", "no_answer"),  # Oliver missing: one role word for two people
        ("Zoey is a knight. Oliver is a knave. Zoey is a knight.", "no_answer"),  # three role words
        ("Zoey is a knight or a knave, Oliver is a knave", "no_answer"),  # hedging
        ("(1) Zoe is a knight\n(2) Oliver is a knave", "no_answer"),  # unknown name
        ("(1) Zoeyy is a knight\n(2) Oliver is a knave", "no_answer"),  # name must be a whole word
        ("Zoey: knight, Oliver: knave", "no_answer"),  # not "<name> is a <role>"
        ("", "no_answer"),
    ],
)
def test_parsing_and_outcomes(answer, outcome):
    result = score([f"<think>...</think><answer>{answer}</answer>"], **LOGIC_RL)
    assert result.outcomes == [outcome]
    assert result.correct == [outcome == "correct"]
    assert result.values == [{"correct": 2.0, "wrong": -1.5, "no_answer": -2.0}[outcome]]


def test_defaults_are_one_and_zero_and_no_block_is_no_answer():
    result = score(
        [
            "<answer>Zoey is a knight. Oliver is a knave.</answer>",
            "<answer>Zoey is a knave. Oliver is a knave.</answer>",
            "Zoey is a knight. Oliver is a knave.",  # no answer block
        ]
    )
    assert result.values == [1.0, 0.0, 0.0]
    assert result.outcomes == ["correct", "wrong", "no_answer"]
    assert result.metrics == {"accuracy": pytest.approx(1 / 3), "no_answer_rate": pytest.approx(1 / 3)}


def test_format_gate_reproduces_logic_rl():
    # Logic-RL scores the answer only when the strict format holds; otherwise S_answer = -2
    good = "<think>x</think>\n<answer>Zoey is a knight. Oliver is a knave.</answer>"
    no_think = "<answer>Zoey is a knight. Oliver is a knave.</answer>"
    two_answers = good + "<answer>Zoey is a knight. Oliver is a knave.</answer>"
    gated = score([good, no_think, two_answers], require_format=True, **LOGIC_RL)
    assert gated.values == [2.0, -2.0, -2.0]
    assert gated.outcomes == ["correct", "no_answer", "no_answer"]
    assert gated.metrics["format_fail_rate"] == pytest.approx(2 / 3)
    ungated = score([good, no_think, two_answers], **LOGIC_RL)
    assert ungated.values == [2.0, 2.0, 2.0]
    # a prompt that ends with <think> (r1_zero): the completion starts inside the think block
    opened = score(
        ["x</think>\n<answer>Zoey is a knight. Oliver is a knave.</answer>"],
        require_format=True,
        think_opened=True,
    )
    assert opened.values == [1.0]


def test_logic_rl_total_with_format_strict():
    # S = S_format + S_answer: 1 + 2 = 3, 1 - 1.5 = -0.5, 1 - 2 = -1, -1 - 2 = -3
    from rlvr.rewards.format import format_strict_reward

    completions = [
        "<think>x</think><answer>Zoey is a knight. Oliver is a knave.</answer>",
        "<think>x</think><answer>Zoey is a knave. Oliver is a knave.</answer>",
        "<think>x</think><answer>I do not know.</answer>",
        "<answer>Zoey is a knight. Oliver is a knave.</answer>",
    ]
    batch = RewardBatch(completions, [ZO] * 4)
    answer = knights_knaves_reward(batch, require_format=True, **LOGIC_RL).values
    fmt = format_strict_reward(batch, well_formed=1.0, malformed=-1.0).values
    assert [a + f for a, f in zip(answer, fmt, strict=True)] == [3.0, -0.5, -1.0, -3.0]


def test_real_rows_formatted_as_model_answers():
    problems = load_knights_knaves([3, 5, 7], "train")[::150]  # 18 real puzzles
    right, flipped = [], []
    for p in problems:
        right.append(f"<think>...</think><answer>{p.meta['solution_text']}</answer>")
        first, role = p.answer["names"][0], p.answer["roles"][0]
        other = "knave" if role == "knight" else "knight"
        flipped_text = p.meta["solution_text"].replace(f"{first} is a {role}", f"{first} is a {other}", 1)
        assert flipped_text != p.meta["solution_text"]
        flipped.append(f"<think>...</think><answer>{flipped_text}</answer>")
    assert knights_knaves_reward(RewardBatch(right, problems)).correct == [True] * len(problems)
    result = knights_knaves_reward(RewardBatch(flipped, problems))
    assert result.outcomes == ["wrong"] * len(problems)


def test_parse_identities():
    assert parse_identities("Zoey is a knight\nOliver is a knave", ["Zoey", "Oliver"]) == {
        "Zoey": "knight",
        "Oliver": "knave",
    }
    assert parse_identities("Zoey is a knight", ["Zoey", "Oliver"]) is None


def test_malformed_gold_is_a_data_error():
    bad = Problem("kk-bad", "q", {"names": ["A", "B"], "roles": ["knight"]})
    with pytest.raises(DataError, match="kk-bad"):
        knights_knaves_reward(RewardBatch(["<answer>A is a knight</answer>"], [bad]))
