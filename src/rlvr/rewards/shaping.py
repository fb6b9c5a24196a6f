"""Shaping rewards: length penalties, length targets, repetition and language consistency.

Each is a registered reward ``fn(batch, **params) -> RewardResult`` added (with its weight) to the
verifier's correctness reward by :class:`~rlvr.rewards.composite.CompositeReward`. Lengths are in
tokens (``batch.response_lengths``). Rewards that depend on correctness (``kimi_length``,
``l1_exact``, ``l1_max``, ``cosine``) read ``batch.correct``, which the composition fills from the
verifier listed before them.

``l1_exact``, ``l1_max`` and ``cosine`` already contain the correctness term of their papers: use
them *instead of* the verifier's reward (give the verifier weight 0), not on top of it.
"""

from __future__ import annotations

import math
import re
import unicodedata

from rlvr.errors import ConfigError
from rlvr.rewards.base import REWARDS, RewardBatch, RewardResult
from rlvr.rewards.format import THINK_CLOSE, THINK_OPEN

# ---------------------------------------------------------------------------------------------
# What the shaping rewards read from the batch


def _response_lengths(batch: RewardBatch, reward: str) -> list[int]:
    if batch.response_lengths is None:
        raise ConfigError(
            f"reward '{reward}' needs RewardBatch.response_lengths (completion lengths in tokens); "
            "the rollout must fill it"
        )
    return batch.response_lengths


def _correct(batch: RewardBatch, reward: str) -> list[bool]:
    if batch.correct is None:
        raise ConfigError(
            f"reward '{reward}' needs RewardBatch.correct, which a verifier (a reward that returns "
            f"`correct`, such as 'math') sets: list the verifier before '{reward}' in the rewards"
        )
    return batch.correct


def _budget(batch: RewardBatch, max_length: int | None, reward: str) -> int:
    budget = batch.max_response_length if max_length is None else max_length
    if budget is None:
        raise ConfigError(
            f"reward '{reward}' needs a maximum length: set its parameter max_length or "
            "RewardBatch.max_response_length"
        )
    if budget <= 0:
        raise ConfigError(f"reward '{reward}': max_length must be positive, got {budget}")
    return budget


def _check_nonnegative(reward: str, **params: float) -> None:
    for name, value in params.items():
        if not value >= 0:  # also refuses NaN
            raise ConfigError(f"reward '{reward}': {name} must be >= 0, got {value}")


# ---------------------------------------------------------------------------------------------
# DAPO soft overlong punishment


def overlong_penalty(length: int, max_length: int, buffer_length: int) -> float:
    """DAPO's soft overlong punishment (Yu et al., arXiv 2503.14476, eq. 13).

    With L_max = ``max_length`` and L_cache = ``buffer_length``::

        R(y) = 0                                   if |y| <= L_max - L_cache
             = ((L_max - L_cache) - |y|) / L_cache  if L_max - L_cache < |y| <= L_max
             = -1                                  if L_max < |y|

    DAPO: L_max = 20480 (the generation budget), L_cache = 4096, so answers up to 16384 tokens are
    free and the penalty grows linearly to -1 at 20480. Worked example: L_max = 20480,
    L_cache = 4096, |y| = 18432 gives (16384 - 18432) / 4096 = -0.5.
    """
    expected = max_length - buffer_length
    if length <= expected:
        return 0.0
    if length <= max_length:
        return (expected - length) / buffer_length
    return -1.0


@REWARDS.register("overlong")
def overlong(
    batch: RewardBatch, *, max_length: int | None = None, buffer_length: int | None = None
) -> RewardResult:
    """DAPO soft overlong punishment, eq. 13 (see :func:`overlong_penalty`), added to the reward.

    ``max_length`` (L_max) defaults to ``batch.max_response_length``; ``buffer_length`` (L_cache)
    defaults to one fifth of it (DAPO: 4096 of 20480).
    """
    lengths = _response_lengths(batch, "overlong")
    budget = _budget(batch, max_length, "overlong")
    buffer = budget // 5 if buffer_length is None else buffer_length
    if not 0 < buffer <= budget:
        raise ConfigError(
            f"reward 'overlong': buffer_length must be in (0, max_length={budget}], got {buffer}"
        )
    values = [overlong_penalty(n, budget, buffer) for n in lengths]
    return RewardResult(values=values)


# ---------------------------------------------------------------------------------------------
# Kimi k1.5 length penalty


