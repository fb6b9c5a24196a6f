"""Final-answer extraction: slots, their priority order, strict mode, and the no-answer cases."""

from __future__ import annotations

import pytest

from rlvr.rewards.extraction import PRIORITY, clean_answer, extract_answer, last_boxed


def text_of(completion: str, **kwargs: object) -> str | None:
    found = extract_answer(completion, **kwargs)  # type: ignore[arg-type]
    return None if found is None else found.text


# -- \boxed ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("so the answer is \\boxed{5}.", "5"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{\\frac{\\sqrt{3}}{2^{x+1}}}", "\\frac{\\sqrt{3}}{2^{x+1}}"),  # deeper nesting
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are not groups
        ("\\fbox{7}", "7"),
        ("\\boxed 5$.", "5"),  # brace-less form
        ("\\boxed {12}", "12"),  # space before the brace
        ("first \\boxed{1}, then on reflection \\boxed{2}", "2"),  # the last box counts
        ("$\\boxed{2}$ and $\\boxed{3}$", "2, 3"),  # consecutive boxes form one answer
        ("\\boxed{2}, \\boxed{3}, \\boxed{4}", "2, 3, 4"),
        ("x = \\boxed{2} and y = \\boxed{3}", "3"),  # words between boxes: not one answer
        ("\\boxed{\\boxed{9}}", "9"),
        ("\\boxed{ $-3$ }", "-3"),
    ],
)
def test_boxed_forms(completion: str, expected: str) -> None:
    assert text_of(completion) == expected


def test_boxed_is_not_a_prefix_of_another_macro() -> None:
    assert last_boxed("\\boxedanswer{3}") is None


@pytest.mark.parametrize(
    "completion",
    [
        "the result is \\boxed{}",  # empty box
        "\\boxed{  }",
        "We get \\boxed{\\frac{1}{",  # cut off inside the box
        "earlier \\boxed{4} but finally \\boxed{",  # the last box is unclosed: no fallback to 4
        "\\boxed",  # nothing after the macro
    ],
)
def test_empty_or_cut_box_is_no_answer(completion: str) -> None:
    assert extract_answer(completion) is None


def test_no_slot_is_no_answer_not_the_last_number() -> None:
    # A truncated or unformatted completion ending on a number must not be graded by that number.
    assert extract_answer("Adding them gives 12, and multiplying by 3 gives 36") is None


# -- <answer>, ####, "the answer is" --------------------------------------------------------------


def test_answer_tag() -> None:
    assert text_of("<think>2+2=4</think> <answer> 4 </answer>") == "4"
    assert text_of("<answer>1</answer> wait <answer>$\\frac{3}{4}$</answer>") == "\\frac{3}{4}"
    assert text_of("<answer>The answer is $12$.</answer>") == "12"
    assert text_of("<answer>\\boxed{7}</answer>") == "7"


def test_unclosed_answer_tag_needs_permission() -> None:
    # Generation stopped at "</answer>" and the engine dropped the stop string: the caller says so.
    assert extract_answer("<think>...</think><answer> 42") is None
    assert text_of("<think>...</think><answer> 42", allow_unclosed_tag=True) == "42"
    # An unclosed block after a closed one is the later answer, so no fallback to the closed one.
    assert extract_answer("<answer>1</answer> no, <answer>2") is None


def test_empty_answer_tag_is_no_answer_even_with_a_box_elsewhere() -> None:
    assert extract_answer("\\boxed{3} <answer> </answer>") is None


def test_gsm8k_hash() -> None:
    assert text_of("She has 9 eggs.\n#### 18") == "18"
    assert text_of("#### 1,000\n") == "1,000"
    assert text_of("#### 3\nmore text\n#### 4") == "4"


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("So the answer is 42.", "42"),
        ("Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("The answer is: $x+1$ dollars", "x+1"),
        ("the answer is 3.5\nbut check", "3.5"),
        ("final answer: 7", "7"),
        ("the answer is \\(\\sqrt{2}\\)", "\\sqrt{2}"),
    ],
)
def test_answer_is(completion: str, expected: str) -> None:
    assert text_of(completion) == expected


# -- priority order and strict mode ---------------------------------------------------------------


