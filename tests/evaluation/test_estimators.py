import itertools
import math
import random

import pytest

from rlvr.evaluation.estimators import AnswerVotes, avg_at_n, k_values, maj_at_k, pass_at_k


def brute_pass_at_k(correct: list[bool], k: int) -> float:
    subsets = list(itertools.combinations(range(len(correct)), k))
    return sum(any(correct[i] for i in s) for s in subsets) / len(subsets)


def brute_maj_at_k(classes: list[int | None], correct: list[bool], k: int) -> float:
    """Majority vote over every k-subset; ties split evenly; no answer does not vote."""
    class_correct: dict[int, bool] = {}
    for c, ok in zip(classes, correct, strict=True):
        if c is not None:
            class_correct.setdefault(c, ok)
    total = 0.0
    subsets = list(itertools.combinations(range(len(classes)), k))
    for s in subsets:
        votes: dict[int, int] = {}
        for i in s:
            if classes[i] is not None:
                votes[classes[i]] = votes.get(classes[i], 0) + 1
        if not votes:
            continue
        top = max(votes.values())
        winners = [c for c, v in votes.items() if v == top]
        total += sum(class_correct[c] for c in winners) / len(winners)
    return total / len(subsets)


def test_pass_at_k_hand_computed():
    # n = 4, c = 1, k = 2: 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5, abs=1e-15)
    # n = 10, c = 3, k = 5: 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252, abs=1e-15)
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 3, 3) == 1.0  # n - c = 2 < k: every 3-subset holds a correct sample
    assert pass_at_k(8, 3, 1) == pytest.approx(3 / 8, abs=1e-15)  # pass@1 is the mean accuracy


def test_pass_at_k_matches_enumeration_on_random_cases():
    rng = random.Random(0)
    for _ in range(60):
        n = rng.randint(1, 9)
        correct = [rng.random() < 0.4 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k(n, sum(correct), k) == pytest.approx(brute_pass_at_k(correct, k), abs=1e-12)


def test_pass_at_k_is_monotone_in_k_and_large_n_is_stable():
    values = [pass_at_k(1024, 5, k) for k in range(1, 1025)]
    assert all(a <= b + 1e-15 for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == 1.0 and values[0] == pytest.approx(5 / 1024)


def test_maj_at_k_hand_computed_with_ties():
    # votes A (correct) 2, B 1, C 1; k = 2: AA -> 1; AB, AB, AC, AC -> tie 1/2 each; BC -> 0
    votes = AnswerVotes((2, 1, 1), (True, False, False))
    assert maj_at_k(votes, 2) == pytest.approx((1 + 4 / 2) / 6, abs=1e-15)
    # k = n = 4: A has 2 votes, B and C one each: A wins outright
    assert maj_at_k(votes, 4) == 1.0
    # a correct class that only ever ties with one wrong class at k = n
    assert maj_at_k(AnswerVotes((2, 2), (True, False)), 4) == 0.5


def test_maj_at_k_no_answer_samples_do_not_vote():
    # 1 correct answer and 2 samples without one: any subset holding the answer wins
    votes = AnswerVotes((1,), (True,), no_answer=2)
    assert maj_at_k(votes, 3) == 1.0
    assert maj_at_k(votes, 1) == pytest.approx(1 / 3)
    assert maj_at_k(votes, 2) == pytest.approx(pass_at_k(3, 1, 2))
    assert maj_at_k(AnswerVotes((), (), no_answer=3), 2) == 0.0


def test_maj_at_k_matches_enumeration_on_random_cases():
    rng = random.Random(1)
    for _ in range(80):
        n = rng.randint(1, 9)
        num_classes = rng.randint(1, 4)
        classes = [rng.randrange(num_classes) if rng.random() > 0.2 else None for _ in range(n)]
        right = {c: rng.random() < 0.5 for c in range(num_classes)}
        correct = [c is not None and right[c] for c in classes]
        votes = AnswerVotes.from_samples(classes, correct)
        assert votes.n == n
        for k in range(1, n + 1):
            assert maj_at_k(votes, k) == pytest.approx(brute_maj_at_k(classes, correct, k), abs=1e-12)


def test_maj_at_k_with_large_classes_against_enumeration():
    # classes larger than the picks left for them (a case random small draws rarely reach)
    for counts, right, no_answer in (((5, 4), (True, False), 0), ((7, 2, 3), (False, True, False), 2)):
        classes = [c for c, m in enumerate(counts) for _ in range(m)] + [None] * no_answer
        correct = [c is not None and right[c] for c in classes]
        votes = AnswerVotes(counts, right, no_answer)
        for k in range(1, len(classes) + 1):
            assert maj_at_k(votes, k) == pytest.approx(brute_maj_at_k(classes, correct, k), abs=1e-12)


def test_maj_at_one_is_the_accuracy_of_answered_samples_and_limits():
    classes = [0, 0, 1, None, 2]
    correct = [True, True, False, False, False]
    votes = AnswerVotes.from_samples(classes, correct)
    assert maj_at_k(votes, 1) == pytest.approx(avg_at_n(correct))  # one sample always wins its own vote
    all_right = AnswerVotes((5,), (True,))
    assert all(maj_at_k(all_right, k) == 1.0 for k in range(1, 6))
    assert all(maj_at_k(AnswerVotes((5,), (False,)), k) == 0.0 for k in range(1, 6))


def test_class_order_does_not_change_maj_at_k():
    a = AnswerVotes((3, 1, 2), (False, True, True), no_answer=1)
    b = AnswerVotes((2, 3, 1), (True, False, True), no_answer=1)
    for k in range(1, 8):
        assert maj_at_k(a, k) == pytest.approx(maj_at_k(b, k), abs=1e-12)


def test_maj_at_k_is_fast_enough_for_64_distinct_answers():
    votes = AnswerVotes(tuple([1] * 64), tuple([i == 0 for i in range(64)]))
    # all distinct: every subset ties among k classes, the correct one wins 1/k of the time when picked
    for k in (1, 8, 64):
        expected = (k / 64) * (1 / k)
        assert maj_at_k(votes, k) == pytest.approx(expected, abs=1e-12)


def test_errors_and_k_values():
    with pytest.raises(ValueError, match="k must be between 1"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c \\(correct samples\\)"):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="at least one sample"):
        avg_at_n([])
    with pytest.raises(ValueError, match="correctness flags"):
        AnswerVotes((1, 2), (True,))
    assert k_values(1) == [1] and k_values(8) == [1, 2, 4, 8] and k_values(12) == [1, 2, 4, 8, 12]
    assert math.isclose(avg_at_n([True, False, True, True]), 0.75)
