import pytest
import torch

from rlvr.algorithms.aggregation import AGGREGATIONS, aggregate
from rlvr.errors import ShapeError, UnknownNameError

# Two sequences: 1 token of value 1, and 3 tokens of value 2 (padded to T = 4).
VALUES = torch.tensor([[1.0, 9.0, 9.0, 9.0], [2.0, 2.0, 2.0, 9.0]], dtype=torch.float64)
MASK = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)


@pytest.mark.parametrize(
    "mode,expected",
    [
        ("token-mean", 7 / 4),  # all 4 tokens weigh the same: the long sequence weighs 3x
        ("seq-mean-token-mean", (1 / 1 + 6 / 3) / 2),  # each sequence weighs the same
        ("seq-mean-token-sum", (1 + 6) / 2),  # long sequences weigh by their length
    ],
)
def test_modes_weigh_short_and_long_sequences_as_their_papers_say(mode, expected):
    assert aggregate(VALUES, MASK, mode).item() == pytest.approx(expected, abs=1e-12)


def test_dr_grpo_norm_divides_by_fixed_length_not_padded_width():
    out = aggregate(VALUES, MASK, "seq-mean-token-sum-norm", norm_length=10)
    assert out.item() == pytest.approx(7 / (2 * 10), abs=1e-12)
    # Padding the tensor wider changes nothing.
    wide_v = torch.cat([VALUES, torch.full((2, 5), 7.0, dtype=torch.float64)], 1)
    wide_m = torch.cat([MASK, torch.zeros(2, 5, dtype=torch.bool)], 1)
    assert aggregate(wide_v, wide_m, "seq-mean-token-sum-norm", norm_length=10).item() == pytest.approx(
        out.item()
    )
    with pytest.raises(ShapeError, match="norm_length"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm")


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_micro_batches_with_global_counts_add_up_to_the_full_batch(mode):
    torch.manual_seed(1)
    v = torch.randn(6, 5, dtype=torch.float64)
    m = torch.rand(6, 5) > 0.3
    m[:, 0] = True
    full = aggregate(v, m, mode, norm_length=5)
    kw = dict(num_tokens=m.sum().item(), num_sequences=6, norm_length=5)
    parts = sum(aggregate(v[i : i + 2], m[i : i + 2], mode, **kw) for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(full.item(), abs=1e-12)


@pytest.mark.parametrize("mode", AGGREGATIONS.names())
def test_padding_values_never_matter(mode):
    v2 = VALUES.clone()
    v2[~MASK] = -1e6
    assert (
        aggregate(v2, MASK, mode, norm_length=4).item() == aggregate(VALUES, MASK, mode, norm_length=4).item()
    )


def test_bad_input_names_the_argument():
    with pytest.raises(UnknownNameError, match="did you mean 'token-mean'"):
        aggregate(VALUES, MASK, "token_mean")
    with pytest.raises(ShapeError, match="mask must be a bool or floating tensor"):
        aggregate(VALUES, MASK.long(), "token-mean")
    with pytest.raises(ShapeError, match=r"mask must have shape \(2, 4\)"):
        aggregate(VALUES, MASK[:, :3], "token-mean")
