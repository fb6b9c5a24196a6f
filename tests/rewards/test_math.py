"""The ``math`` reward: outcomes, metrics, strict mode, gold checks, and the math-verify traps.

Real math-verify in real worker processes throughout. The ``*_trap`` tests first show the trap in
math-verify itself, then that the reward is not caught by it.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from math_verify import parse, verify

from rlvr.errors import ConfigError, DataError
from rlvr.rewards.base import REWARDS, RewardBatch
from rlvr.rewards.grading_pool import GradingPool
from rlvr.rewards.math import (
    MAX_ANSWER_CHARS,
    as_latex,
    check_gold,
    gold_text,
    grade_completions,
    math_reward,
    new_math_pool,
    set_math_grading_pool,
)
from rlvr.tasks.base import Problem


@pytest.fixture(scope="module")
def pool() -> Iterator[GradingPool]:
    pool = new_math_pool(num_workers=2)
    set_math_grading_pool(pool)
    yield pool
    set_math_grading_pool(None)
    pool.close()


@pytest.fixture
def keep_real_timer() -> Iterator[None]:
    """Restore SIGALRM's handler and the interval timer (pytest-timeout uses them) after a test."""
    handler = signal.getsignal(signal.SIGALRM)
    remaining = signal.getitimer(signal.ITIMER_REAL)
    yield
    signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, *remaining)


def batch_of(completions: list[str], golds: list[str], **kwargs: object) -> RewardBatch:
    problems = [Problem(id=str(i), question="q", answer=g) for i, g in enumerate(golds)]
    return RewardBatch(completions=completions, problems=problems, **kwargs)  # type: ignore[arg-type]


def outcomes(completions: list[str], golds: list[str], **kwargs: object) -> list[str]:
    return grade_completions(completions, golds, **kwargs).outcomes  # type: ignore[arg-type]


def test_registered_as_math() -> None:
    assert REWARDS.get("math") is math_reward


def test_three_outcomes_values_and_metrics(pool: GradingPool) -> None:
    completions = [
        "so \\boxed{\\frac{1}{2}}",  # correct (fast path: 1/2 = 0.5)
        "so \\boxed{(x+1)^2}",  # correct (math-verify: x^2+2x+1)
        "so \\boxed{3}",  # wrong
        "it ends with 0.5",  # no answer, although the last number equals the gold
        "so \\boxed{}",  # empty slot: no answer
    ]
    golds = ["0.5", "x^2+2x+1", "4", "0.5", "1"]
    result = math_reward(batch_of(completions, golds))
    assert result.values == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert result.correct == [True, True, False, False, False]
    assert result.outcomes == ["correct", "correct", "wrong", "no_answer", "no_answer"]
    # correct 2/5, wrong 1/5, no answer 2/5; one answer of three went to math-verify.
    assert result.metrics["reward/correct"] == pytest.approx(0.4)
    assert result.metrics["reward/wrong"] == pytest.approx(0.2)
    assert result.metrics["reward/no_answer"] == pytest.approx(0.4)
    assert result.metrics["reward/timeouts"] == 0.0
    assert result.metrics["reward/grader_errors"] == 0.0
    assert result.metrics["reward/fast_path"] == pytest.approx(2 / 3)


def test_truncated_completion_has_no_answer(pool: GradingPool) -> None:
    completions = ["\\boxed{7} wait, let me recheck, 7 + 1 is", "\\boxed{7}"]
    batch = batch_of(completions, ["7", "7"], truncated=[True, False])
    assert math_reward(batch).outcomes == ["no_answer", "correct"]
    assert math_reward(batch, grade_truncated=True).outcomes == ["correct", "correct"]


def test_unclosed_answer_tag_counts_when_generation_stopped_there(pool: GradingPool) -> None:
    # The engine stopped at the "</answer>" stop string and dropped it (truncated=False).
    completion = "<think>3 + 4</think> <answer>7"
    assert math_reward(batch_of([completion], ["7"], truncated=[False])).outcomes == ["correct"]
    assert math_reward(batch_of([completion], ["7"])).outcomes == ["no_answer"]  # unknown: refuse


def test_strict_mode(pool: GradingPool) -> None:
    r1 = ["<think>it is \\boxed{7}</think>", "<think>..</think> <answer>7</answer>"]
    assert math_reward(batch_of(r1, ["7", "7"])).outcomes == ["correct", "correct"]
    strict = math_reward(batch_of(r1, ["7", "7"]), strict=True, answer_slot="answer_tag")
    assert strict.outcomes == ["no_answer", "correct"]
    qwen = ["The answer is 7.", "\\boxed{7}"]
    strict = math_reward(batch_of(qwen, ["7", "7"]), strict=True, answer_slot="boxed")
    assert strict.outcomes == ["no_answer", "correct"]


