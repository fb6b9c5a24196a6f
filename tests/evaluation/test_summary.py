import pytest

from rlvr.evaluation.summary import macro_average, summarize


def record(index, sample, correct, answer, *, length=10, formatted=True, truncated=False, level=1):
    return {
        "index": index,
        "id": f"p{index}",
        "sample": sample,
        "answer": answer,
        "correct": correct,
        "outcome": "correct" if correct else ("no_answer" if answer is None else "wrong"),
        "formatted": formatted,
        "truncated": truncated,
        "length": length,
        "meta": {"level": level},
    }


def test_summary_of_hand_made_records():
    records = [
        # problem 0: 2 of 4 correct; answers 5, 5, 6, 7 -> the correct class 5 wins the vote
        record(0, 0, True, "5", length=10),
        record(0, 1, True, "5", length=20),
        record(0, 2, False, "6", length=30),
        record(0, 3, False, "7", length=40, truncated=True),
        # problem 1: none correct; one sample has no answer
        record(1, 0, False, "1", length=50, level=2),
        record(1, 1, False, "1", length=50, level=2),
        record(1, 2, False, None, length=50, formatted=False, level=2),
        record(1, 3, False, "2", length=50, level=2),
    ]
    s = summarize(list(reversed(records)), equivalence="exact", breakdown=("level",))
    assert s["problems"] == 2 and s["samples_per_problem"] == 4
    assert s["avg@4"] == pytest.approx((0.5 + 0.0) / 2)
    # pass@2 of problem 0: 1 - C(2,2)/C(4,2) = 5/6
    assert s["pass@2"] == pytest.approx((5 / 6 + 0) / 2)
    assert s["pass@4"] == pytest.approx(0.5)
    assert s["maj@4"] == pytest.approx(0.5)  # problem 0 wins the vote, problem 1 has no correct answer
    assert s["length_mean"] == pytest.approx((10 + 20 + 30 + 40 + 200) / 8)
    assert s["length_correct"] == pytest.approx(15)
    assert s["length_wrong"] == pytest.approx((30 + 40 + 200) / 6)
    assert s["format_rate"] == pytest.approx(7 / 8)
    assert s["truncation_rate"] == pytest.approx(1 / 8)
    assert s["no_answer_rate"] == pytest.approx(1 / 8)
    assert s["by_level"] == {
        "1": {"problems": 1, "avg@4": 0.5, "pass@4": 1.0, "maj@4": 1.0},
        "2": {"problems": 1, "avg@4": 0.0, "pass@4": 0.0, "maj@4": 0.0},
    }


def test_majority_vote_groups_answers_through_the_math_grader():
    # 2 samples say 1/2 in different notations, 2 samples say 1/3 in the same text: with exact
    # text matching the tie is 2 (1/3) against 1 + 1; through the grader it is 2 against 2
    answers = [("\\frac12", True), ("0.5", True), ("1/3", False), ("1/3", False)]
    records = [record(0, i, ok, a) for i, (a, ok) in enumerate(answers)]
    assert summarize(records, equivalence="exact")["maj@4"] == 0.0
    assert summarize(records, equivalence="math")["maj@4"] == 0.5


def test_uneven_samples_and_empty_input_are_errors():
    with pytest.raises(ValueError, match="problem p1 has a different number"):
        summarize([record(0, 0, True, "1"), record(0, 1, True, "1"), record(1, 0, True, "1")])
    with pytest.raises(ValueError, match="no samples"):
        summarize([])


def test_macro_average_counts_each_benchmark_once():
    small = summarize([record(0, 0, True, "1")])
    big = summarize([record(i, 0, False, "1") for i in range(9)])
    macro = macro_average({"small": small, "big": big})
    assert macro["avg@1"] == pytest.approx(0.5)
    assert "problems" not in macro