@REWARDS.register("kimi_length")
def kimi_length(batch: RewardBatch) -> RewardResult:
    """Kimi k1.5's length reward (Kimi Team, arXiv 2501.12599, sec. 2.3.3).

    Within the group of responses sampled for one prompt, with min_len / max_len their shortest
    and longest lengths::

        lambda = 0.5 - (len(i) - min_len) / (max_len - min_len)
        len_reward(i) = lambda              if response i is correct
                      = min(0, lambda)      otherwise

    Short responses are rewarded and long ones penalised; wrong answers are never rewarded for
    being short. When every response of the group has the same length the paper's formula is
    0 / 0; lambda is taken as 0 then (no length signal). Lengths are in tokens; a group is the
    completions sharing a ``batch.group_ids`` value and must not be split across ranks.

    Worked example: one group, lengths [100, 200, 300], correct [True, False, False]:
    lambda = [0.5, 0.0, -0.5], rewards = [0.5, min(0, 0.0), min(0, -0.5)] = [0.5, 0.0, -0.5].
    """
    lengths = _response_lengths(batch, "kimi_length")
    correct = _correct(batch, "kimi_length")
    if batch.group_ids is None:
        raise ConfigError(
            "reward 'kimi_length' needs RewardBatch.group_ids (which prompt each completion answers)"
        )
    shortest: dict[int, int] = {}
    longest: dict[int, int] = {}
    for g, n in zip(batch.group_ids, lengths, strict=True):
        shortest[g] = min(n, shortest.get(g, n))
        longest[g] = max(n, longest.get(g, n))
    values = []
    for g, n, ok in zip(batch.group_ids, lengths, correct, strict=True):
        span = longest[g] - shortest[g]
        lam = 0.5 - (n - shortest[g]) / span if span > 0 else 0.0
        values.append(lam if ok else min(0.0, lam))
    return RewardResult(values=values)


# ---------------------------------------------------------------------------------------------
# L1 / LCPO length targets


def _target_lengths(batch: RewardBatch, target_length: int | None, reward: str) -> list[int]:
    targets = []
    for problem in batch.problems:
        target = problem.meta.get("target_length", target_length)
        if target is None:
            raise ConfigError(
                f"reward '{reward}' needs a target length: problem '{problem.id}' has no "
                "meta['target_length'] and the parameter target_length is not set"
            )
        targets.append(target)
    return targets


@REWARDS.register("l1_exact")
def l1_exact(batch: RewardBatch, *, alpha: float = 0.0003, target_length: int | None = None) -> RewardResult:
    """LCPO-Exact (Aggarwal & Welleck, "L1", arXiv 2503.04697, sec. 3, eq. 1)::

        r(y, y_gold, n_gold) = I(y = y_gold) - alpha * |n_gold - n_y|

    n_y is the completion length in tokens, n_gold the length the prompt asked for:
    ``problem.meta["target_length"]`` when present, else the parameter ``target_length``. alpha =
    0.0003 as in the paper. The correctness term is included: use it in place of the verifier's
    reward. Worked example: correct, n_gold = 1000, n_y = 1200: 1 - 0.0003 * 200 = 0.94; wrong:
    0 - 0.06 = -0.06.
    """
    _check_nonnegative("l1_exact", alpha=alpha)
    lengths = _response_lengths(batch, "l1_exact")
    correct = _correct(batch, "l1_exact")
    targets = _target_lengths(batch, target_length, "l1_exact")
    values = [float(ok) - alpha * abs(t - n) for ok, t, n in zip(correct, targets, lengths, strict=True)]
    return RewardResult(values=values)


@REWARDS.register("l1_max")
def l1_max(
    batch: RewardBatch, *, alpha: float = 0.0003, delta: float = 0.5, target_length: int | None = None
) -> RewardResult:
    """LCPO-Max (Aggarwal & Welleck, "L1", arXiv 2503.04697, sec. 3, eq. 2)::

        r(y, y_gold, n_gold) = I(y = y_gold) * clip(alpha * (n_gold - n_y) + delta, 0, 1)

    A budget rather than an exact target: wrong answers get 0; correct ones get more the further
    they stay under n_gold, and still something (thanks to delta = 0.5) for small overruns.
    alpha = 0.0003, delta = 0.5 as in the paper; n_gold as in :func:`l1_exact`. Worked example:
    correct, n_gold = 1000, n_y = 1200: clip(-0.06 + 0.5, 0, 1) = 0.44; n_y = 500: 0.65;
    n_y = 3000: clip(-0.6 + 0.5) = 0.
    """
    _check_nonnegative("l1_max", alpha=alpha)
    lengths = _response_lengths(batch, "l1_max")
    correct = _correct(batch, "l1_max")
    targets = _target_lengths(batch, target_length, "l1_max")
    values = [
        float(ok) * min(1.0, max(0.0, alpha * (t - n) + delta))
        for ok, t, n in zip(correct, targets, lengths, strict=True)
    ]
    return RewardResult(values=values)


