"""Rollout/trainer mismatch corrections: hand-computed float64 values and invariants."""

import math

import pytest
import torch

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.mismatch import (
    check_mismatch_settings,
    masked_is_keep,
    mismatch_correction,
    mismatch_log_ratio,
    mismatch_metrics,
    opsm_keep,
    sequence_log_ratio,
    truncated_is_weights,
)
from rlvr.algorithms.validation import field_readers, validate_algorithm_config
from rlvr.errors import ConfigError

F64 = torch.float64


def t(rows):
    return torch.tensor(rows, dtype=F64)


ALL_ON = dict(
    mismatch_is="token",
    mismatch_is_cap=2.0,
    mismatch_mask="token",
    mismatch_mask_low=0.5,
    mismatch_mask_high=2.0,
    mismatch_opsm_delta=0.1,
)


def _call(old, rollout, adv, mask, logprobs=None, **settings):
    return mismatch_correction(
        old_logprobs=old,
        rollout_logprobs=rollout,
        logprobs=old if logprobs is None else logprobs,
        advantages=adv,
        mask=mask,
        **settings,
    )


def test_log_ratio_is_old_minus_rollout_and_zero_on_padding():
    lr = mismatch_log_ratio(t([[-1.0, -2.0, 5.0]]), t([[-1.5, -1.0, 7.0]]), t([[1, 1, 0]]))
    assert torch.equal(lr, t([[0.5, -1.0, 0.0]]))


def test_sequence_log_ratio_sum_and_mean():
    lr, mask = t([[0.2, 0.4, 9.0]]), t([[1, 1, 0]])
    assert sequence_log_ratio(lr, mask, "sequence").item() == pytest.approx(0.6, abs=1e-15)
    assert sequence_log_ratio(lr, mask, "geometric").item() == pytest.approx(0.3, abs=1e-15)


def test_token_tis_hand_computed():
    w, trunc = truncated_is_weights(t([[0.5, -0.5, 1.0]]), t([[1, 1, 1]]), "token", 2.0)
    assert torch.allclose(w, t([[math.exp(0.5), math.exp(-0.5), 2.0]]), atol=1e-15, rtol=0)
    assert trunc.tolist() == [[False, False, True]]


def test_sequence_tis_product_and_geometric_hand_computed():
    lr, mask = t([[0.3, 0.4, 0.0], [-0.2, 0.1, 0.0]]), t([[1, 1, 0], [1, 1, 1]])
    w, trunc = truncated_is_weights(lr, mask, "sequence", 2.0)
    # row 0: exp(0.7) = 2.0138 > 2 -> 2 on its two tokens; row 1: exp(-0.1) on all three
    assert torch.allclose(w, t([[2.0, 2.0, 0.0], [math.exp(-0.1)] * 3]), atol=1e-15, rtol=0)
    assert trunc.tolist() == [[True, True, False], [False, False, False]]
    w, trunc = truncated_is_weights(lr, mask, "geometric", 2.0)
    expected = t([[math.exp(0.35), math.exp(0.35), 0.0], [math.exp(-0.1 / 3)] * 3])
    assert torch.allclose(w, expected, atol=1e-15, rtol=0) and not trunc.any()


def test_masked_is_token_and_sequence_hand_computed():
    lr, mask = t([[0.5, -1.0, math.log(2.0)]]), t([[1, 1, 1]])
    assert masked_is_keep(lr, mask, "token", 0.5, 2.0).tolist() == [[True, False, True]]
    # product: exp(0.5 - 1 + 0.6931) = 1.213 in [0.5, 2]: the whole sequence is kept
    assert masked_is_keep(lr, mask, "sequence", 0.5, 2.0).all()
    assert not masked_is_keep(t([[0.5, 0.5]]), t([[1, 1]]), "sequence", 0.5, 2.0).any()  # e^1 > 2
    assert masked_is_keep(t([[0.5, 0.5]]), t([[1, 1]]), "geometric", 0.5, 2.0).all()  # e^0.5 < 2


