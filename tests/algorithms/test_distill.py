"""The on-policy distillation signal (rlvr.algorithms.distill): hand-checked float64 values, padding,
and every policy loss and aggregation of the core on its token-level advantages."""

import math

import pytest
import torch

from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.distill import distillation_advantages, distillation_metrics, teacher_log_ratio
from rlvr.algorithms.losses import POLICY_LOSS_TENSOR_ARGS, POLICY_LOSSES
from rlvr.config import load_config
from rlvr.errors import ConfigError

NAN, INF = float("nan"), float("inf")
F64 = torch.float64

# Two rows: 3 response tokens, then 1 token and two padding positions holding nan / -inf.
TEACHER = torch.tensor([[-0.5, -2.0, -1.25], [-3.0, NAN, -INF]], dtype=F64)
STUDENT = torch.tensor([[-1.0, -1.5, -1.25], [-0.75, -INF, NAN]], dtype=F64)
MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_the_log_ratio_by_hand_in_float64():
    # r = log pi_teacher - log pi_student: (-0.5 + 1.0, -2.0 + 1.5, -1.25 + 1.25) and (-3.0 + 0.75).
    r = teacher_log_ratio(teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK)
    expected = torch.tensor([[0.5, -0.5, 0.0], [-2.25, 0.0, 0.0]], dtype=F64)
    assert r.dtype == F64 and torch.equal(r, expected)


def test_the_advantage_adds_the_weighted_task_advantage_and_ignores_padding():
    task = torch.tensor([[1.0, 1.0, 1.0], [-2.0, NAN, INF]], dtype=F64)
    a = distillation_advantages(
        teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK, task_advantages=task, reward_weight=0.25
    )
    # 0.5 + 0.25, -0.5 + 0.25, 0 + 0.25; -2.25 + 0.25 * -2 = -2.75; padding 0.
    expected = torch.tensor([[0.75, -0.25, 0.25], [-2.75, 0.0, 0.0]], dtype=F64)
    assert torch.equal(a, expected)
    alone = distillation_advantages(
        teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK, task_advantages=task
    )
    assert torch.equal(alone, teacher_log_ratio(teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK))


def test_padding_values_never_matter():
    other_student = torch.where(MASK, STUDENT, torch.full_like(STUDENT, 123.0))
    other_teacher = torch.where(MASK, TEACHER, torch.full_like(TEACHER, -INF))
    a = teacher_log_ratio(teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK)
    b = teacher_log_ratio(teacher_logprobs=other_teacher, logprobs=other_student, mask=MASK)
    assert torch.equal(a, b) and torch.isfinite(a).all()


def test_equal_log_probabilities_give_exactly_zero():
    lp = torch.randn(4, 7, dtype=torch.float32)
    mask = torch.rand(4, 7) > 0.3
    assert torch.count_nonzero(teacher_log_ratio(teacher_logprobs=lp, logprobs=lp, mask=mask)) == 0


def test_the_metrics_are_sums_over_response_tokens():
    sums = distillation_metrics(teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK)
    # reverse KL sum = -(0.5 - 0.5 + 0 - 2.25) = 2.25; teacher sum = -0.5 - 2 - 1.25 - 3 = -6.75; 4 tokens
    assert sums.tolist() == [2.25, -6.75, 4.0]


def test_a_negative_reward_weight_or_a_missing_task_advantage_is_refused():
    with pytest.raises(ConfigError, match="reward_weight"):
        distillation_advantages(teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK, reward_weight=-1.0)
    with pytest.raises(ConfigError, match="task_advantages=None"):
        distillation_advantages(teacher_logprobs=TEACHER, logprobs=STUDENT, mask=MASK, reward_weight=0.5)


@pytest.mark.parametrize("loss_name", POLICY_LOSSES.names())
@pytest.mark.parametrize(
    "aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
)
def test_every_policy_loss_and_aggregation_trains_on_the_distillation_advantage(loss_name, aggregation):
    torch.manual_seed(0)
    old = -torch.rand(3, 5, dtype=F64) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    teacher = -torch.rand(3, 5, dtype=F64) * 3
    adv = distillation_advantages(teacher_logprobs=teacher, logprobs=old, mask=mask)
    logprobs = old.clone().requires_grad_(True)
    fn = POLICY_LOSSES.get(loss_name)
    config = AlgorithmConfig(aggregation=aggregation, eps_high=0.28)
    kwargs = hyperparameters_for(fn, config, POLICY_LOSS_TENSOR_ARGS)
    kwargs["aggregation"] = aggregation
    if "generator" in kwargs or "generator" in fn.__code__.co_varnames:
        kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    out = fn(logprobs=logprobs, old_logprobs=old, advantages=adv, mask=mask, norm_length=5, **kwargs)
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert torch.isfinite(logprobs.grad).all()
    assert torch.count_nonzero(logprobs.grad[~mask]) == 0
    assert torch.count_nonzero(logprobs.grad[mask]) > 0


# --- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["distill.coef=0"], r"setting 'distill\.coef' must be positive"),
        (["distill.reward_weight=-0.5"], r"setting 'distill\.reward_weight' must be >= 0"),
        (["distill.mode=reward"], r"distill\.mode.*distill\.teacher is None"),
        (["distill.teacher=toy", "distill.mode=forward"], r"distill\.mode"),
        (["distill.teacher=''"], r"distill\.teacher' is empty"),
        (
            ["distill.teacher=toy", "distill.coef=0.5"],
            r"distill\.coef.*not read by distill\.mode 'advantage'",
        ),
        (
            ["distill.teacher=toy", "distill.mode=reward", "distill.reward_weight=1"],
            r"distill\.reward_weight.*not read by distill\.mode 'reward'",
        ),
        (["distill.teacher=toy", "algorithm.filters=[cppo]"], r"cppo.*distill\.mode 'advantage'"),
        (["preset=opd"], r"preset 'opd' distils from a teacher: set distill\.teacher"),
    ],
)
def test_distill_settings_are_checked_at_load(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_the_defaults_distil_nothing_and_one_sample_is_enough_for_the_teacher_alone():
    assert load_config(None, []).distill.teacher is None
    config = load_config(None, ["distill.teacher=toy", "rollout.samples_per_prompt=1"])
    assert config.distill.mode == "advantage" and config.distill.reward_weight == 0
    with pytest.raises(ConfigError, match="samples_per_prompt"):  # the task's grpo advantage is then used
        load_config(None, ["distill.teacher=toy", "distill.reward_weight=1", "rollout.samples_per_prompt=1"])