def test_bad_settings(pool: GradingPool) -> None:
    batch = batch_of(["\\boxed{1}"], ["1"])
    with pytest.raises(ConfigError, match="answer_slot must be one of answer_tag, boxed"):
        math_reward(batch, answer_slot="box")
    with pytest.raises(ConfigError, match="strict=True needs the template's answer slot"):
        math_reward(batch, strict=True, answer_slot="none")
    with pytest.raises(ConfigError, match="timeout_s"):
        math_reward(batch_of(["\\boxed{x}"], ["y"]), timeout_s=0)
    assert math_reward(batch, answer_slot="none").outcomes == ["correct"]


def test_overlong_answer_is_wrong_without_a_check(pool: GradingPool) -> None:
    grades = grade_completions(["\\boxed{" + "1+" * MAX_ANSWER_CHARS + "1}"], ["5"])
    assert grades.outcomes == ["wrong"] and grades.fast_path == 0


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("\\sqrt{12}", "2\\sqrt{3}", "correct"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", "correct"),
        ("\\{1, 2\\}", "1, 2", "correct"),
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", "correct"),
        ("x \\in [2, 5)", "[2,5)", "correct"),
        ("\\$32,\\!348", "\\$32,\\!348", "correct"),
        ("32348", "\\$32,\\!348", "correct"),
        ("100", "100\\text{ square units}", "correct"),
        ("\\frac{12}{5525}", "\\frac{12}{5,\\!525}", "correct"),
        ("4:30 \\text{ p.m.}", "\\text{4:30 p.m.}", "correct"),  # a time, not 4/30
        ("2/15", "\\text{4:30 p.m.}", "wrong"),
        ("2", "2\\sqrt{3}", "wrong"),
        ("x^2", "x^3", "wrong"),
        ("1,2", "12", "wrong"),
    ],
)
def test_equivalence(pool: GradingPool, answer: str, gold: str, expected: str) -> None:
    assert outcomes([f"so \\boxed{{{answer}}}."], [gold]) == [expected]


def test_gold_must_be_wrapped_trap(pool: GradingPool) -> None:
    # math-verify on a bare gold reads the plain number 2 out of "2\sqrt{3}".
    assert parse("2\\sqrt{3}", parsing_timeout=None)[0] == 2
    assert str(parse(as_latex("2\\sqrt{3}"), parsing_timeout=None)[0]) == "2*sqrt(3)"
    assert outcomes(["\\boxed{2}", "\\boxed{\\sqrt{12}}"], ["2\\sqrt{3}", "2\\sqrt{3}"]) == [
        "wrong",
        "correct",
    ]


def test_float_timeout_trap(pool: GradingPool, keep_real_timer: None) -> None:
    gold, answer = parse("$2\\sqrt{3}$"), parse("$\\sqrt{12}$")
    assert verify(gold, answer, timeout_seconds=2) is True
    assert verify(gold, answer, timeout_seconds=1.5) is False  # signal.alarm(1.5) fails, silently
    assert outcomes(["\\boxed{\\sqrt{12}}"], ["2\\sqrt{3}"], timeout_s=1.5) == ["correct"]


def test_off_main_thread_trap(pool: GradingPool) -> None:
    seen: dict[str, object] = {}

    def in_thread() -> None:
        try:
            parse("$1$", parsing_timeout=5)
        except ValueError as e:
            seen["math_verify"] = str(e)
        seen["ours"] = outcomes(["\\boxed{x^2+2x+1}", "\\boxed{2}"], ["(x+1)^2", "3"])

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert "threaded environment" in str(seen["math_verify"])
    assert seen["ours"] == ["correct", "wrong"]


def test_callers_alarm_trap(pool: GradingPool, keep_real_timer: None) -> None:
    signal.signal(signal.SIGALRM, lambda signum, frame: None)
    signal.alarm(100)
    verify(parse("$1$"), parse("$x+1$"), timeout_seconds=3)
    assert signal.alarm(0) == 0  # math-verify cancelled the caller's alarm

    signal.alarm(100)
    assert outcomes(["\\boxed{x+1}"], ["1+x"]) == ["correct"]
    assert signal.alarm(0) > 90  # ours leaves it running


HOSTILE = ["\\boxed{10^{10^{10^{10}}}}", "\\boxed{(10^6)!}", "\\boxed{9^{9^{9}}}"]
QWEN = Path(__file__).parents[1] / "data" / "qwen25_math_cot_100.jsonl"


