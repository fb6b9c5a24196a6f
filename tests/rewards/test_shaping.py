import math

import pytest

from rlvr.errors import ConfigError
from rlvr.rewards.base import REWARDS, RewardBatch
from rlvr.rewards.shaping import (
    chain_of_thought,
    cos_fn,
    cosine,
    kimi_length,
    l1_exact,
    l1_max,
    language_consistency,
    overlong,
    overlong_penalty,
    repeated_fraction,
    repeated_positions,
    repetition,
    words_of,
)
from rlvr.tasks.base import Problem


def make_batch(n: int | None = None, *, completions=None, metas=None, **fields) -> RewardBatch:
    if completions is None:
        completions = ["x"] * n
    metas = metas or [{}] * len(completions)
    problems = [Problem(id=f"p{i}", question="q", answer="a", meta=m) for i, m in enumerate(metas)]
    return RewardBatch(completions=list(completions), problems=problems, **fields)


def test_all_shaping_rewards_are_registered():
    for name in (
        "overlong",
        "kimi_length",
        "l1_exact",
        "l1_max",
        "cosine",
        "repetition",
        "language_consistency",
    ):
        assert name in REWARDS


# --- DAPO overlong (arXiv 2503.14476 eq. 13) -------------------------------------------------


def test_overlong_matches_dapo_eq13_with_dapo_lengths():
    # L_max = 20480, L_cache = 4096, so L_max - L_cache = 16384.
    assert overlong_penalty(16384, 20480, 4096) == 0.0  # at the edge of the free zone
    assert overlong_penalty(18432, 20480, 4096) == pytest.approx((16384 - 18432) / 4096)  # = -0.5
    assert overlong_penalty(20480, 20480, 4096) == pytest.approx(-1.0)  # (16384 - 20480) / 4096
    assert overlong_penalty(20481, 20480, 4096) == -1.0  # beyond L_max
    assert overlong_penalty(16385, 20480, 4096) == pytest.approx(-1 / 4096)


def test_overlong_reward_reads_lengths_and_budget_from_the_batch():
    batch = make_batch(4, response_lengths=[10, 80, 90, 100], max_response_length=100)
    # Default buffer = 100 // 5 = 20, free up to 80: [0, 0, (80 - 90) / 20, (80 - 100) / 20].
    assert overlong(batch).values == pytest.approx([0.0, 0.0, -0.5, -1.0])
    # Explicit parameters override the batch budget: L_max = 50, L_cache = 10, free up to 40.
    assert overlong(batch, max_length=50, buffer_length=10).values == pytest.approx([0.0, -1.0, -1.0, -1.0])
    assert overlong(batch, buffer_length=40).values == pytest.approx([0.0, -0.5, -0.75, -1.0])


def test_overlong_errors_name_what_is_missing():
    with pytest.raises(ConfigError, match="response_lengths"):
        overlong(make_batch(1, max_response_length=10))
    with pytest.raises(ConfigError, match="max_length"):
        overlong(make_batch(1, response_lengths=[3]))
    with pytest.raises(ConfigError, match="buffer_length"):
        overlong(make_batch(1, response_lengths=[3], max_response_length=10), buffer_length=11)


# --- Kimi k1.5 length penalty (arXiv 2501.12599 sec. 2.3.3) ---------------------------------


def test_kimi_length_matches_the_paper_per_group():
    batch = make_batch(
        6,
        response_lengths=[100, 200, 300, 50, 50, 50],
        group_ids=[0, 0, 0, 1, 1, 1],
        correct=[True, False, False, True, False, True],
    )
    # Group 0: min 100, max 300; lambda = 0.5 - (len - 100) / 200 = [0.5, 0.0, -0.5].
    #   correct -> lambda, wrong -> min(0, lambda): [0.5, 0.0, -0.5].
    # Group 1: every length equal -> lambda = 0 for all.
    assert kimi_length(batch).values == pytest.approx([0.5, 0.0, -0.5, 0.0, 0.0, 0.0])


def test_kimi_length_wrong_short_answers_get_no_bonus():
    batch = make_batch(3, response_lengths=[10, 20, 40], group_ids=[7, 7, 7], correct=[False, True, True])
    # min 10, max 40: lambda = [0.5, 0.5 - 10/30, 0.5 - 1] = [0.5, 1/6, -0.5]; the short wrong one gets min(0, 0.5) = 0.
    assert kimi_length(batch).values == pytest.approx([0.0, 1 / 6, -0.5])