# ---------------------------------------------------------------------------------------------
# Cosine length-scaled reward (Yeo et al.)


def cos_fn(t: float, horizon: float, eta_min: float, eta_max: float) -> float:
    """CosFn(t, T, eta_min, eta_max) = eta_min + 0.5 * (eta_max - eta_min) * (1 + cos(t * pi / T)).

    Equals eta_max at t = 0 and eta_min at t = T (arXiv 2502.03373, sec. 4.2). eta_max is the value
    at length 0, not necessarily the larger one.
    """
    return eta_min + 0.5 * (eta_max - eta_min) * (1.0 + math.cos(t * math.pi / horizon))


@REWARDS.register("cosine")
def cosine(
    batch: RewardBatch,
    *,
    max_length: int | None = None,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    r_exceed: float = -10.0,
) -> RewardResult:
    """Cosine length-scaled reward of "Demystifying Long CoT" (Yeo et al., arXiv 2502.03373, sec. 4.2).

    With t the completion length in tokens and T = ``max_length`` (default: the generation budget)::

        r = CosFn(t, T, rL_correct, r0_correct)   if correct
          = CosFn(t, T, rL_wrong,   r0_wrong)     if wrong
          = r_exceed                              if the completion reached T (t >= T or truncated)

    r0 is the value at length 0 and rL the value at length T: correct answers earn more when short
    (2 -> 1), wrong answers are punished less when long (-10 -> 0), so the model is pushed to
    think longer only when it is wrong. Defaults are the paper's (r0c = 2, rLc = 1, r0w = -10,
    rLw = 0, r_exceed = -10). Includes the correctness term: use it in place of the verifier's reward.

    Worked example, T = 1000: correct t = 500: 1 + 0.5 * (2 - 1) * (1 + cos(pi/2)) = 1.5;
    wrong t = 500: 0 + 0.5 * (-10 - 0) * 1 = -5; correct t = 0: 2; any t = 1000: -10.
    """
    lengths = _response_lengths(batch, "cosine")
    correct = _correct(batch, "cosine")
    horizon = _budget(batch, max_length, "cosine")
    truncated = batch.truncated or [False] * len(lengths)
    values = []
    for t, ok, cut in zip(lengths, correct, truncated, strict=True):
        if cut or t >= horizon:
            values.append(float(r_exceed))
        elif ok:
            values.append(cos_fn(t, horizon, rL_correct, r0_correct))
        else:
            values.append(cos_fn(t, horizon, rL_wrong, r0_wrong))
    return RewardResult(values=values)


# ---------------------------------------------------------------------------------------------
# N-gram repetition penalty (Yeo et al.)


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def repeated_fraction(words: list[str], ngram_size: int) -> float:
    """1 - (distinct n-grams) / (all n-grams); 0 when there are fewer than ``ngram_size`` words."""
    grams = _ngrams(words, ngram_size)
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def repeated_positions(words: list[str], ngram_size: int) -> int:
    """How many words lie inside an n-gram occurrence that already occurred earlier in the text."""
    seen: set[tuple[str, ...]] = set()
    covered: set[int] = set()
    for start, gram in enumerate(_ngrams(words, ngram_size)):
        if gram in seen:
            covered.update(range(start, start + ngram_size))
        seen.add(gram)
    return len(covered)