def test_hostile_answers_time_out_while_a_batch_of_512_is_graded(
    pool: GradingPool, keep_real_timer: None
) -> None:
    completions, golds = [], []
    for line in QWEN.read_text(encoding="utf-8").splitlines()[:64]:
        row = json.loads(line)
        completions += row["response"]
        golds += [row["answer"]] * len(row["response"])
    completions, golds = completions[:510], golds[:510]
    start = time.monotonic()
    normal = math_reward(batch_of(completions, golds), timeout_s=1.0)
    normal_work = time.monotonic() - start

    fired = []
    signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    pids_before = set(pool.pids())
    signal.alarm(1)  # the caller's own alarm fires during the batch
    start = time.monotonic()
    # Both hostile answers land in the first chunk of one worker (work stealing spreads them).
    result = math_reward(batch_of(HOSTILE[:2] + completions, ["5", "5"] + golds), timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert result.outcomes == ["timeout", "timeout"] + normal.outcomes
    assert result.values[:2] == [0.0, 0.0]
    assert result.metrics["reward/timeouts"] == 2.0 and result.metrics["reward/retried"] >= 2.0
    assert fired == [signal.SIGALRM]
    # Left alone, the hostile answers would run for hours; the batch ends after about one limit and
    # one retry limit (two hung items, two workers) plus the normal work. The bound is loose enough
    # for a loaded machine restarting its workers: it proves the hung checks were cut, not how fast.
    assert elapsed < 1.0 + 2.0 + 2 * normal_work + 15.0, (elapsed, normal_work)
    assert pids_before - set(pool.pids())  # workers were killed and replaced
    # The batch after the kills is graded normally; a third hostile answer is one more timeout.
    again = math_reward(batch_of([HOSTILE[2], "\\boxed{0.5}"], ["5", "\\frac12"]), timeout_s=1.0)
    assert again.outcomes == ["timeout", "correct"]
    assert again.metrics["reward/timeouts"] == 1.0


def test_timeouts_with_more_hostile_answers_than_workers(pool: GradingPool) -> None:
    normal = ["\\boxed{(x+1)^2}", "\\boxed{\\frac{1}{3}}", "\\boxed{7}", "\\boxed{y}"] * 10
    golds = ["x^2+2x+1", "\\frac{2}{6}", "7", "x"] * 10
    result = math_reward(
        batch_of(normal[:20] + HOSTILE + normal[20:], golds[:20] + ["5"] * 3 + golds[20:]), timeout_s=0.5
    )
    assert result.outcomes[20:23] == ["timeout"] * 3
    assert result.outcomes[:20] + result.outcomes[23:] == ["correct", "correct", "correct", "wrong"] * 10
    assert result.metrics["reward/timeouts"] == 3.0
    # The hung checks ran twice; an ordinary check that overruns 0.5 s on a loaded machine is run
    # again with 1 s instead of being scored, which is why the outcomes above hold under load.
    assert result.metrics["reward/retried"] >= 3.0


def test_check_gold() -> None:
    for gold in [
        "42",
        "1,000",
        "\\text{4:30 p.m.}",
        "2\\sqrt{3}",
        "\\frac{12}{5,\\!525}",
        "$2$",
        "\\$32,\\!348",
    ]:
        check_gold(gold)
    check_gold(27.0)  # AMC golds are floats
    for bad in ["\\frac{", "}{", "", "  ", "$$"]:
        with pytest.raises(DataError, match="gold answer"):
            check_gold(bad)
    for bad in [None, True, ["2"]]:
        with pytest.raises(DataError, match="must be a string or a number"):
            check_gold(bad)


def test_gold_text() -> None:
    assert gold_text(27.0) == "27"
    assert gold_text(2.5) == "2.5"
    assert gold_text(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"


def test_unparseable_gold_at_reward_time_scores_zero(pool: GradingPool) -> None:
    grades = grade_completions(["\\boxed{1}"], ["\\frac{"])
    assert grades.outcomes == ["wrong"]
    assert grades.grader_errors == 1 and "DataError" in grades.errors[0]


def test_spaced_sums_parse_through_the_whitespace_fallback():
    from rlvr.rewards.math import check_gold, parse_math

    # math-verify alone parses "$a + b + c$" as the string 'a +'; the fallback recovers the sum.
    check_gold("a + b + c")
    assert any(not isinstance(x, str) for x in parse_math("a + b + c"))
    # Text is never compacted: its spaces are part of what it says.
    assert any(not isinstance(x, str) for x in parse_math("\\text{4:30 p.m.}"))


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        # Tolerance policy (docs/rewards.md): decimals are the exact rationals they write
        ("1.4142136", "\\sqrt{2}", "wrong"),  # math-verify alone: correct (rounds to 6 places)
        ("0.7071", "\\frac{\\sqrt{2}}{2}", "wrong"),
        ("3.1416", "\\pi", "wrong"),
        ("0.333333", "\\frac{1}{3}", "wrong"),
        ("33\\%", "33\\frac{1}{3}\\%", "wrong"),  # math-verify alone: correct (reads the gold as 33%)
        ("x = 0.5", "\\frac{1}{2}", "correct"),  # an exact decimal is exact
        ("(0.5, 2)", "\\left(\\frac{1}{2}, 2\\right)", "correct"),
        ("1.5\\sqrt{2}", "\\frac{3\\sqrt{2}}{2}", "correct"),
        ("1.5\\sqrt{2}", "\\frac{3\\sqrt{2}}{2} + 10^{-7}", "wrong"),
        # Forms math-verify misreads, in the answer styles of the datasets
        ("0.\\overline{3}", "\\frac{1}{3}", "correct"),  # math-verify alone: 0
        ("x = 0.\\overline{6}", "\\frac{2}{3}", "correct"),
        ("\\text{12 cm}", "12", "correct"),  # math-verify alone: the symbol 12cm
        ("\\text{12 cm}", "13", "wrong"),
        ("\\text{12 cm}^2", "12", "correct"),
        # Not one quantity with a unit, or another unit than the gold's: never taken out of the text
        ("\\text{3 hours 20 minutes}", "3", "wrong"),
        ("\\text{12 cm by 5 cm}", "12", "wrong"),
        ("\\text{2 apples, 3 oranges}", "2", "wrong"),
        ("\\text{12 cm}", "12\\text{ m}", "wrong"),
        ("\\text{12 cm}", "\\text{12 m}", "wrong"),
        ("\\text{12 cm}", "12\\text{ cm}", "correct"),
        ("\\textbf{(B)}\\ 12", "12", "correct"),  # math-verify alone: the product B*12
        ("\\textbf{(B)}\\ \\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", "correct"),
        ("\\textbf{(B)}\\ 12", "\\text{(B)}", "correct"),
        ("\\textbf{(C)}\\ 12", "\\text{(B)}", "wrong"),
        ("6.02\\times10^{23}", "602000000000000000000000", "correct"),  # math-verify alone: wrong
        ("6.02\\times10^{23}", "6.02 \\cdot 10^{23}", "correct"),
        ("\\varnothing", "\\emptyset", "correct"),  # math-verify alone: the symbol varnothing
        ("\\{\\}", "\\varnothing", "correct"),
        ("\\emptyset", "\\{1\\}", "wrong"),
        ("\\emptyset", "0", "wrong"),
        ("35.0\\%", "35", "correct"),  # math-verify alone: wrong (0.35 against 35)
    ],
)
def test_normalised_forms_and_tolerance(pool: GradingPool, answer: str, gold: str, expected: str) -> None:
    assert outcomes([f"so \\boxed{{{answer}}}."], [gold]) == [expected]
    # The same verdict when math-verify decides (the worker applies the fast path's rules first)
    [result] = pool.map([(answer, gold)], timeout_s=10)
    assert result.status == "ok" and result.value is (expected == "correct")