def test_opsm_masks_only_negative_advantage_off_policy_sequences():
    rollout = t([[-1.0, -2.0], [-1.0, -2.0], [-1.0, -2.0]])
    current = t([[-1.2, -2.2], [-1.2, -2.2], [-1.05, -2.05]])  # mean log-ratios 0.2, 0.2, 0.05
    adv = t([[-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    keep = opsm_keep(rollout, current, adv, torch.ones(3, 2), delta=0.1)
    assert keep.tolist() == [[False, False], [True, True], [True, True]]


def test_metrics_hand_computed():
    lr, mask = t([[0.5, -1.0, 3.0]]), t([[1, 1, 0]])
    m = mismatch_metrics(lr, mask)
    assert m["mismatch/log_ratio_mean"].item() == pytest.approx(-0.25, abs=1e-15)
    assert m["mismatch/abs_log_ratio_max"].item() == 1.0
    k3 = ((math.exp(0.5) - 1 - 0.5) + (math.exp(-1.0) - 1 + 1.0)) / 2
    assert m["mismatch/k3_kl"].item() == pytest.approx(k3, abs=1e-15)
    assert m["mismatch/nonfinite_fraction"].item() == 0.0


def test_combined_correction_worked_example():
    old, rollout = t([[-1.0, -2.0]]), t([[-1.5, -1.0]])  # delta = (0.5, -1.0)
    out = _call(old, rollout, t([[1.0, 1.0]]), t([[1, 1]]), **{**ALL_ON, "mismatch_opsm_delta": None})
    assert torch.allclose(out.advantages, t([[math.exp(0.5), 0.0]]), atol=1e-15, rtol=0)
    assert torch.allclose(out.weights, t([[math.exp(0.5), 0.0]]), atol=1e-15, rtol=0)
    assert out.metrics["mismatch/masked_fraction"].item() == 0.5
    assert out.metrics["mismatch/is_truncated_fraction"].item() == 0.0


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
def test_every_correction_is_identity_when_rollout_equals_trainer(level):
    torch.manual_seed(0)
    old = -torch.rand(3, 5, dtype=F64) * 4
    adv = torch.randn(3, 5, dtype=F64)
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    adv = torch.where(mask.bool(), adv, torch.zeros((), dtype=F64))
    settings = {**ALL_ON, "mismatch_is": level, "mismatch_mask": level}
    out = _call(old, old.clone(), adv, mask, **settings)  # current == rollout too: OPSM keeps all
    assert torch.equal(out.advantages, adv)
    assert torch.equal(out.weights, mask)
    for key in (
        "is_truncated_fraction",
        "masked_fraction",
        "opsm_masked_fraction",
        "k3_kl",
        "log_ratio_mean",
    ):
        assert out.metrics[f"mismatch/{key}"].item() == 0.0


def test_padding_values_never_matter():
    old, rollout, adv, mask = t([[-1.0, 0.0]]), t([[-1.2, 0.0]]), t([[1.0, 0.0]]), t([[1, 0]])
    ref = _call(old, rollout, adv, mask, **ALL_ON)
    junk = _call(t([[-1.0, float("nan")]]), t([[-1.2, -math.inf]]), t([[1.0, 5.0]]), mask, **ALL_ON)
    assert torch.equal(ref.advantages, junk.advantages) and torch.equal(ref.weights, junk.weights)
    for k, v in ref.metrics.items():
        assert torch.equal(v, junk.metrics[k]), k


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
def test_permuting_rows_permutes_the_result(level):
    torch.manual_seed(1)
    old = -torch.rand(4, 3, dtype=F64) * 3
    rollout = old + 0.8 * torch.randn(4, 3, dtype=F64)
    adv = torch.randn(4, 3, dtype=F64)
    mask = t([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 1]])
    settings = {**ALL_ON, "mismatch_is": level, "mismatch_mask": level}
    perm = torch.tensor([2, 0, 3, 1])
    a = _call(old, rollout, adv, mask, logprobs=rollout - 0.3, **settings)
    b = _call(old[perm], rollout[perm], adv[perm], mask[perm], logprobs=(rollout - 0.3)[perm], **settings)
    assert torch.equal(a.advantages[perm], b.advantages) and torch.equal(a.weights[perm], b.weights)


def test_stale_minus_inf_logprob_gives_no_nan():
    # A rollout logprob of -inf: delta = +inf. TIS caps it, MIS drops it; NaN (both -inf) weighs 0.
    old, rollout = t([[-1.0, -2.0, -math.inf]]), t([[-math.inf, -2.0, -math.inf]])
    adv, mask = t([[1.0, 1.0, 1.0]]), t([[1, 1, 1]])
    for level in ("token", "sequence", "geometric"):
        tis = _call(old, rollout, adv, mask, mismatch_is=level)
        mis = _call(old, rollout, adv, mask, mismatch_mask=level)
        both = _call(old, rollout, adv, mask, **{**ALL_ON, "mismatch_is": level, "mismatch_mask": level})
        for out in (tis, mis, both):
            assert torch.isfinite(out.advantages).all() and torch.isfinite(out.weights).all()
            assert all(torch.isfinite(v) for v in out.metrics.values())
    tis = _call(old, rollout, adv, mask, mismatch_is="token")
    assert tis.weights.tolist() == [[2.0, 1.0, 0.0]]
    mis = _call(old, rollout, adv, mask, mismatch_mask="token")
    assert mis.advantages.tolist() == [[0.0, 1.0, 0.0]]
    assert mis.metrics["mismatch/nonfinite_fraction"].item() == pytest.approx(2 / 3, abs=1e-15)
    # The gradient through a loss built on the weighted advantages stays finite as well.
    lp = old.clone().clamp(min=-50).requires_grad_(True)
    (-(mis.advantages * lp).sum()).backward()
    assert torch.isfinite(lp.grad).all()


def test_settings_out_of_range_name_the_key():
    cases = [
        (dict(mismatch_is="tok"), "algorithm.mismatch_is"),
        (dict(mismatch_mask="seq"), "algorithm.mismatch_mask"),
        (dict(mismatch_is_cap=0.9), "algorithm.mismatch_is_cap"),
        (dict(mismatch_is_cap=math.inf), "algorithm.mismatch_is_cap"),
        (dict(mismatch_mask_low=1.5), "algorithm.mismatch_mask_low"),
        (dict(mismatch_mask_high=0.5), "algorithm.mismatch_mask_high"),
        (dict(mismatch_opsm_delta=-0.1), "algorithm.mismatch_opsm_delta"),
    ]
    for kwargs, key in cases:
        with pytest.raises(ConfigError, match=key):
            check_mismatch_settings(**kwargs)
        with pytest.raises(ConfigError, match=key):
            validate_algorithm_config(AlgorithmConfig(**kwargs))
    check_mismatch_settings(mismatch_mask_low=0.0, mismatch_opsm_delta=0.0)  # the edges are valid


def test_config_accepts_the_corrections_only_with_weightable_losses():
    validate_algorithm_config(AlgorithmConfig(**ALL_ON))
    validate_algorithm_config(AlgorithmConfig(policy_loss="cispo", mismatch_is="sequence"))
    with pytest.raises(ConfigError, match="algorithm.mismatch_mask.*'kimi'"):
        validate_algorithm_config(AlgorithmConfig(policy_loss="kimi", mismatch_mask="token"))


def test_every_mismatch_field_has_a_reader():
    readers = field_readers()
    for name in ALL_ON:
        assert readers[name] == ["mismatch.mismatch_correction"], name
