"""The ``math`` verifier: 1.0 when a completion's final answer equals the gold answer, else 0.0.

This is the rule-based accuracy reward of DeepSeek-R1 (arXiv 2501.12948, sec. 2.2.2, "Accuracy
rewards": the model gives its final answer in a specified format, e.g. within a box, which a rule
checks), ``r_i = 1[answer(o_i) ≡ gold]``. For example, gold ``\\frac{1}{2}``: a completion ending in
``\\boxed{0.5}`` scores 1.0, one ending in ``\\boxed{2}`` scores 0.0, one with no box scores 0.0
and is counted as having no answer.

Each completion ends in one of four **outcomes**, logged separately:

* ``no_answer``: :func:`rlvr.rewards.extraction.extract_answer` finds no final answer (no slot, an
  empty slot, a cut-off box), or the completion was truncated at the length limit (unless
  ``grade_truncated=True``). Scored 0.0: it is never graded by whatever number it ends on.
* ``correct`` / ``wrong``: the answer is compared with the gold, first by
  :func:`rlvr.rewards.fast_path.quick_verdict` (plain numbers, identical text, clock times; no
  sympy), then by math-verify (``parse`` + ``verify``) in a :class:`GradingPool` worker with a hard
  time limit. An answer whose check fails is wrong and counted in ``reward/grader_errors``.
* ``timeout``: the check ran past ``timeout_s`` (its worker is killed), and again past
  ``retry_timeout_s`` (default twice ``timeout_s``) when run once more after the rest of the batch.
  Scored 0.0 like a wrong answer and not correct; counted in ``reward/timeouts``. Checks that
  needed the second run, whatever its verdict, are counted in ``reward/retried``.

math-verify traps, and how each is handled here:

* A gold parsed without ``$...$`` is read by its plain-text rules (``2\\sqrt{3}`` becomes 2): golds
  and boxed answers are wrapped in ``$...$`` before parsing (:func:`as_latex`).
* Its timeouts use ``signal.alarm``, which takes whole seconds (a float timeout makes every check
  silently return False), works only on the main thread, and replaces the caller's own alarm; and
  no signal interrupts long C-level work. Here math-verify's timeouts are disabled
  (``parsing_timeout=None``, ``timeout_seconds=None``) and the time limit is enforced from outside
  by killing the worker process, so ``timeout_s`` may be any positive float and callers may use any
  thread and their own alarms.

Gold answers are checked when a dataset loads (:func:`check_gold`): one that cannot be parsed is a
:class:`~rlvr.errors.DataError`, never a reward of 1.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from rlvr.errors import ConfigError, DataError
from rlvr.rewards.base import REWARDS, Outcome, RewardBatch, RewardResult
from rlvr.rewards.extraction import FALLBACKS, PRIORITY, clean_answer, extract_answer
from rlvr.rewards.fast_path import plain_number, quick_verdict
from rlvr.rewards.grading_pool import GradingPool

MAX_ANSWER_CHARS = 2000
"""A longer "final answer" is not an answer a problem asks for: it is scored wrong without a check."""
ANSWER_SLOTS = (*PRIORITY, "none")
"""Values of ``answer_slot``: a slot of :mod:`rlvr.rewards.extraction`, or "none" (no template slot)."""
_log = logging.getLogger(__name__)
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_THOUSANDS = re.compile(r"(?<=\d)(?:,\\!|\{,\})(?=\d{3}(?!\d))")


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns once that its timeout is disabled; here that is deliberate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_DropTimeoutDisabledWarning())


def gold_text(answer: Any) -> str:
    """The gold answer as a string: strings are cleaned (``$5$`` -> ``5``), numbers written out
    (``27.0`` -> ``27``); anything else is a DataError."""
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise DataError(f"a math gold answer must be a string or a number, got {type(answer).__name__}")
    if isinstance(answer, float):
        answer = str(int(answer)) if answer.is_integer() else repr(answer)
    text = clean_answer(str(answer))
    if not text:
        raise DataError("the gold answer is empty")
    return text


def as_latex(text: str) -> str:
    """``text`` as math-verify must see it: wrapped in ``$...$`` unless it carries its own delimiters,
    with explicit LaTeX thousands separators (``5,\\!525``, ``10{,}000``) removed, since math-verify
    cannot parse them inside a larger expression (``\\frac{12}{5,\\!525}``).

    >>> as_latex("\\\\frac{12}{5,\\\\!525}"), as_latex("$x$ or $y$")
    ('$\\\\frac{12}{5525}$', '$x$ or $y$')
    """
    text = _THOUSANDS.sub("", text)
    if _UNESCAPED_DOLLAR.search(text) or "\\(" in text or "\\[" in text:
        return text
    return f"${text}$"


def check_gold(answer: Any) -> None:
    """Raise DataError when ``answer`` cannot serve as a gold answer for the ``math`` reward.

    A plain number always can; anything else must parse (math-verify, wrapped in ``$...$``) into
    a mathematical object. Runs in the calling process without signals (parsing builds
    expressions without evaluating them, so it does not hang on huge powers).

    >>> check_gold("2\\\\sqrt{3}")
    >>> check_gold("\\\\frac{")
    Traceback (most recent call last):
    ...
    rlvr.errors.DataError: gold answer '\\\\frac{' cannot be parsed as math (math-verify finds no expression in it)
    """
    text = gold_text(answer)
    if plain_number(text) is None:
        parsed_gold(text)


def parse_math(text: str) -> list[Any]:
    """math-verify's parse of ``text`` in ``$...$`` (its own timeout disabled).

    math-verify drops part of some spaced sums (``a + b + c`` parses as the string ``'a +'``,
    while ``a+b+c`` parses): when the first parse yields no math object and the text has no
    ``\\text``, it is parsed again with the whitespace removed.
    """
    from math_verify import parse

    parsed = parse(as_latex(text), parsing_timeout=None)
    if not any(not isinstance(x, str) for x in parsed) and "\\text" not in text:
        compact = re.sub(r"\s+", "", text)
        if compact != text:
            retry = parse(as_latex(compact), parsing_timeout=None)
            if any(not isinstance(x, str) for x in retry):
                return retry
    return parsed


@lru_cache(maxsize=4096)
def parsed_gold(gold: str) -> tuple[Any, ...]:
    """math-verify's parse of ``gold`` (:func:`parse_math`); DataError when it yields no math object."""
    parsed = parse_math(gold)
    if not any(not isinstance(x, str) for x in parsed):
        raise DataError(
            f"gold answer {gold!r:.80} cannot be parsed as math (math-verify finds no expression in it)"
        )
    return tuple(parsed)