def test_math_verify_alone_misreads_these_forms() -> None:
    # Why the rewrites and exact decimals exist: each of these is math-verify's own verdict.
    def alone(answer: str, gold: str) -> bool:
        return bool(verify(parse(f"${gold}$"), parse(f"${answer}$")))

    assert alone("1.4142136", "\\sqrt{2}")
    assert alone("33\\%", "33\\frac{1}{3}\\%")
    assert not alone("0.\\overline{3}", "\\frac{1}{3}")
    assert not alone("\\text{12 cm}", "12")
    assert not alone("\\textbf{(B)}\\ 12", "12")
    assert not alone("6.02\\times10^{23}", "602000000000000000000000")
    assert not alone("\\varnothing", "\\emptyset")
    assert not alone("35.0\\%", "35")


def test_last_number_fallback_is_opt_in(pool: GradingPool) -> None:
    completions = ["so it takes 1+2 = 3 bolts in total\nA: 3", "\\boxed{4}", "no number"]
    golds = ["3", "4", "5"]
    assert grade_completions(completions, golds, pool=pool).outcomes == ["no_answer", "correct", "no_answer"]
    grades = grade_completions(completions, golds, fallback="last_number", pool=pool)
    assert grades.outcomes == ["correct", "correct", "no_answer"]
    assert grades.answers[0] == "3"
    with pytest.raises(ConfigError, match="fallback"):
        grade_completions(["1"], ["1"], fallback="first", pool=pool)
    batch = RewardBatch(completions=completions[:1], problems=[Problem("p", "q", "3")])
    assert math_reward(batch).outcomes == ["no_answer"]  # training's default: no credit
    assert math_reward(batch, fallback="last_number").outcomes == ["correct"]
