import math

import pytest
import torch

from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.lm_loss import LM_TENSOR_ARGS, positive_lm_loss
from rlvr.errors import ShapeError

F64 = torch.float64
NEG_INF = -math.inf

# Row 0 correct: tokens -1, -3. Row 1 wrong. Row 2 correct: token -4. Padding holds -inf.
LOGPROBS = torch.tensor([[-1.0, -3.0, NEG_INF], [-0.5, -0.5, -0.5], [-4.0, NEG_INF, NEG_INF]], dtype=F64)
MASK = torch.tensor([[True, True, False], [True, True, True], [True, False, False]])
CORRECT = torch.tensor([True, False, True])


def test_nll_averages_tokens_of_correct_completions_only():
    lp = LOGPROBS.clone().requires_grad_(True)
    out = positive_lm_loss(logprobs=lp, mask=MASK, correct=CORRECT)
    assert out.loss.item() == pytest.approx((1 + 3 + 4) / 3, abs=1e-15)  # 3 correct tokens
    out.loss.backward()
    expected_grad = torch.tensor([[-1 / 3, -1 / 3, 0.0], [0.0, 0.0, 0.0], [-1 / 3, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(lp.grad, expected_grad, rtol=0, atol=1e-15)  # no nan from the -inf padding
    assert out.metrics["lm/nll"].item() == pytest.approx(8 / 3, abs=1e-15)
    assert out.metrics["lm/correct_fraction"].item() == pytest.approx(2 / 3, abs=1e-15)


def test_wrong_completions_and_padding_never_matter():
    changed = LOGPROBS.clone()
    changed[1] = torch.tensor([NEG_INF, -100.0, math.nan])  # the wrong completion
    a = positive_lm_loss(logprobs=LOGPROBS, mask=MASK, correct=CORRECT).loss
    b = positive_lm_loss(logprobs=changed, mask=MASK.double(), correct=CORRECT).loss
    assert a.item() == b.item()


def test_other_aggregations_follow_the_correct_completions():
    # seq-mean-token-mean over the 2 correct sequences: ((1 + 3) / 2 + 4 / 1) / 2 = 3.
    out = positive_lm_loss(logprobs=LOGPROBS, mask=MASK, correct=CORRECT, aggregation="seq-mean-token-mean")
    assert out.loss.item() == pytest.approx(3.0, abs=1e-15)


def test_no_correct_completion_gives_zero_with_an_intact_graph():
    lp = LOGPROBS.clone().requires_grad_(True)
    out = positive_lm_loss(logprobs=lp, mask=MASK, correct=torch.zeros(3, dtype=torch.bool))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    assert torch.equal(lp.grad, torch.zeros_like(lp))


def test_micro_batches_with_the_global_count_of_correct_tokens_add_up():
    full = positive_lm_loss(logprobs=LOGPROBS, mask=MASK, correct=CORRECT).loss
    parts = [
        positive_lm_loss(logprobs=LOGPROBS[s], mask=MASK[s], correct=CORRECT[s], num_tokens=3).loss
        for s in (slice(0, 2), slice(2, 3))
    ]  # 3 = tokens of correct completions in the whole batch, not all 7 response tokens
    assert sum(parts).item() == pytest.approx(full.item(), abs=1e-15)


def test_hyperparameters_are_config_fields():
    assert hyperparameters_for(positive_lm_loss, AlgorithmConfig(), LM_TENSOR_ARGS) == {
        "aggregation": AlgorithmConfig().aggregation
    }


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ShapeError, match="correct must be a bool tensor"):
        positive_lm_loss(logprobs=LOGPROBS, mask=MASK, correct=CORRECT.double())
    with pytest.raises(ShapeError, match="correct has 2 entries but logprobs has 3 rows"):
        positive_lm_loss(logprobs=LOGPROBS, mask=MASK, correct=CORRECT[:2])
    with pytest.raises(ShapeError, match="correct must be 1-D"):
        positive_lm_loss(logprobs=LOGPROBS, mask=MASK, correct=MASK)
    with pytest.raises(ShapeError, match="mask must be a bool or floating"):
        positive_lm_loss(logprobs=LOGPROBS, mask=MASK.long(), correct=CORRECT)
    with pytest.raises(ShapeError, match="logprobs must be a floating"):
        positive_lm_loss(logprobs=LOGPROBS.long(), mask=MASK, correct=CORRECT)