@REWARDS.register("repetition")
def repetition(
    batch: RewardBatch,
    *,
    ngram_size: int = 40,
    form: str = "fraction",
    max_penalty: float = 1.0,
    penalty_per_word: float = 0.05,
) -> RewardResult:
    """N-gram repetition penalty of "Demystifying Long CoT" (Yeo et al., arXiv 2502.03373, sec. 4.2).

    The paper pairs the cosine reward with a penalty on repeated n-grams, because a length reward
    can be hacked by repeating text. It is a dense per-token reward: each token of an n-gram that
    already occurred gets -0.05, with N = 40 tokens (the values of the authors' run script for
    that section).
    A reward here is one number per completion, and the text is split into lower-cased
    whitespace-separated words (not model tokens). Two forms:

    * ``form="fraction"`` (default; the common sequence-level form)::

          r = -max_penalty * (1 - distinct_ngrams / total_ngrams)

    * ``form="per_word"`` (the paper's per-token penalties summed over the completion)::

          r = -penalty_per_word * (number of words inside a repeated n-gram occurrence)

    A completion with fewer than ``ngram_size`` words has no n-grams and gets 0.

    Worked example, ngram_size = 2, text "a b a b a b": 2-grams ab, ba, ab, ba, ab (5 in all, 2
    distinct); fraction: -1.0 * (1 - 2/5) = -0.6. The repeated occurrences start at words 2, 3, 4
    and cover words {2, 3, 4, 5}; per_word: -0.05 * 4 = -0.2.
    """
    if not isinstance(ngram_size, int) or ngram_size < 1:
        raise ConfigError(f"reward 'repetition': ngram_size must be a positive integer, got {ngram_size!r}")
    if form not in ("fraction", "per_word"):
        raise ConfigError(f"reward 'repetition': form must be 'fraction' or 'per_word', got {form!r}")
    _check_nonnegative("repetition", max_penalty=max_penalty, penalty_per_word=penalty_per_word)
    values = []
    for completion in batch.completions:
        words = completion.lower().split()
        if form == "fraction":
            values.append(-max_penalty * repeated_fraction(words, ngram_size))
        else:
            values.append(-penalty_per_word * repeated_positions(words, ngram_size))
    return RewardResult(values=values)


# ---------------------------------------------------------------------------------------------
# DeepSeek-R1 language consistency

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef"
_CJK = _HAN + "\u3040-\u30ff\uac00-\ud7af"  # Han, Hiragana and Katakana, Hangul syllables
# One CJK character, or a run of other letters (no digits, underscores or punctuation).
_WORD = re.compile(f"[{_CJK}]|[^\\W\\d_{_CJK}]+")
_HAN_CHAR = re.compile(f"[{_HAN}]")


def words_of(text: str) -> list[str]:
    """The words language consistency counts: each CJK character alone, else runs of letters.

    >>> words_of("Let x = 2, 计算 it")
    ['Let', 'x', '计', '算', 'it']
    """
    return _WORD.findall(text)


def _is_latin(word: str) -> bool:
    return all(ch.isascii() or unicodedata.name(ch, "").startswith("LATIN") for ch in word)


def chain_of_thought(completion: str, *, think_opened: bool = False) -> str:
    """The text inside the first think block (to the end if it is never closed); else everything."""
    text = THINK_OPEN + completion if think_opened else completion
    start = text.find(THINK_OPEN)
    if start < 0:
        return completion
    start += len(THINK_OPEN)
    end = text.find(THINK_CLOSE, start)
    return text[start:] if end < 0 else text[start:end]


def target_language_fraction(text: str, target: str) -> float:
    """Fraction of the words of ``text`` in the target language ("en" or "zh"); 0 with no words.

    "en": words written only in Latin letters (ASCII or accented). "zh": Han characters.
    """
    words = words_of(text)
    if not words:
        return 0.0
    if target == "en":
        hits = sum(_is_latin(w) for w in words)
    else:
        hits = sum(_HAN_CHAR.fullmatch(w) is not None for w in words)
    return hits / len(words)


@REWARDS.register("language_consistency")
def language_consistency(
    batch: RewardBatch, *, target: str = "en", think_opened: bool = False
) -> RewardResult:
    """DeepSeek-R1's language consistency reward (arXiv 2501.12948, sec. 2.3.2).

    "The proportion of target language words in the CoT": the chain of thought is the text inside
    ``<think>...</think>`` (the whole completion when there is no think block; pass
    ``think_opened=True`` when the prompt ends with ``<think>``). Counting rule: each CJK character
    (Han, kana, Hangul) is one word, as Chinese and Japanese do not separate words by spaces; any
    other run of letters is one word; digits, symbols and punctuation are not words. For
    ``target="en"`` a word counts if it is written in Latin letters only; for ``target="zh"`` if it
    is a Han character (so Latin variable names in a Chinese chain of thought count against it).
    A chain of thought without words scores 0, so thinking nothing earns nothing.

    Worked example, target "en": "<think>Let me 计算 this</think>..." has words Let, me, 计, 算, this:
    3 / 5 = 0.6.
    """
    if target not in ("en", "zh"):
        raise ConfigError(f"reward 'language_consistency': target must be 'en' or 'zh', got {target!r}")
    values = [
        target_language_fraction(chain_of_thought(c, think_opened=think_opened), target)
        for c in batch.completions
    ]
    return RewardResult(values=values)
