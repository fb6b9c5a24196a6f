"""SPO (arXiv 2505.23564): cut points from logprobs, chain-based segment advantages, the estimator."""

import math

import pytest
import torch

from rlvr.algorithms.advantages import ADVANTAGES
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.spo import spo_cut_points, spo_segment_advantages
from rlvr.algorithms.validation import validate_algorithm_config
from rlvr.config import load_config
from rlvr.errors import ConfigError

F64 = torch.float64
FIGURE = [0.99, 0.72, 1.0, 0.85, 1.0, 0.56, 0.92, 0.23, 0.98, 0.11]
"""Token probabilities in the spirit of the paper's Figure 1: cutpoints (p < 0.9) at 1, 3, 5, 7, 9."""


def logp(rows):
    return torch.tensor([[math.log(p) for p in row] for row in rows], dtype=F64)


def ones(b, t):
    return torch.ones(b, t, dtype=torch.bool)


def positions(cuts):
    return [torch.nonzero(row).flatten().tolist() for row in cuts]


# --- cut points ------------------------------------------------------------------------------------


def test_every_interval_th_low_probability_token_starts_a_segment():
    lp = logp([FIGURE])
    assert positions(spo_cut_points(lp, ones(1, 10), spo_interval=1)) == [[1, 3, 5, 7, 9]]
    assert positions(spo_cut_points(lp, ones(1, 10), spo_interval=2)) == [[1, 5, 9]]
    assert positions(spo_cut_points(lp, ones(1, 10), spo_interval=5)) == [[1]]
    assert positions(spo_cut_points(lp, ones(1, 10), spo_interval=2, spo_max_cuts=1)) == [[1]]
    assert positions(spo_cut_points(lp, ones(1, 10), spo_interval=1, spo_max_cuts=0)) == [[]]
    # a lower threshold: only 0.56, 0.23 and 0.11 are cutpoints
    assert positions(spo_cut_points(lp, ones(1, 10), spo_threshold=0.6, spo_interval=1)) == [[5, 7, 9]]


def test_a_cutpoint_at_the_first_token_is_the_prompt_state_and_still_counts():
    # cutpoints 0, 2, 3; int 2 takes the 1st and 3rd: position 0 (the prompt: no cut) and 3
    cuts = spo_cut_points(logp([[0.5, 0.99, 0.6, 0.7]]), ones(1, 4), spo_interval=2)
    assert positions(cuts) == [[3]]


def test_the_threshold_is_strict():
    cuts = spo_cut_points(logp([[0.99, 0.9, 0.8999, 0.9]]), ones(1, 4), spo_interval=1)
    assert positions(cuts) == [[2]]


def test_padding_never_cuts_and_a_wider_tensor_changes_nothing():
    lp = logp([FIGURE[:6] + [0.1, 0.1]])
    mask = torch.tensor([[1] * 6 + [0, 0]], dtype=torch.bool)
    assert positions(spo_cut_points(lp, mask, spo_interval=1)) == [[1, 3, 5]]
    wide = torch.cat([lp, torch.full((1, 3), float("nan"), dtype=F64)], dim=1)
    wide_mask = torch.cat([mask, torch.zeros(1, 3, dtype=torch.bool)], dim=1)
    assert positions(spo_cut_points(wide, wide_mask, spo_interval=1)) == [[1, 3, 5]]


def test_bad_settings_name_the_key():
    lp, mask = logp([FIGURE]), ones(1, 10)
    with pytest.raises(ConfigError, match="algorithm.spo_interval"):
        spo_cut_points(lp, mask, spo_interval=0)
    with pytest.raises(ConfigError, match="algorithm.spo_threshold"):
        spo_cut_points(lp, mask, spo_threshold=0.0)
    with pytest.raises(ConfigError, match="algorithm.spo_max_cuts"):
        spo_cut_points(lp, mask, spo_max_cuts=-1)


# --- segment advantages ----------------------------------------------------------------------------


def test_segment_advantage_is_the_value_gained_over_the_segment():
    cuts = torch.zeros(1, 6, dtype=torch.bool)
    cuts[0, [2, 5]] = True
    values = torch.zeros(1, 6, dtype=F64)
    values[0, 2], values[0, 5] = 1 / 3, 1.0
    a = spo_segment_advantages(t1(1.0), t1(2 / 3), cuts, values, ones(1, 6))
    assert a[0].tolist() == pytest.approx([-1 / 3, -1 / 3, 2 / 3, 2 / 3, 2 / 3, 0.0], abs=1e-15)
    # the segments' advantages telescope: their sum is the outcome minus the start value
    assert (a[0, 0] + a[0, 2] + a[0, 5]).item() == pytest.approx(1 - 2 / 3, abs=1e-15)


def t1(x):
    return torch.tensor([x], dtype=F64)


def test_no_cut_is_one_segment_and_values_off_the_cuts_are_never_read():
    values = torch.full((1, 4), float("nan"), dtype=F64)
    a = spo_segment_advantages(t1(0.0), t1(0.25), torch.zeros(1, 4, dtype=torch.bool), values, ones(1, 4))
    assert a[0].tolist() == [-0.25] * 4