_pool: GradingPool | None = None
_pool_lock = threading.Lock()


def math_grading_pool() -> GradingPool:
    """The process-wide pool that the ``math`` reward uses (one worker per available core by default)."""
    global _pool
    with _pool_lock:
        if _pool is None or not _pool.usable():
            _pool = new_math_pool()
        return _pool


def new_math_pool(num_workers: int | None = None, **kwargs: Any) -> GradingPool:
    """A :class:`GradingPool` running :func:`rlvr.rewards._math_worker.verify_answer`; ``kwargs`` go to
    GradingPool."""
    return GradingPool("rlvr.rewards._math_worker:verify_answer", num_workers=num_workers, **kwargs)


def set_math_grading_pool(pool: GradingPool | None) -> None:
    """Make ``pool`` the one the ``math`` reward uses (None: a default pool is made when needed)."""
    global _pool
    with _pool_lock:
        _pool = pool


@dataclass
class Grades:
    """Per-completion verdicts of :func:`grade_completions` and their counts."""

    outcomes: list[Outcome]
    answers: list[str | None]
    """The extracted final answers (None: no answer)."""
    timeouts: int = 0
    retried: int = 0
    """Checks that ran past ``timeout_s`` and were run a second time with the retry limit."""
    grader_errors: int = 0
    fast_path: int = 0
    """Answers decided without math-verify."""
    errors: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        n = max(len(self.outcomes), 1)
        answered = sum(o != "no_answer" for o in self.outcomes)
        return {
            "reward/correct": sum(o == "correct" for o in self.outcomes) / n,
            "reward/wrong": sum(o == "wrong" for o in self.outcomes) / n,
            "reward/no_answer": sum(o == "no_answer" for o in self.outcomes) / n,
            "reward/timeouts": float(self.timeouts),
            "reward/retried": float(self.retried),
            "reward/grader_errors": float(self.grader_errors),
            "reward/fast_path": self.fast_path / max(answered, 1),
        }


