import math

import pytest
import torch

from rlvr.algorithms.sampling_support import nucleus_weights
from rlvr.errors import ConfigError, RLVRError
from rlvr.rollout.sampling import draw_from_weights, sample_next_token, sample_next_token_in_support

# A fixed next-token distribution, deliberately not sorted: token 1 is the most likely.
PROBS = torch.tensor([0.10, 0.50, 0.15, 0.25])
DRAWS = 4000


def draw(temperature=1.0, top_k=0, top_p=1.0, seed=0, probs=PROBS):
    logits = probs.log().expand(DRAWS, -1).contiguous()  # [DRAWS, V], the same row everywhere
    generator = torch.Generator().manual_seed(seed)
    return sample_next_token(logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)


def frequencies(tokens, vocab=4):
    return torch.bincount(tokens, minlength=vocab).double() / tokens.numel()


@pytest.mark.parametrize(
    ("top_p", "nucleus"),
    [
        # Sorted: 0.50 (token 1), 0.25 (token 3), 0.15 (token 2), 0.10 (token 0).
        (0.3, {1}),  # 0.5 >= 0.3 already
        (0.7, {1, 3}),  # 0.5 < 0.7 <= 0.75
        (0.8, {1, 3, 2}),  # 0.75 < 0.8 <= 0.9
        (0.95, {0, 1, 2, 3}),  # 0.9 < 0.95 <= 1.0
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_draws_exactly_the_smallest_set_reaching_p(top_p, nucleus):
    tokens, _ = draw(top_p=top_p)
    assert set(tokens.tolist()) == nucleus
    # Inside the nucleus tokens keep their relative probabilities: p_i / sum_nucleus p.
    mass = sum(PROBS[i].item() for i in nucleus)
    freq = frequencies(tokens)
    for i in nucleus:
        assert freq[i].item() == pytest.approx(PROBS[i].item() / mass, abs=0.03)


def test_top_k_keeps_the_k_most_likely():
    tokens, _ = draw(top_k=2)
    assert set(tokens.tolist()) == {1, 3}
    assert frequencies(tokens)[1].item() == pytest.approx(0.5 / 0.75, abs=0.03)
    tokens, _ = draw(top_k=4)  # k = V keeps everything
    assert set(tokens.tolist()) == {0, 1, 2, 3}


def test_top_p_applies_to_the_top_k_renormalised_distribution():
    # After top_k=2 the distribution is (token 1: 2/3, token 3: 1/3); the mass before token 3 is
    # 2/3 >= 0.6, so top_p=0.6 keeps token 1 only (on the full distribution it would keep 1 and 3).
    tokens, _ = draw(top_k=2, top_p=0.6)
    assert set(tokens.tolist()) == {1}
    tokens, _ = draw(top_p=0.6)
    assert set(tokens.tolist()) == {1, 3}


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 1.0), (2, 1.0), (0, 0.7), (2, 0.6)])
def test_logprob_is_of_the_untruncated_distribution(top_k, top_p):
    tokens, logprobs = draw(top_k=top_k, top_p=top_p)
    torch.testing.assert_close(logprobs, PROBS.log()[tokens])  # e.g. token 1 -> log 0.5, never log(2/3)


@pytest.mark.parametrize(
    ("top_k", "top_p", "kept"),
    [(0, 1.0, {0, 1, 2, 3}), (2, 1.0, {1, 3}), (0, 0.7, {1, 3}), (2, 0.6, {1}), (3, 0.8, {1, 3})],
)
def test_in_support_draws_the_same_token_and_gives_the_truncated_logprob(top_k, top_p, kept):
    tokens, logprobs = draw(top_k=top_k, top_p=top_p)
    logits = PROBS.log().expand(DRAWS, -1).contiguous()
    same, truncated, full = sample_next_token_in_support(
        logits, temperature=1.0, top_k=top_k, top_p=top_p, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(same, tokens) and torch.equal(full, logprobs)  # the same draw, bit for bit
    # log pi_T = log p - log(kept mass): token 1 of the nucleus {1, 3} gets log(0.5 / 0.75) = log 2/3
    mass = sum(PROBS[i].item() for i in kept)
    torch.testing.assert_close(truncated, (PROBS / mass).log()[tokens])
    torch.testing.assert_close(full - truncated, torch.full_like(full, math.log(mass)))


def test_in_support_greedy_is_a_point_mass():
    logits = torch.tensor([[0.0, 2.0, 1.0]])
    token, truncated, full = sample_next_token_in_support(logits, temperature=0.0, top_p=0.5)
    assert token.tolist() == [1] and truncated.tolist() == [0.0]
    assert full.item() == pytest.approx(2 - math.log(1 + math.e**2 + math.e), abs=1e-6)


def test_temperature_scales_logits_for_sampling_and_logprob():
    # softmax(log p / 2) is proportional to sqrt(p): sqrt(.1, .5, .15, .25) / 2.0697 = (.153, .342, .187, .242)
    tempered = PROBS.sqrt() / PROBS.sqrt().sum()
    tokens, logprobs = draw(temperature=2.0)
    torch.testing.assert_close(logprobs, tempered.log()[tokens])
    for i in range(4):
        assert frequencies(tokens)[i].item() == pytest.approx(tempered[i].item(), abs=0.03)


def test_greedy_takes_argmax_with_untempered_logprob():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, -1.0, 0.5]])
    tokens, logprobs = sample_next_token(logits, temperature=0.0)
    assert tokens.tolist() == [1, 0]
    torch.testing.assert_close(logprobs, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])
    # Row 0: 2 - log(e^0 + e^2 + e^1) = 2 - 2.4076 = -0.4076
    assert logprobs[0].item() == pytest.approx(2 - math.log(1 + math.e**2 + math.e), abs=1e-6)


