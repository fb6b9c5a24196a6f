"""Find the final answer in a completion.

A completion can mark its final answer in four ways; when several are present, the first in this
**priority order** decides, and its *last* occurrence in the text counts:

1. ``answer_tag``: the content of the last ``<answer>...</answer>`` block (DeepSeek-R1 template).
   A ``\\boxed{}`` inside the block is unwrapped; "the answer is ..." inside it is cut out.
2. ``boxed``: the last ``\\boxed{...}`` or ``\\fbox{...}`` (Qwen2.5-Math / MATH convention), with
   nested braces (``\\boxed{\\frac{1}{2}}``), escaped braces (``\\boxed{\\{1, 2\\}}``) and the
   brace-less form ``\\boxed 5``. Boxes separated by a comma, a semicolon, "and" or "or"
   (``\\boxed{2}, \\boxed{3}``) are one answer, joined with commas (``2, 3``); boxes separated
   by nothing but space or line breaks are separate answers, and the last one counts.
3. ``hash``: the text after the last ``#### `` (GSM8K reference solutions).
4. ``answer_is``: the text after the last "the answer is", "final answer is" or "final answer:"
   (case-insensitive), up to the end of its sentence; a leading ``$...$`` is taken alone.

If none is present there is **no answer**: rlvr never falls back to the last number of the text,
except when asked to (``fallback="last_number"``), which evaluation offers for re-scoring other
programs' outputs the way their harnesses did; training never uses it.
If the deciding slot is present but empty (``\\boxed{}``, ``<answer> </answer>``, an unclosed
``\\boxed{`` at a cut-off end) there is also no answer: an earlier slot is not consulted.

**Strict mode** reads only the template's slot (``<answer>`` for the R1 templates, ``\\boxed`` for
Qwen-math): a boxed answer outside the ``<answer>`` block of an R1 completion does not count.

An ``<answer>`` block that is opened but not closed is read only with ``allow_unclosed_tag=True``
(the caller knows generation stopped at the ``</answer>`` stop string and the engine dropped it);
otherwise it is a cut-off answer and reads as no answer.

>>> extract_answer("so x = 4. \\\\boxed{\\\\frac{1}{2}}").text
'\\\\frac{1}{2}'
>>> extract_answer("<answer>\\\\boxed{7}</answer>").slot
'answer_tag'
>>> extract_answer("...and the result ends with 42") is None
True
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

AnswerSlot = Literal["answer_tag", "boxed", "hash", "answer_is"]
Fallback = Literal["none", "last_number"]
FALLBACKS: tuple[Fallback, ...] = ("none", "last_number")
"""What :func:`extract_answer` reads when no slot is present: nothing, or the last number."""
PRIORITY: tuple[AnswerSlot, ...] = ("answer_tag", "boxed", "hash", "answer_is")
"""The order in which the slots are consulted when not in strict mode."""

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# \boxed or \fbox not followed by another letter (\boxedx is a different macro).
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# Between two boxes that form one answer: spaces, $ signs, and exactly one comma / ";" / "and" / "or".
_BOX_SEPARATOR = re.compile(r"[\s$]*(?:,|;|and|or|\\text\{\s*(?:and|or)\s*\})[\s$]*")
# A number in running text: an integer (commas only in groups of three) or a decimal, with its sign.
_TEXT_NUMBER = re.compile(r"(?<![\d.])[-\u2212]?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)")
_HASH = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"(?:final answer|the answer)\s*(?:is|:)\s*:?", re.IGNORECASE)
# End of the sentence after "the answer is": a period, ! or ? followed by a space or the end, or a newline.
_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")
_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_MATH_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))


@dataclass(frozen=True)
class Extraction:
    """A final answer found in a completion: its text and the slot it came from."""

    text: str
    slot: AnswerSlot | Literal["last_number"]


def _braced(text: str, open_index: int) -> str | None:
    """The content of the ``{...}`` group whose ``{`` is at ``open_index``; None if never closed.

    ``\\{`` and ``\\}`` are literal braces in LaTeX and do not open or close groups.
    """
    depth = 0
    i = open_index
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
        i += 1
    return None


def _box_argument(text: str, macro_end: int) -> tuple[str | None, int]:
    """The argument of a box macro ending at ``macro_end`` and the index after it.

    ``\\boxed{...}`` gives the braced content (None when the group is never closed);
    ``\\boxed 5`` gives the token up to the next space or ``$``.
    """
    i = macro_end
    while i < len(text) and text[i] in " \t":
        i += 1
    if i < len(text) and text[i] == "{":
        content = _braced(text, i)
        return content, (i + len(content) + 2 if content is not None else len(text))
    m = re.compile(r"[^\s$]*").match(text, i)
    token = m.group(0) if m else ""
    return token, i + len(token)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``; None if there is none.

    Consecutive boxes separated by a comma, a semicolon, "and" or "or" are joined with ", "; boxes
    separated only by space or line breaks are not (the last one is the answer). An empty box or
    one left unclosed (a cut-off completion) gives "".

    >>> last_boxed("x = \\\\boxed{\\\\frac{a}{b}}.")
    '\\\\frac{a}{b}'
    >>> last_boxed("\\\\boxed{2} and \\\\boxed{3}")
    '2, 3'
    >>> last_boxed("\\\\boxed{7}\\n\\\\boxed{8}")
    '8'
    >>> last_boxed("\\\\boxed 5$.")
    '5'
    """
    boxes = list(_BOX.finditer(text))
    if not boxes:
        return None
    parts: list[str] = []
    next_start: int | None = None
    for match in reversed(boxes):
        content, end = _box_argument(text, match.end())
        if content is None:
            if next_start is None:  # the last box is unclosed: a cut-off completion
                return ""
            break
        if next_start is not None and not _BOX_SEPARATOR.fullmatch(text, end, next_start):
            break
        parts.append(content.strip())
        next_start = match.start()
    parts.reverse()
    if len(parts) > 1 and any(not p for p in parts):
        return parts[-1]
    return ", ".join(parts)


def _answer_tag(text: str, allow_unclosed: bool) -> str | None:
    """The content of the last ``<answer>...</answer>`` block; None if there is no such block."""
    close = text.rfind(ANSWER_CLOSE)
    last_open = text.rfind(ANSWER_OPEN)
    if last_open > close:  # an <answer> opened after the last </answer> (or with none at all)
        return text[last_open + len(ANSWER_OPEN) :] if allow_unclosed else ""
    if close < 0:
        return None
    open_ = text.rfind(ANSWER_OPEN, 0, close)
    if open_ < 0:
        return None
    return text[open_ + len(ANSWER_OPEN) : close]


def _last_match(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    found = None
    for found in pattern.finditer(text):  # noqa: B007 (the last one is wanted)
        pass
    return found


def _hash(text: str) -> str | None:
    found = _last_match(_HASH, text)
    return found.group(1) if found else None


def _answer_is(text: str) -> str | None:
    found = _last_match(_ANSWER_IS, text)
    if found is None:
        return None
    rest = text[found.end() :].lstrip()
    for left, right in _MATH_WRAPPERS:  # "the answer is $x$ dollars." -> x
        if rest.startswith(left):
            end = rest.find(right, len(left))
            if end >= 0:
                return rest[: end + len(right)]
    end = _SENTENCE_END.search(rest)
    return rest[: end.start()] if end else rest


def last_number(text: str) -> str | None:
    """The last number written in ``text`` (thousands commas removed), or None if there is none.

    This is the fallback of the Qwen2.5-Math evaluation harness for a completion without a boxed or
    "the answer is" answer; rlvr uses it only when asked to (``fallback="last_number"``).

    >>> last_number("5 cars drove through in the first 15 minutes."), last_number("A: 1,250")
    ('15', '1250')
    >>> last_number("no digits") is None
    True
    """
    found = _last_match(_TEXT_NUMBER, text)
    return found.group(0).replace(",", "").replace("\u2212", "-") if found else None


def clean_answer(text: str) -> str:
    """Strip what surrounds an answer but is not part of it: spaces, one enclosing math delimiter
    pair (``$x$``, ``\\(x\\)``, ``\\[x\\]``), a trailing period or comma.

    >>> clean_answer(" $\\\\frac{1}{2}$. ")
    '\\\\frac{1}{2}'
    """
    text = text.strip()
    for _ in range(2):
        text = text.rstrip(" .,;\n\t")
        for left, right in _MATH_WRAPPERS:
            inner = text[len(left) : -len(right)] if len(text) >= len(left) + len(right) else None
            if inner is not None and text.startswith(left) and text.endswith(right):
                if left in ("$", "$$") and _UNESCAPED_DOLLAR.search(inner):
                    continue  # "$a$ and $b$" is not one wrapped expression
                text = inner.strip()
                break
    return text


def _from_slot(text: str, slot: AnswerSlot, allow_unclosed_tag: bool) -> str | None:
    if slot == "answer_tag":
        content = _answer_tag(text, allow_unclosed_tag)
        if content is None:
            return None
        boxed = last_boxed(content)
        if boxed is not None:
            return boxed
        inner = _answer_is(content)
        return inner if inner is not None else content
    if slot == "boxed":
        return last_boxed(text)
    if slot == "hash":
        return _hash(text)
    if slot == "answer_is":
        return _answer_is(text)
    raise ValueError(f"unknown answer slot '{slot}' (valid: {', '.join(PRIORITY)})")


def extract_answer(
    completion: str,
    *,
    strict: bool = False,
    slot: AnswerSlot = "boxed",
    allow_unclosed_tag: bool = False,
    fallback: Fallback = "none",
) -> Extraction | None:
    """The final answer of ``completion``, or None when it has none (see the module docstring).

    ``strict=True`` reads only ``slot``; otherwise the slots are consulted in :data:`PRIORITY`
    order and the first one present decides. The returned text is cleaned by :func:`clean_answer`
    and never empty. ``fallback="last_number"`` takes the last number of the completion when no
    slot is present at all (slot ``"last_number"``); an empty slot is still no answer.

    >>> extract_answer("A: 3", fallback="last_number")
    Extraction(text='3', slot='last_number')
    """
    if slot not in PRIORITY:
        raise ValueError(f"unknown answer slot '{slot}' (valid: {', '.join(PRIORITY)})")
    if fallback not in FALLBACKS:
        raise ValueError(f"unknown extraction fallback '{fallback}' (valid: {', '.join(FALLBACKS)})")
    for candidate in (slot,) if strict else PRIORITY:
        raw = _from_slot(completion, candidate, allow_unclosed_tag)
        if raw is None:
            continue
        text = clean_answer(raw)
        return Extraction(text, candidate) if text else None
    if fallback == "last_number":
        number = last_number(completion)
        if number is not None:
            return Extraction(number, "last_number")
    return None
