"""On-policy distillation: a teacher's per-token log-probabilities as the student's learning signal.

The student samples ``y ~ pi_student``; the teacher scores every sampled token. The per-token signal
is the negative single-sample (k1) estimate of the reverse KL at the sampled token::

    r_t = log pi_teacher(y_t | x, y_<t) - log pi_student_old(y_t | x, y_<t)

E_{y_t ~ pi_student}[-r_t] = KL(pi_student(. | x, y_<t) || pi_teacher(. | x, y_<t)), the reverse KL
that Agarwal et al. 2023 ("On-Policy Distillation of Language Models: Learning from Self-Generated
Mistakes", arXiv 2306.13649, sec. 3: generalized knowledge distillation, GKD, with the student's own
samples and the reverse KL) minimise on sequences the student generated. GKD differentiates the
full-distribution divergence at each position of those samples, holding the samples fixed (it does
not differentiate through the sampling); here the divergence at each position is estimated from the
one sampled token, so the signal needs the teacher's log-probability of that token only and plugs
into any policy-gradient loss as an advantage (Qwen3 Technical Report, arXiv 2505.09388, sec. 4.5,
uses on-policy distillation from a teacher for its small models).

Two uses (``distill.mode``, applied by the training loop):

* ``advantage``: ``A_t = r_t + reward_weight * A_task_t`` (:func:`distillation_advantages`). Each
  token is credited with its own r_t only, with no discounted sum of later tokens' signals: a
  per-position objective as in GKD, whose loss at position t does not depend on later positions.
  A_task is the configured estimator's advantage of the task reward.
* ``reward``: ``-r_t`` is the KL folded into the token rewards with weight ``distill.coef``
  (:func:`rlvr.algorithms.kl.fold_kl_into_rewards`), before the configured estimator; sequence-level
  estimators then see the outcome reward plus ``coef * sum_t r_t``, token-level ones each r_t.

A teacher equal to the student gives r_t = 0 on every token exactly (the two log-probabilities
come from the same forward pass of the same weights).
"""

from __future__ import annotations

import torch

from rlvr.algorithms.checks import check_mask, check_same_shape, check_tensor
from rlvr.errors import ConfigError, ShapeError

DISTILL_MODES: tuple[str, ...] = ("advantage", "reward")

F64 = torch.float64


def _floating(x: torch.Tensor, name: str) -> torch.Tensor:
    if not x.dtype.is_floating_point:
        raise ShapeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return x


def teacher_log_ratio(
    *, teacher_logprobs: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The per-token distillation signal r_t = log pi_teacher(y_t) - log pi_student(y_t), [B, T].

    ``teacher_logprobs`` and ``logprobs`` [B, T] are the log-probabilities of the sampled tokens under
    the teacher and under the student that sampled them (the old policy); ``mask`` [B, T] the response
    tokens. Computed in float64 and returned in the inputs' dtype, detached, exactly zero on padding:
    whatever padding holds (even inf or nan) is replaced before any arithmetic.

    Worked example: log pi_teacher = (-1, -2), log pi_student = (-1.5, -1), the second token padding
    in row 2::

        r = (-1 - -1.5, -2 - -1) = (0.5, -1.0)

    >>> teacher_log_ratio(teacher_logprobs=torch.tensor([[-1.0, -2.0], [-1.0, float("nan")]]),
    ...                   logprobs=torch.tensor([[-1.5, -1.0], [-3.0, -1.0]]),
    ...                   mask=torch.tensor([[True, True], [True, False]]))
    tensor([[ 0.5000, -1.0000],
            [ 2.0000,  0.0000]])
    """
    check_tensor(logprobs, "logprobs", 2)
    check_same_shape("logprobs", logprobs, teacher_logprobs=teacher_logprobs)
    valid = check_mask(mask, "mask", tuple(logprobs.shape)).bool()
    _floating(logprobs, "logprobs")
    _floating(teacher_logprobs, "teacher_logprobs")
    dtype = torch.promote_types(logprobs.dtype, teacher_logprobs.dtype)
    zero = torch.zeros((), dtype=F64, device=logprobs.device)
    teacher = torch.where(valid, teacher_logprobs.detach().to(F64), zero)
    student = torch.where(valid, logprobs.detach().to(F64), zero)
    return torch.where(valid, teacher - student, zero).to(dtype)


def distillation_advantages(
    *,
    teacher_logprobs: torch.Tensor,
    logprobs: torch.Tensor,
    mask: torch.Tensor,
    task_advantages: torch.Tensor | None = None,
    reward_weight: float = 0.0,
) -> torch.Tensor:
    """Per-token advantages of on-policy distillation (``distill.mode=advantage``), [B, T]::

        A_t = (log pi_teacher(y_t) - log pi_student(y_t)) + reward_weight * A_task_t

    The first term is :func:`teacher_log_ratio` (arXiv 2306.13649: reverse KL on the student's own
    samples, here its single-sample estimate at the sampled token), undiscounted and credited to its
    own token only. ``task_advantages`` [B, T] is the configured estimator's advantage of the task
    reward; it is read only when ``reward_weight > 0`` (then it is required). Padding is exactly zero
    and never read.

    Worked example, one row of two response tokens and one padding position, r = (0.5, -1),
    A_task = (2, 2, nan), reward_weight = 0.1::

        A = (0.5 + 0.2, -1 + 0.2, 0) = (0.7, -0.8, 0)
    """
    if (
        isinstance(reward_weight, bool)
        or not isinstance(reward_weight, (int, float))
        or not reward_weight >= 0
    ):
        raise ConfigError(f"distill.reward_weight must be a non-negative number, got {reward_weight!r}")
    signal = teacher_log_ratio(teacher_logprobs=teacher_logprobs, logprobs=logprobs, mask=mask)
    if reward_weight == 0:
        return signal
    if task_advantages is None:
        raise ConfigError("distill.reward_weight > 0 needs the task's advantages; got task_advantages=None")
    check_same_shape("logprobs", logprobs, task_advantages=task_advantages)
    _floating(task_advantages, "task_advantages")
    valid = mask.bool()
    zero = torch.zeros((), dtype=F64, device=signal.device)
    task = torch.where(valid, task_advantages.detach().to(F64), zero)
    total = signal.to(F64) + reward_weight * task
    dtype = torch.promote_types(signal.dtype, task_advantages.dtype)
    return torch.where(valid, total, zero).to(dtype)


def distillation_metrics(
    *, teacher_logprobs: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """This rank's sums over response tokens, float64 [3]: (sum of log pi_student - log pi_teacher,
    sum of log pi_teacher, number of tokens). The loop all-reduces them and divides by the count:
    ``distill/reverse_kl`` (the k1 estimate of KL(pi_student || pi_teacher) per token) and
    ``distill/teacher_logprob``."""
    signal = teacher_log_ratio(teacher_logprobs=teacher_logprobs, logprobs=logprobs, mask=mask)
    valid = mask.bool()
    teacher = torch.where(
        valid, teacher_logprobs.detach().to(F64), torch.zeros((), dtype=F64, device=valid.device)
    )
    return torch.stack([-signal.to(F64).sum(), teacher.sum(), valid.sum().to(F64)])


def check_distill_mode(mode: str) -> None:
    if mode not in DISTILL_MODES:
        raise ConfigError(f"setting 'distill.mode' must be one of {', '.join(DISTILL_MODES)}, got {mode!r}")