def test_same_generator_seed_same_tokens_and_different_seed_different():
    a, _ = draw(seed=1)
    b, _ = draw(seed=1)
    c, _ = draw(seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_rows_are_sampled_independently_from_their_own_logits():
    # Row 0 can only be token 0, row 1 only token 2 (the other logits are -inf).
    logits = torch.full((2, 3), float("-inf"))
    logits[0, 0] = 0.0
    logits[1, 2] = 0.0
    tokens, logprobs = sample_next_token(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert tokens.tolist() == [0, 2]
    assert logprobs.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
        ({"temperature": 1.0, "top_k": -1}, "top_k"),
        ({"temperature": 1.0, "top_k": 2.5}, "top_k"),
    ],
)
def test_invalid_values_raise_config_error_naming_them(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        sample_next_token(torch.zeros(1, 3), **kwargs)


def test_draw_from_weights_follows_the_weights_and_never_draws_a_zero():
    # Zero weights first, inside and last: the inverse-CDF search must skip all three.
    weights = torch.tensor([0.0, 2.0, 0.0, 1.0, 1.0, 0.0]).expand(20000, -1)
    tokens = draw_from_weights(weights, torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=6).double() / tokens.numel()
    assert set(tokens.tolist()) == {1, 3, 4}
    torch.testing.assert_close(
        freq, torch.tensor([0, 0.5, 0, 0.25, 0.25, 0], dtype=torch.float64), atol=0.015, rtol=0
    )


def test_draw_from_weights_with_one_positive_weight_is_certain():
    weights = torch.zeros(1000, 7)
    weights[:, 6] = 1e-30  # tiny but positive, and last
    assert draw_from_weights(weights, torch.Generator().manual_seed(0)).eq(6).all()


def test_nan_logits_raise_a_clear_error():
    logits = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(RLVRError, match="NaN"):
        sample_next_token(logits, temperature=1.0)


def _large_vocab_weights():
    # 3000 tokens: token 5 has 0.5, token 2500 has 0.3, the other 2998 share 0.2 (u = 6.671e-5 each).
    probs = torch.full((3000,), 0.2 / 2998, dtype=torch.float64)
    probs[5], probs[2500] = 0.5, 0.3
    return probs[None].float()


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        (0.7, 2),  # 0.5 < 0.7 <= 0.8: tokens 5 and 2500, found among the 1024 heaviest
        (0.85, 752),  # 0.8 + j u < 0.85 for j < 749.5: 750 more; the 1024 heaviest hold 0.868 >= 0.85
        (0.95, 2251),  # 0.8 + j u < 0.95 for j < 2248.5: 2249 more, beyond 1024: the full sort
    ],
)
def test_nucleus_over_a_large_vocabulary(top_p, kept):
    weights = _large_vocab_weights()
    nucleus = nucleus_weights(weights, top_p)
    assert int((nucleus > 0).sum()) == kept
    assert nucleus[0, 5] > 0 and nucleus[0, 2500] > 0
    torch.testing.assert_close(nucleus[nucleus > 0], weights[nucleus > 0])  # kept weights unchanged
    full_sort = nucleus_weights(weights, top_p, first_try=weights.shape[-1])
    assert int((full_sort > 0).sum()) == kept