def test_kimi_length_is_invariant_to_the_order_of_completions():
    lengths, groups, correct = [5, 9, 1, 4, 7], [1, 2, 1, 2, 1], [True, False, True, True, False]
    base = kimi_length(make_batch(5, response_lengths=lengths, group_ids=groups, correct=correct)).values
    order = [4, 2, 0, 3, 1]
    permuted = make_batch(
        5,
        response_lengths=[lengths[i] for i in order],
        group_ids=[groups[i] for i in order],
        correct=[correct[i] for i in order],
    )
    assert kimi_length(permuted).values == pytest.approx([base[i] for i in order])


def test_kimi_length_needs_correctness_and_groups():
    with pytest.raises(ConfigError, match="correct.*verifier"):
        kimi_length(make_batch(1, response_lengths=[1], group_ids=[0]))
    with pytest.raises(ConfigError, match="group_ids"):
        kimi_length(make_batch(1, response_lengths=[1], correct=[True]))


# --- L1 / LCPO (arXiv 2503.04697) -----------------------------------------------------------


def test_l1_exact_matches_lcpo_exact():
    batch = make_batch(3, response_lengths=[1200, 1200, 1000], correct=[True, False, True])
    # 1 - 0.0003 * |1000 - 1200| = 0.94 ; 0 - 0.06 = -0.06 ; 1 - 0 = 1.
    assert l1_exact(batch, target_length=1000).values == pytest.approx([0.94, -0.06, 1.0])
    assert l1_exact(batch, target_length=1000, alpha=0.001).values == pytest.approx([0.8, -0.2, 1.0])


def test_l1_max_matches_lcpo_max():
    batch = make_batch(5, response_lengths=[1200, 500, 3000, 0, 500], correct=[True, True, True, True, False])
    # clip(0.0003 * (1000 - n) + 0.5, 0, 1) for correct ones, 0 for wrong:
    # n=1200: -0.06 + 0.5 = 0.44; n=500: 0.15 + 0.5 = 0.65; n=3000: -0.6 + 0.5 -> 0; n=0: 0.3 + 0.5 = 0.8.
    assert l1_max(batch, target_length=1000).values == pytest.approx([0.44, 0.65, 0.0, 0.8, 0.0])
    # A large alpha saturates at 1: 0.01 * 1000 + 0.5 -> 1.
    assert l1_max(batch, target_length=1000, alpha=0.01).values[3] == 1.0


def test_l1_target_length_comes_from_problem_meta_before_the_parameter():
    batch = make_batch(
        2, response_lengths=[500, 500], correct=[True, True], metas=[{"target_length": 600}, {}]
    )
    # First problem: n_gold = 600 (meta) -> 1 - 0.0003 * 100 = 0.97; second: param 1000 -> 1 - 0.15 = 0.85.
    assert l1_exact(batch, target_length=1000).values == pytest.approx([0.97, 0.85])
    with pytest.raises(ConfigError, match="p1.*target_length"):
        l1_exact(batch)
    with pytest.raises(ConfigError, match="alpha"):
        l1_max(batch, target_length=1000, alpha=-1.0)


# --- cosine (arXiv 2502.03373 sec. 4.2) -----------------------------------------------------


def test_cos_fn_endpoints_and_midpoint():
    assert cos_fn(0, 1000, 1.0, 2.0) == pytest.approx(2.0)  # eta_max at t = 0
    assert cos_fn(1000, 1000, 1.0, 2.0) == pytest.approx(1.0)  # eta_min at t = T
    assert cos_fn(500, 1000, 1.0, 2.0) == pytest.approx(1.5)  # cos(pi/2) = 0


def test_cosine_matches_the_paper_with_its_defaults():
    batch = make_batch(
        6,
        response_lengths=[0, 250, 500, 500, 999, 1000],
        correct=[True, True, True, False, False, True],
        max_response_length=1000,
    )
    expected = [
        2.0,  # correct, t = 0: r0c
        1 + 0.5 * (2 - 1) * (1 + math.cos(math.pi / 4)),  # = 1.853553...
        1.5,  # correct, t = T/2
        0 + 0.5 * (-10 - 0) * 1,  # wrong, t = T/2: -5
        0 + 0.5 * (-10 - 0) * (1 + math.cos(999 * math.pi / 1000)),  # wrong, nearly T: close to 0
        -10.0,  # reached T: r_exceed
    ]
    assert cosine(batch).values == pytest.approx(expected)
    assert expected[1] == pytest.approx(1.8535533905932737)


def test_cosine_truncated_completions_get_the_exceed_reward_and_params_override():
    batch = make_batch(
        2,
        response_lengths=[100, 100],
        correct=[True, True],
        truncated=[True, False],
        max_response_length=1000,
    )
    values = cosine(batch, r_exceed=-3.0, max_length=200, r0_correct=1.0, rL_correct=0.0).values
    # truncated -> -3; t = 100 of T = 200: 0 + 0.5 * (1 - 0) * (1 + cos(pi/2)) = 0.5.
    assert values == pytest.approx([-3.0, 0.5])