def grade_completions(
    completions: list[str],
    golds: list[Any],
    *,
    strict: bool = False,
    answer_slot: str = "boxed",
    timeout_s: float = 5.0,
    retry_timeout_s: float | None = None,
    truncated: list[bool] | None = None,
    grade_truncated: bool = False,
    fallback: str = "none",
    pool: GradingPool | None = None,
) -> Grades:
    """Extract each completion's final answer and grade it against its gold (see the module docstring).

    ``fallback="last_number"`` reads the last number of a completion that has no answer slot at
    all (:func:`rlvr.rewards.extraction.extract_answer`), for re-scoring other programs' outputs as
    their harnesses did; the default "none" gives such a completion no answer.
    """
    if fallback not in FALLBACKS:
        raise ConfigError(f"fallback must be one of {', '.join(FALLBACKS)}; got {fallback!r}")
    if answer_slot not in ANSWER_SLOTS:
        raise ConfigError(f"answer_slot must be one of {', '.join(ANSWER_SLOTS)}; got {answer_slot!r}")
    if strict and answer_slot == "none":
        raise ConfigError("strict=True needs the template's answer slot; answer_slot is 'none'")
    if not (isinstance(timeout_s, (int, float)) and 0 < timeout_s < float("inf")):
        raise ConfigError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    retry_timeout_s = 2.0 * timeout_s if retry_timeout_s is None else retry_timeout_s
    if not (isinstance(retry_timeout_s, (int, float)) and timeout_s <= retry_timeout_s < float("inf")):
        raise ConfigError(
            f"retry_timeout_s must be seconds >= timeout_s ({timeout_s}), got {retry_timeout_s!r}"
        )
    if len(golds) != len(completions):
        raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
    outcomes: list[Outcome] = ["no_answer"] * len(completions)
    answers: list[str | None] = [None] * len(completions)
    grades = Grades(outcomes, answers)
    pending: list[int] = []
    gold_texts = [gold_text(g) for g in golds]
    slot = answer_slot if answer_slot != "none" else "boxed"
    for i, completion in enumerate(completions):
        cut = truncated is not None and truncated[i]
        if cut and not grade_truncated:
            continue
        found = extract_answer(
            completion,
            strict=strict,
            slot=slot,
            allow_unclosed_tag=truncated is not None and not cut,
            fallback=fallback,  # type: ignore[arg-type]
        )
        if found is None:
            continue
        answers[i] = found.text
        if len(found.text) > MAX_ANSWER_CHARS:
            outcomes[i] = "wrong"
            continue
        verdict = quick_verdict(found.text, gold_texts[i])
        if verdict is None:
            pending.append(i)
        else:
            grades.fast_path += 1
            outcomes[i] = "correct" if verdict else "wrong"
    if pending:
        pool = pool or math_grading_pool()
        items = [(answers[i], gold_texts[i]) for i in pending]
        results = pool.map(items, timeout_s=timeout_s, retry_timeout_s=retry_timeout_s)
        for i, result in zip(pending, results, strict=True):
            grades.retried += result.attempts > 1
            if result.status == "ok":
                outcomes[i] = "correct" if result.value else "wrong"
            elif result.status == "timeout":
                outcomes[i] = "timeout"
                grades.timeouts += 1
            else:
                outcomes[i] = "wrong"
                grades.grader_errors += 1
                grades.errors.append(f"completion {i}: {result.error}")
    if grades.errors:
        _log.warning(
            "%d math answers could not be checked: %s", len(grades.errors), "; ".join(grades.errors[:3])
        )
    return grades


@REWARDS.register("math")
def math_reward(
    batch: RewardBatch,
    *,
    strict: bool = False,
    answer_slot: str = "boxed",
    timeout_s: float = 5.0,
    retry_timeout_s: float | None = None,
    grade_truncated: bool = False,
    fallback: str = "none",
) -> RewardResult:
    """1.0 for a correct final answer, 0.0 for a wrong one or none (DeepSeek-R1 accuracy reward).

    ``problems[i].answer`` is the gold. ``strict`` reads only ``answer_slot`` (the template's slot:
    "answer_tag", "boxed"; "none" when the template has none). ``timeout_s`` is the wall-clock limit
    of one answer's check; one that overruns it is checked once more with ``retry_timeout_s``
    (default ``2 * timeout_s``) and is outcome "timeout" (scored 0.0) if it overruns again. A
    completion cut at the length limit (``batch.truncated``) has no answer unless
    ``grade_truncated``. ``fallback="last_number"`` (for evaluating other programs' outputs; training
    keeps the default "none") grades the last number of a completion with no answer slot. Metrics:
    ``reward/correct``, ``reward/wrong``, ``reward/no_answer`` (fractions of the batch),
    ``reward/timeouts``, ``reward/retried``, ``reward/grader_errors`` (counts), ``reward/fast_path``
    (fraction of answers decided without math-verify).
    """
    grades = grade_completions(
        batch.completions,
        [p.answer for p in batch.problems],
        strict=strict,
        answer_slot=answer_slot,
        timeout_s=timeout_s,
        retry_timeout_s=retry_timeout_s,
        truncated=batch.truncated,
        grade_truncated=grade_truncated,
        fallback=fallback,
    )
    correct = [o == "correct" for o in grades.outcomes]
    return RewardResult(
        values=[1.0 if c else 0.0 for c in correct],
        metrics=grades.metrics(),
        correct=correct,
        outcomes=grades.outcomes,
        answers=grades.answers,
    )