# --- the estimator ---------------------------------------------------------------------------------


def run(rewards, probs, values=None, group_ids=None, mask=None, **kw):
    lp = logp(probs)
    b, width = lp.shape
    cut_values = torch.zeros(b, width, dtype=F64) if values is None else torch.tensor(values, dtype=F64)
    return ADVANTAGES.get("spo")(
        rewards=torch.tensor(rewards, dtype=F64),
        mask=ones(b, width) if mask is None else mask,
        group_ids=torch.zeros(b, dtype=torch.long) if group_ids is None else torch.tensor(group_ids),
        sampling_logprobs=lp,
        cut_values=cut_values,
        **kw,
    )


HIGH = [0.99, 0.99, 0.99]


def test_hand_computed_example_without_and_with_the_probability_mask():
    probs = [[0.95, 0.5, 0.99], HIGH, HIGH]
    values = [[0, 1 / 3, 0], [0, 0, 0], [0, 0, 0]]
    out = run([1.0, 0.0, 1.0], probs, values, spo_interval=1, spo_prob_mask=False)
    # group mean 2/3; row 0 is cut at 1 (V = 1/3): (1/3 - 2/3, 1 - 1/3, 1 - 1/3)
    expected = torch.tensor([[-1 / 3, 2 / 3, 2 / 3], [-2 / 3] * 3, [1 / 3] * 3], dtype=F64)
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=1e-15)
    assert out.loss_mask is None
    assert out.metrics["spo/cuts_per_completion"] == pytest.approx(1 / 3)
    assert out.metrics["spo/segments_per_completion"] == pytest.approx(4 / 3)
    masked = run([1.0, 0.0, 1.0], probs, values, spo_interval=1)
    assert masked.loss_mask.tolist() == [[False, True, False], [False] * 3, [False] * 3]
    expected = torch.tensor([[0, 2 / 3, 0], [0] * 3, [0] * 3], dtype=F64)
    torch.testing.assert_close(masked.advantages, expected, rtol=0, atol=1e-15)
    assert masked.metrics["spo/prob_mask_tokens"] == pytest.approx(1 / 9)
    assert masked.advantages.dtype == F64


def test_without_cut_points_spo_is_dr_grpo_exactly():
    torch.manual_seed(0)
    rewards = torch.rand(9, dtype=F64).round(decimals=1)
    ids = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    probs = [[0.95] * 5] * 9
    mask = ones(9, 5)
    mask[3, 2:] = False
    out = run(rewards.tolist(), probs, group_ids=ids.tolist(), mask=mask, spo_prob_mask=False)
    dr = ADVANTAGES.get("dr_grpo")(rewards=rewards, mask=mask, group_ids=ids)
    assert torch.equal(out.advantages, dr.advantages)
    # the same rows with low-probability tokens but the cap at 0: one segment each, masked to them
    low = run(rewards.tolist(), [[0.5] * 5] * 9, group_ids=ids.tolist(), mask=mask, spo_max_cuts=0)
    assert torch.equal(low.advantages, dr.advantages)
    assert torch.equal(low.loss_mask, mask)


def test_a_group_of_equal_rewards_without_cuts_gets_exactly_zero():
    out = run([0.1, 0.1, 0.1], [HIGH] * 3, spo_prob_mask=False)
    assert out.advantages.abs().max().item() == 0.0


def test_padding_and_permutation_of_rows():
    probs = [[0.95, 0.5, 0.99, 0.4], [0.3, 0.6, 0.99, 0.2], [0.99, 0.99, 0.7, 0.99], [0.5, 0.5, 0.5, 0.5]]
    values = [[0, 0.25, 0, 0.5], [0, 0.75, 0, 1.0], [0, 0, 0.0, 0], [0, 0.5, 0.5, 0.5]]
    rewards, ids = [1.0, 0.0, 1.0, 0.5], [3, 7, 3, 7]
    mask = ones(4, 4)
    mask[2, 3] = False
    base = run(rewards, probs, values, group_ids=ids, mask=mask, spo_interval=1)
    # wider, with garbage in the padding
    wide_probs = [row + [0.01, 0.01] for row in probs]
    wide_values = [row + [float("nan")] * 2 for row in values]
    wide_mask = torch.cat([mask, torch.zeros(4, 2, dtype=torch.bool)], dim=1)
    wide = run(rewards, wide_probs, wide_values, group_ids=ids, mask=wide_mask, spo_interval=1)
    assert torch.equal(wide.advantages[:, :4], base.advantages)
    assert wide.advantages[:, 4:].abs().sum().item() == 0.0
    assert (wide.advantages[~wide_mask] == 0).all()
    # rows in another order, group ids renamed
    order = [2, 0, 3, 1]
    perm = run(
        [rewards[i] for i in order],
        [probs[i] for i in order],
        [values[i] for i in order],
        group_ids=[{3: 0, 7: 11}[ids[i]] for i in order],
        mask=mask[order],
        spo_interval=1,
    )
    assert torch.equal(perm.advantages, base.advantages[order])
    assert torch.equal(perm.loss_mask, base.loss_mask[order])