def test_cosine_needs_correctness():
    with pytest.raises(ConfigError, match="cosine.*correct"):
        cosine(make_batch(1, response_lengths=[1], max_response_length=10))


# --- repetition (arXiv 2502.03373) ----------------------------------------------------------


def test_repetition_fraction_and_per_word_forms():
    batch = make_batch(completions=["a b a b a b", "A b A b A B", "a b c d", "a"])
    # "a b a b a b", n = 2: 5 bigrams, 2 distinct -> 1 - 2/5 = 0.6; covered words {2, 3, 4, 5} -> 4.
    # The second text is the first one in other case (words are lower-cased). "a b c d": all distinct.
    # "a": no bigram -> 0.
    fraction = repetition(batch, ngram_size=2).values
    assert fraction == pytest.approx([-0.6, -0.6, 0.0, 0.0])
    assert repetition(batch, ngram_size=2, max_penalty=0.5).values == pytest.approx([-0.3, -0.3, 0.0, 0.0])
    per_word = repetition(batch, ngram_size=2, form="per_word").values
    assert per_word == pytest.approx([-0.2, -0.2, 0.0, 0.0])  # -0.05 * 4


def test_repetition_helpers_on_a_longer_loop():
    words = "x y z x y z x".split()
    # trigrams: xyz yzx zxy xyz yzx -> 5 in all, 3 distinct: 1 - 3/5 = 0.4.
    assert repeated_fraction(words, 3) == pytest.approx(0.4)
    # repeated occurrences start at 3 and 4 -> words {3, 4, 5, 6}.
    assert repeated_positions(words, 3) == 4
    assert repeated_fraction(words, 40) == 0.0


def test_repetition_default_n_is_the_papers_40():
    loop = " ".join(f"w{i}" for i in range(50))
    batch = make_batch(completions=[loop, loop + " " + loop])
    values = repetition(batch).values
    # One pass: 11 distinct 40-grams -> 0. Two passes (100 words): 61 40-grams; the 50 windows starting
    # in the first pass are distinct, windows 50..60 repeat windows 0..10 -> 1 - 50/61.
    assert values == pytest.approx([0.0, -(1 - 50 / 61)])


def test_repetition_parameter_errors():
    batch = make_batch(1)
    with pytest.raises(ConfigError, match="form"):
        repetition(batch, form="tokens")
    with pytest.raises(ConfigError, match="ngram_size"):
        repetition(batch, ngram_size=0)
    with pytest.raises(ConfigError, match="max_penalty"):
        repetition(batch, max_penalty=-1.0)


# --- language consistency (arXiv 2501.12948 sec. 2.3.2) -------------------------------------


def test_words_of_counts_each_cjk_character_and_letter_runs():
    assert words_of("Let x = 2, 计算 it") == ["Let", "x", "计", "算", "it"]
    assert words_of("café naïve 123 ... __") == ["café", "naïve"]
    assert words_of("すうがく수학") == ["す", "う", "が", "く", "수", "학"]


def test_chain_of_thought_extraction():
    assert chain_of_thought("<think>abc</think><answer>1</answer>") == "abc"
    assert chain_of_thought("no tags at all") == "no tags at all"
    assert chain_of_thought("<think>cut off") == "cut off"
    assert chain_of_thought("abc</think><answer>x</answer>", think_opened=True) == "abc"


def test_language_consistency_english_and_chinese():
    batch = make_batch(
        completions=[
            "<think>Let me 计算 this</think><answer>5</answer>",  # en: Let, me, this of 5 words -> 3/5
            "<think>所以 x 等于 2</think><answer>2</answer>",  # en: x of 5 words -> 1/5; zh: 4/5
            "<think>Пусть x</think><answer>1</answer>",  # en: x of 2 -> 1/2 (Cyrillic is not Latin)
            "<think>12 + 3 = 15</think><answer>15</answer>",  # no words -> 0
            "All English, no think block.",  # whole completion: 5/5
        ]
    )
    assert language_consistency(batch).values == pytest.approx([0.6, 0.2, 0.5, 0.0, 1.0])
    assert language_consistency(batch, target="zh").values == pytest.approx([0.4, 0.8, 0.0, 0.0, 0.0])
    # The answer block is not part of the chain of thought.
    only_answer_differs = make_batch(completions=["<think>hello</think><answer>你好</answer>"])
    assert language_consistency(only_answer_differs).values == [1.0]
    with pytest.raises(ConfigError, match="target"):
        language_consistency(batch, target="fr")