def test_priority_order() -> None:
    assert PRIORITY == ("answer_tag", "boxed", "hash", "answer_is")
    everything = "the answer is 1. \\boxed{2}\n#### 3\n<answer>4</answer>"
    assert extract_answer(everything) == extract_answer("<answer>4</answer>")
    found = extract_answer(everything)
    assert found is not None and found.slot == "answer_tag"
    without_tag = "the answer is 1. \\boxed{2}\n#### 3"
    found = extract_answer(without_tag)
    assert found is not None and (found.text, found.slot) == ("2", "boxed")
    found = extract_answer("the answer is 1.\n#### 3")
    assert found is not None and (found.text, found.slot) == ("3", "hash")


def test_strict_reads_only_the_template_slot() -> None:
    r1 = "<think>it is \\boxed{5}</think> I think the answer is 5"
    assert text_of(r1) == "5"  # lenient: the box counts
    assert extract_answer(r1, strict=True, slot="answer_tag") is None  # R1 template: only <answer>
    assert text_of("<think>..</think><answer>5</answer>", strict=True, slot="answer_tag") == "5"
    qwen = "so the answer is 5."
    assert text_of(qwen) == "5"
    assert extract_answer(qwen, strict=True, slot="boxed") is None  # Qwen-math template: only \boxed
    assert text_of("<answer>9</answer> \\boxed{5}", strict=True, slot="boxed") == "5"


def test_unknown_slot_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown answer slot 'box'.*answer_tag, boxed"):
        extract_answer("\\boxed{1}", strict=True, slot="box")  # type: ignore[arg-type]


def test_clean_answer() -> None:
    assert clean_answer("  $5$. ") == "5"
    assert clean_answer("\\[x^2\\]") == "x^2"
    assert clean_answer("$a$ and $b$") == "$a$ and $b$"  # not one wrapped expression
    assert clean_answer("$$\\pi$$") == "\\pi"


def test_extraction_is_linear_on_adversarial_text() -> None:
    import time

    start = time.perf_counter()
    assert extract_answer("<answer>" * 20_000 + "\\boxed{" * 20_000) is None
    assert extract_answer("\\boxed{" * 20_000 + "}" * 19_999) is None  # the last box is empty
    assert extract_answer("\\boxed{}, " * 20_000) is None
    assert text_of("the answer is " * 20_000 + "1.") == "1"
    assert time.perf_counter() - start < 2.0


# -- several boxes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("\\boxed{7}\n\\boxed{8}", "8"),  # a line break does not join boxes: the last one counts
        ("\\boxed{7} \\boxed{8}", "8"),
        ("$\\boxed{7}$\n\n$\\boxed{8}$", "8"),
        ("\\boxed{7} \\quad \\boxed{8}", "8"),  # spacing is not a separator
        ("\\boxed{2}, \\boxed{3}", "2, 3"),  # the documented separators still join
        ("\\boxed{2}; \\boxed{3}", "2, 3"),
        ("\\boxed{2} and \\boxed{3}", "2, 3"),
        ("\\boxed{2} \\text{ or } \\boxed{3}", "2, 3"),
    ],
)
def test_only_a_comma_semicolon_and_or_joins_boxes(completion: str, expected: str) -> None:
    assert last_boxed(completion) == expected


# -- the last-number fallback (evaluation of other programs' outputs only) -------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        # GPT-3's GSM8K solutions (grade-school-math example_model_solutions.jsonl) end "A: n"
        ("so it takes 1+2 = <<1+2=3>>3 bolts in total\nA: 3", "3"),
        ("She makes 9 * 2 = $<<9*2=18>>18 every day.\nA: 1,250", "1250"),
        # ToRA's outputs without a box end in a sentence; its last number may not be the answer
        ("```output\n60.0\n```\n60% of the students enrolled in hip-hop dance.", "60"),
        ("5 cars drove through the traffic jam in the first 15 minutes.", "15"),
        ("the temperature fell to \u22124.5 degrees", "-4.5"),
        ("x = .75", ".75"),
    ],
)
def test_last_number_fallback(completion: str, expected: str) -> None:
    found = extract_answer(completion, fallback="last_number")
    assert found is not None and (found.text, found.slot) == (expected, "last_number")
    assert extract_answer(completion) is None  # the default: no answer, never the last number


def test_last_number_fallback_only_without_any_slot() -> None:
    assert text_of("1 + 1 = 2, so \\boxed{3} ... 4", fallback="last_number") == "3"
    assert text_of("it is 5. \\boxed{}", fallback="last_number") is None  # an empty slot stays empty
    assert text_of("no number here", fallback="last_number") is None
    with pytest.raises(ValueError, match="unknown extraction fallback"):
        extract_answer("1", fallback="first_number")  # type: ignore[arg-type]