def test_float32_in_float32_out_and_no_gradient():
    rewards = torch.tensor([1.0, 0.0], requires_grad=True)
    out = ADVANTAGES.get("spo")(
        rewards=rewards,
        mask=ones(2, 3),
        group_ids=torch.zeros(2, dtype=torch.long),
        sampling_logprobs=logp([[0.9, 0.5, 0.99], HIGH]).float(),
        cut_values=torch.tensor([[0.0, 0.25, 0.0], [0.0, 0.0, 0.0]]),
        spo_interval=1,
    )
    assert out.advantages.dtype == torch.float32 and not out.advantages.requires_grad
    assert out.advantages[0].tolist() == [0.0, 0.75, 0.0]


def test_the_estimator_needs_the_loops_tensors():
    with pytest.raises(ConfigError, match="cut_values"):
        ADVANTAGES.get("spo")(
            rewards=torch.ones(2, dtype=F64), mask=ones(2, 3), group_ids=torch.zeros(2, dtype=torch.long)
        )


# --- SPO-tree ----------------------------------------------------------------------------------------


def test_tree_values_and_advantages_of_the_papers_figure():
    from rlvr.training.spo_tree import TreeNode, tree_values

    # Figure 2b: three children of the prompt whose own children score (1, 0, 1), (1, 1, 1), (0, 0, 0)
    nodes = [
        TreeNode([], [1], [0.0], "length", -1, 0, children=[3 * k + 3, 3 * k + 4, 3 * k + 5])
        for k in range(3)
    ]
    nodes += [TreeNode([1], [2], [0.0], "stop", k, 1, leaf=True) for k in range(3) for _ in range(3)]
    tree_values(nodes, [1, 0, 1, 1, 1, 1, 0, 0, 0])
    assert [n.value for n in nodes[:3]] == pytest.approx([2 / 3, 1.0, 0.0])
    # the prompt's segment group: rewards V(n), baseline their mean V(Pa) = 5/9; A(n) = V(n) - 5/9
    out = run([n.value for n in nodes[:3]], [[0.5]] * 3, spo_tree=(3, 3), spo_prob_mask=False)
    expected = torch.tensor([[2 / 3 - 5 / 9], [4 / 9], [-5 / 9]], dtype=F64)
    torch.testing.assert_close(out.advantages, expected, rtol=0, atol=1e-15)
    # in a tree the rows have no cut points, whatever their probabilities
    row = run([1.0, 0.0], [FIGURE, FIGURE], spo_tree=(2,), spo_interval=1, spo_prob_mask=False)
    assert row.metrics["spo/cuts_per_completion"] == 0.0
    assert row.advantages[0].tolist() == [0.5] * 10


# --- configuration -----------------------------------------------------------------------------------


def test_settings_are_validated_with_the_key():
    validate_algorithm_config(AlgorithmConfig(advantage="spo"))
    for field, value in [
        ("spo_interval", 0),
        ("spo_threshold", 1.5),
        ("spo_max_cuts", -1),
        ("spo_continuations", 0),
        ("spo_prob_mask", "yes"),
    ]:
        with pytest.raises(ConfigError, match=f"algorithm.{field}"):
            validate_algorithm_config(AlgorithmConfig(advantage="spo", **{field: value}))


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["rollout.samples_per_prompt=1"], "rollout.samples_per_prompt"),
        (["rollout.temperature=0"], "rollout.temperature"),
        (["rollout.generate_ahead=true"], "rollout.generate_ahead"),
        (["algorithm.kl_coef=0.1", "algorithm.kl_placement=reward"], "algorithm.kl_placement"),
        (["algorithm.filters=[cppo]"], "cppo"),
        (["algorithm.spo_tree=[6,1]"], "algorithm.spo_tree"),
        (["algorithm.spo_tree=[2,2]", "algorithm.filters=[dynamic_sampling]"], "algorithm.filters"),
        (["algorithm.spo_tree_segment_tokens=0"], "algorithm.spo_tree_segment_tokens"),
        (["preset=grpo", "algorithm.spo_tree=[2,2]"], "algorithm.spo_tree"),
        (
            ["task.name=arithmetic", "env.name=calculator", "env.params={max_tool_calls: 2}"],
            "env.name",
        ),
    ],
)
def test_combinations_that_cannot_work_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["preset=spo", *overrides])


def test_the_tree_preset_loads_with_the_papers_values():
    alg = load_config(None, ["preset=spo_tree"]).algorithm
    assert (alg.advantage, alg.spo_tree, alg.spo_tree_segment_tokens, alg.spo_prob_mask) == (
        "spo",
        (6, 6, 6),
        30,
        True,
    )


def test_the_preset_loads_with_the_papers_values():
    config = load_config(None, ["preset=spo"])
    alg = config.algorithm
    assert (alg.advantage, alg.spo_threshold, alg.spo_interval, alg.spo_continuations) == ("spo", 0.9, 5, 9)
    assert alg.spo_prob_mask and alg.spo_max_cuts is None and alg.aggregation == "token-mean"
    assert config.rollout.samples_per_prompt == 8 and config.rollout.temperature == 0.6
