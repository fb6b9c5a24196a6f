"""Advantage estimators: rewards (and critic values) in, per-token advantages out.

Every estimator has the same keyword-only signature, so the training loop never special-cases one::

    fn(*, rewards, mask, group_ids, values=None, <hyperparameters>) -> AdvantageOutput

* ``rewards``   [B] one scalar per completion, or [B, T] one per token (floating).
* ``mask``      [B, T] response mask (bool, or floating 0/1).
* ``group_ids`` [B] integer; the samples of one prompt share an id (any values, any order).
* ``values``    [B, T] critic values, or None; required by ``gae`` and ``vapo``.

The hyperparameters are fields of :class:`~rlvr.algorithms.config.AlgorithmConfig` under the same
names, with the same defaults. Conventions shared by all estimators:

* Sequence-level estimators (grpo, dr_grpo, rloo, kimi) given [B, T] rewards use the masked token
  sum of each row as its outcome. Token-level ones (reinforce_pp, gae, vapo) given [B] rewards put
  each reward on the row's last response token (:func:`outcome_to_token_rewards`).
* Whatever ``rewards`` and ``values`` hold at masked positions is ignored.
* The arithmetic runs in float64; ``advantages`` [B, T] comes back in the inputs' dtype, detached,
  and exactly zero on padding. ``returns`` (the critic's value targets) is set by gae and vapo only.
* Group statistics are local: all samples of a group must be on the same rank. Statistics over the
  whole batch (reinforce_pp, :func:`whiten_advantages`, metrics) go through
  :func:`rlvr.distributed.all_reduce_sum`, so they are exact on N ranks.
"""

from __future__ import annotations

import torch

from rlvr.algorithms.checks import check_group_ids, check_mask, check_same_shape, check_tensor
from rlvr.algorithms.outputs import AdvantageOutput
from rlvr.distributed import all_reduce_max, all_reduce_sum
from rlvr.errors import ConfigError, ShapeError
from rlvr.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")

ADVANTAGE_TENSOR_ARGS: tuple[str, ...] = (
    "rewards",
    "mask",
    "group_ids",
    "values",
    "reward_components",
    "reward_weights",
    "sampling_logprobs",
    "cut_values",
)
"""The tensor arguments of the estimators; every other keyword is a hyperparameter. The first four
are every estimator's; ``reward_components`` [B, K] and ``reward_weights`` [K] are passed only to
an estimator marked ``takes_reward_components`` (GDPO, :mod:`rlvr.algorithms.group_estimators`);
``sampling_logprobs`` and ``cut_values`` [B, T] only to one marked ``takes_cut_values`` (SPO,
:mod:`rlvr.algorithms.spo`)."""

ESTIMATORS_NEEDING_VALUES: set[str] = {"gae", "vapo"}
"""Estimators that need a critic. A user who registers a critic-based estimator adds its name."""

WHITEN_EPS: float = 1e-8
"""Epsilon added to the batch standard deviation by reinforce_pp and whiten_advantages."""

F64 = torch.float64


# --- input checks and conversions ---------------------------------------------------------------


def _bool_mask(mask: object, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """The response mask checked (2-D, bool or floating 0/1) and returned as bool."""
    mask = check_tensor(check_mask(mask, "mask", shape), "mask", 2)
    if mask.dtype == torch.bool:
        return mask
    if not ((mask == 0) | (mask == 1)).all():
        raise ShapeError("mask must hold only 0 and 1 (a response mask); got other values")
    return mask != 0


def _floating(x: torch.Tensor, name: str) -> torch.Tensor:
    if not x.dtype.is_floating_point:
        raise ShapeError(f"{name} must be a floating tensor, got dtype {x.dtype}")
    return x


def _prepare(
    estimator: str,
    rewards: object,
    mask: object,
    group_ids: object,
    values: object | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.dtype]:
    """Check the inputs; return float64 rewards and values (zero on padding), bool mask, ids, dtype."""
    mask = _bool_mask(mask)
    batch, width = mask.shape
    rewards = _floating(check_tensor(rewards, "rewards", (1, 2)), "rewards")
    expected = (batch,) if rewards.dim() == 1 else (batch, width)
    if tuple(rewards.shape) != expected:
        raise ShapeError(
            f"rewards has shape {tuple(rewards.shape)} but mask has shape {(batch, width)}; rewards must "
            f"be [B] = {(batch,)} (one per completion) or [B, T] = {(batch, width)} (one per token)"
        )
    group_ids = check_group_ids(group_ids, batch).to(mask.device)
    out_dtype = rewards.dtype
    if values is None:
        if estimator in ESTIMATORS_NEEDING_VALUES:
            raise ConfigError(
                f"advantage estimator '{estimator}' needs critic values [B, T] but got values=None; "
                "enable the critic or choose a critic-free estimator (grpo, dr_grpo, rloo, reinforce_pp, kimi)"
            )
    else:
        values = _floating(check_tensor(values, "values", 2), "values")
        check_same_shape("mask", mask, values=values)
        out_dtype = torch.promote_types(rewards.dtype, values.dtype)
        values = torch.where(mask, values.detach().to(F64), 0.0)
    rewards = rewards.detach().to(F64)
    if rewards.dim() == 2:
        rewards = torch.where(mask, rewards, 0.0)
    return rewards, mask, group_ids, values, out_dtype


def _check_range(name: str, value: float, low: float, high: float = float("inf")) -> None:
    if not low <= value <= high:
        bounds = f">= {low}" if high == float("inf") else f"in [{low}, {high}]"
        raise ConfigError(f"algorithm.{name} must be {bounds}, got {value}")


# --- reward layouts -------------------------------------------------------------------------------


def outcome_to_token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-completion rewards [B] placed on the last response token of each row -> [B, T].

    A row without response tokens gets no reward (there is no token to carry it).

    >>> outcome_to_token_rewards(torch.tensor([2.0, 5.0]), torch.tensor([[1, 1, 0], [1, 0, 1]]).bool())
    tensor([[0., 2., 0.],
            [0., 0., 5.]])
    """
    mask = _bool_mask(mask)
    rewards = _floating(check_tensor(rewards, "rewards", 1), "rewards")
    if rewards.shape[0] != mask.shape[0]:
        raise ShapeError(f"rewards has {rewards.shape[0]} entries but mask has {mask.shape[0]} rows")
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=1)  # [B], -1 for an empty row
    out = torch.zeros(mask.shape, dtype=rewards.dtype, device=mask.device)
    out.scatter_(1, last.clamp(min=0).unsqueeze(1), rewards.unsqueeze(1))
    return torch.where(mask, out, 0.0)


def sequence_outcomes(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One outcome per completion [B]: ``rewards`` itself if [B], its masked token sum if [B, T]."""
    if rewards.dim() == 1:
        return rewards
    return torch.where(mask, rewards, 0.0).sum(dim=1)


def _token_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return outcome_to_token_rewards(rewards, mask) if rewards.dim() == 1 else rewards


# --- group statistics -----------------------------------------------------------------------------


def _group_centered(outcomes: torch.Tensor, group_ids: torch.Tensor):
    """Outcomes minus their group mean, float64 [B], and the group layout.

    The mean is taken of ``r - min_g`` and added back implicitly, so a group of equal rewards
    (0.1, 0.1, 0.1) centers to exactly 0: ``r - min_g`` is exactly 0 there, whereas the plain
    float64 mean (0.1 + 0.1 + 0.1) / 3 = 0.10000000000000002 is not exactly 0.1.

    Returns (centered [B], inverse [B] group index of each sample, counts [G], all_equal [G]).
    """
    _, inverse = torch.unique(group_ids, return_inverse=True)
    num_groups = int(inverse.max().item()) + 1 if inverse.numel() else 0
    empty = torch.zeros(num_groups, dtype=F64, device=outcomes.device)
    low = empty.scatter_reduce(0, inverse, outcomes, reduce="amin", include_self=False)
    high = empty.scatter_reduce(0, inverse, outcomes, reduce="amax", include_self=False)
    counts = empty.index_add(0, inverse, torch.ones_like(outcomes))
    shifted = outcomes - low[inverse]
    shifted_mean = empty.index_add(0, inverse, shifted) / counts
    return shifted - shifted_mean[inverse], inverse, counts, low == high


def _broadcast(per_sequence: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] -> [B, T] on the response tokens, zero on padding."""
    return torch.where(mask, per_sequence.unsqueeze(1), 0.0)


def _output(
    advantages: torch.Tensor,
    mask: torch.Tensor,
    dtype: torch.dtype,
    returns: torch.Tensor | None = None,
    **extra: float,
) -> AdvantageOutput:
    """Cast the float64 results to ``dtype``; metrics over the response tokens of the global batch."""
    x = torch.where(mask, advantages, 0.0)
    total, total_sq, count = all_reduce_sum(
        torch.stack([x.sum(), (x * x).sum(), mask.sum().to(F64)])
    ).tolist()
    lowest = torch.full((1,), -float("inf"), dtype=F64, device=x.device)
    extremes = [
        torch.cat([torch.where(mask, sign * advantages, lowest).flatten(), lowest]).amax() for sign in (1, -1)
    ]
    high, neg_low = all_reduce_max(torch.stack(extremes)).tolist()
    mean = total / max(count, 1.0)
    metrics = {
        "advantage/mean": mean,
        "advantage/std": max(total_sq / max(count, 1.0) - mean * mean, 0.0) ** 0.5,
        "advantage/min": -neg_low if count else 0.0,
        "advantage/max": high if count else 0.0,
        **extra,
    }
    return AdvantageOutput(advantages.to(dtype), None if returns is None else returns.to(dtype), metrics)


def _group_metrics(all_equal: torch.Tensor) -> dict[str, float]:
    """Number of groups and of groups whose rewards are all equal (zero advantage), all ranks."""
    counts = torch.stack([torch.ones_like(all_equal, dtype=F64).sum(), all_equal.sum().to(F64)])
    groups, zero_std = all_reduce_sum(counts).tolist()
    return {"advantage/groups": groups, "advantage/zero_std_groups": zero_std}


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of ``x`` over the response tokens of the global batch."""
    total, count = all_reduce_sum(torch.stack([torch.where(mask, x, 0.0).sum(), mask.sum().to(F64)])).tolist()
    return total / max(count, 1.0)


# --- group-relative estimators --------------------------------------------------------------------


@ADVANTAGES.register("grpo")
def grpo(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    std_eps: float = 1e-6,
    std_unbiased: bool = True,
) -> AdvantageOutput:
    """GRPO outcome supervision (DeepSeekMath, arXiv 2402.03300 sec. 4.1.2; DeepSeek-R1 eq. 3)::

        A_i,t = (r_i - mean_g(r)) / (std_g(r) + std_eps)      for every response token t of i

    ``std_unbiased`` selects the n - 1 (True) or n (False) standard deviation. Statistics are
    taken in float64 and centered exactly: a group of equal rewards, including a group of one
    completion, gets advantage exactly 0 (the paper leaves groups of one undefined).
    ``advantage/zero_std_groups`` counts the groups whose rewards are all equal (singletons too).

    Example, one group of rewards (1, 0, 0, 1): mean 0.5, unbiased std sqrt(4 * 0.25 / 3) = 0.57735,
    so A = (+0.8660, -0.8660, -0.8660, +0.8660); with the biased std 0.5, A = (+1, -1, -1, +1).
    """
    _check_range("std_eps", std_eps, 0.0)
    rewards, mask, group_ids, _, dtype = _prepare("grpo", rewards, mask, group_ids, values)
    centered, inverse, counts, all_equal = _group_centered(sequence_outcomes(rewards, mask), group_ids)
    dof = (counts - 1.0).clamp(min=1.0) if std_unbiased else counts
    std = (torch.zeros_like(counts).index_add(0, inverse, centered * centered) / dof).sqrt()
    denominator = std[inverse] + std_eps
    per_sequence = torch.where(denominator > 0, centered / denominator, 0.0)
    return _output(_broadcast(per_sequence, mask), mask, dtype, **_group_metrics(all_equal))


@ADVANTAGES.register("dr_grpo")
def dr_grpo(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Dr. GRPO (Liu et al., arXiv 2503.20783 sec. 3.2): GRPO without the std normalization::

        A_i,t = r_i - mean_g(r)

    The paper's other change, dividing each sequence's token sum by a fixed budget, is the
    ``seq-mean-token-sum-norm`` aggregation, not part of the estimator.

    Example, rewards (1, 0, 0, 1): mean 0.5, A = (+0.5, -0.5, -0.5, +0.5).
    """
    rewards, mask, group_ids, _, dtype = _prepare("dr_grpo", rewards, mask, group_ids, values)
    centered, _, _, all_equal = _group_centered(sequence_outcomes(rewards, mask), group_ids)
    return _output(_broadcast(centered, mask), mask, dtype, **_group_metrics(all_equal))


@ADVANTAGES.register("rloo")
def rloo(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
) -> AdvantageOutput:
    """REINFORCE leave-one-out (Ahmadian et al., arXiv 2402.14740 sec. 3; Kool et al. 2019)::

        A_i,t = r_i - (1 / (n - 1)) * sum_{j != i in g} r_j  =  n / (n - 1) * (r_i - mean_g(r))

    computed as the right-hand form from the exactly centered rewards. A group of one has no
    other sample to compare with: its advantage is 0.

    Example, rewards (1, 0, 0): A = (1 - 0, 0 - 0.5, 0 - 0.5) = (1, -0.5, -0.5).
    """
    rewards, mask, group_ids, _, dtype = _prepare("rloo", rewards, mask, group_ids, values)
    centered, inverse, counts, all_equal = _group_centered(sequence_outcomes(rewards, mask), group_ids)
    n = counts[inverse]
    per_sequence = torch.where(n > 1, centered * n / (n - 1.0).clamp(min=1.0), 0.0)
    return _output(_broadcast(per_sequence, mask), mask, dtype, **_group_metrics(all_equal))


@ADVANTAGES.register("kimi")
def kimi(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Kimi k1.5 (arXiv 2501.12599 sec. 2.3.2): the mean-reward baseline of its surrogate::

        A_i,t = r_i - mean_g(r)        (r-bar = mean of the k samples of the prompt)

    The paper's surrogate (r - r-bar - tau * log(pi / pi_old))^2 keeps its tau term in the ``kimi``
    policy loss (``algorithm.kimi_tau``); this estimator supplies only r - r-bar.

    Example, rewards (1, 0, 0, 1): A = (+0.5, -0.5, -0.5, +0.5).
    """
    rewards, mask, group_ids, _, dtype = _prepare("kimi", rewards, mask, group_ids, values)
    centered, _, _, all_equal = _group_centered(sequence_outcomes(rewards, mask), group_ids)
    return _output(_broadcast(centered, mask), mask, dtype, **_group_metrics(all_equal))


@ADVANTAGES.register("reinforce")
def reinforce(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
) -> AdvantageOutput:
    """Plain REINFORCE (Williams 1992): the outcome itself, with no baseline::

        A_i,t = r_i

    The estimator of RAFT++ and Reinforce-Rej (Xiong et al., arXiv 2504.11343 sec. 2), whose
    filters already choose which samples to learn from: after RAFT++ keeps only correct samples a
    group-relative baseline would make every advantage 0.

    Example, rewards (1, 0, 1): A = (1, 0, 1).
    """
    rewards, mask, group_ids, _, dtype = _prepare("reinforce", rewards, mask, group_ids, values)
    return _output(_broadcast(sequence_outcomes(rewards, mask), mask), mask, dtype)


# --- token-level estimators -----------------------------------------------------------------------


def _gae_scan(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float | torch.Tensor,
) -> torch.Tensor:
    """GAE over the response tokens of each row, float64 [B, T], zero on padding.

    Masked positions are skipped, not treated as the end of the episode: for the response tokens
    t_1 < ... < t_L of a row (gaps allowed, e.g. observation tokens in multi-turn data)::

        delta_j = r_{t_j} + gamma * V_{t_{j+1}} - V_{t_j}      V_{t_{L+1}} = 0 (episode ends)
        A_j     = delta_j + gamma * lam * A_{j+1}             A_{L+1} = 0

    ``lam`` is a float or one lambda per row [B].
    """
    decay = gamma * (lam.to(F64) if isinstance(lam, torch.Tensor) else torch.tensor(lam, dtype=F64))
    decay = decay.to(values.device)
    next_value = torch.zeros(values.shape[0], dtype=F64, device=values.device)
    next_advantage = torch.zeros_like(next_value)
    advantages = torch.zeros_like(values)
    for t in range(values.shape[1] - 1, -1, -1):
        valid = mask[:, t]
        advantage = token_rewards[:, t] + gamma * next_value - values[:, t] + decay * next_advantage
        advantages[:, t] = torch.where(valid, advantage, 0.0)
        next_advantage = torch.where(valid, advantage, next_advantage)
        next_value = torch.where(valid, values[:, t], next_value)
    return advantages


def _whiten(x: torch.Tensor, mask: torch.Tensor, eps: float) -> torch.Tensor:
    """(x - mean) / (std + eps) over the masked entries of the global batch, float64, zero on padding."""
    x = torch.where(mask, x.to(F64), 0.0)
    total, count = all_reduce_sum(torch.stack([x.sum(), mask.sum().to(F64)])).tolist()
    mean = total / max(count, 1.0)
    deviation = torch.where(mask, x - mean, 0.0)
    variance = all_reduce_sum((deviation * deviation).sum()).item() / max(count, 1.0)
    denominator = variance**0.5 + eps
    return deviation / denominator if denominator > 0 else torch.zeros_like(deviation)


def whiten_advantages(
    advantages: torch.Tensor, mask: torch.Tensor, *, eps: float = WHITEN_EPS
) -> torch.Tensor:
    """Whiten advantages [B, T] over all response tokens of the global batch; zero on padding::

        A' = (A - mean) / (std + eps)      mean, std (biased, / N) over the N masked tokens, all ranks

    Token-level weighting: every response token counts once, so a long response weighs more in the
    mean and std than a short one (for GRPO-style advantages, broadcast over the tokens, the batch
    statistics lean toward the long responses' values). Mean and variance are taken in two passes
    (each through ``all_reduce_sum``), in float64. The loop applies this when
    ``algorithm.whiten_advantages`` is true. The result is detached, in the dtype of ``advantages``.

    Example, tokens (1, 1, 0) and one padding entry: mean 2/3, std sqrt(2/9) = 0.4714,
    A' = (0.7071, 0.7071, -1.4142) and 0 on the padding.
    """
    check_tensor(advantages, "advantages", 2)
    _floating(advantages, "advantages")
    mask = _bool_mask(mask, tuple(advantages.shape))
    _check_range("eps", eps, 0.0)
    return _whiten(advantages.detach(), mask, eps).to(advantages.dtype)


@ADVANTAGES.register("reinforce_pp")
def reinforce_pp(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
) -> AdvantageOutput:
    """REINFORCE++ (Hu et al., arXiv 2501.03262, method section: the token return with the KL penalty
    and global advantage normalization; equation numbers differ between the arXiv versions)::

        G_t = sum_{s >= t} gamma^(s - t) r_s            over the response tokens of the row (s - t
                                                        counts response tokens; masked gaps are skipped)
        A_t = (G_t - mean(G)) / (std(G) + 1e-8)         over all response tokens of the global batch

    The token rewards are r_t = outcome on the last token (``[B]`` rewards) or the given [B, T];
    with ``kl_placement = "reward"`` the caller has already added -beta * KL_t to them, so gamma = 1
    gives the paper's r - beta * sum_{s >= t} KL_s. The paper writes mean and std over the batch with
    no epsilon and no Bessel correction; this uses the biased std (divide by the token count) and
    adds ``WHITEN_EPS`` = 1e-8 so a batch of equal returns gives 0, not NaN. Groups are not used.

    Example, gamma = 1, outcomes 1 (2 tokens) and 0 (1 token): G = (1, 1 | 0), mean 2/3,
    std sqrt(2/9) = 0.4714, A = (0.7071, 0.7071 | -1.4142).
    """
    _check_range("gamma", gamma, 0.0, 1.0)
    rewards, mask, _, _, dtype = _prepare("reinforce_pp", rewards, mask, group_ids, values)
    zero_values = torch.zeros(mask.shape, dtype=F64, device=mask.device)
    token_returns = _gae_scan(_token_rewards(rewards, mask), zero_values, mask, gamma, 1.0)
    advantages = _whiten(token_returns, mask, WHITEN_EPS)
    return _output(advantages, mask, dtype, **{"return/mean": _masked_mean(token_returns, mask)})


@ADVANTAGES.register("gae")
def gae(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 1.0,
) -> AdvantageOutput:
    """Generalized advantage estimation (Schulman et al., arXiv 1506.02438 eq. 16) with a critic::

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = sum_{l >= 0} (gamma * lam)^l delta_{t+l}  =  delta_t + gamma * lam * A_{t+1}
        returns = A_t + V_t                                  (the critic's value targets)

    The value after the last response token is 0 (the episode ends). ``t + 1`` is the next response
    token: masked positions inside a response are skipped, the chain is not cut there (multi-turn
    observation tokens). With gamma = lam = 1 (Open-Reasoner-Zero, arXiv 2503.24290)
    A_t = (sum of the rewards from t on) - V_t, the Monte-Carlo return minus the value.

    Example, r = (0, 0, 1), V = (0.5, 0.6, 0.7), gamma = 0.9, lam = 0.8:
    delta = (0.9*0.6 - 0.5, 0.9*0.7 - 0.6, 1 - 0.7) = (0.04, 0.03, 0.3);
    A = (0.04 + 0.72*0.246, 0.03 + 0.72*0.3, 0.3) = (0.21712, 0.246, 0.3);
    returns = (0.71712, 0.846, 1.0).
    """
    _check_range("gamma", gamma, 0.0, 1.0)
    _check_range("lam", lam, 0.0, 1.0)
    rewards, mask, _, values, dtype = _prepare("gae", rewards, mask, group_ids, values)
    advantages = _gae_scan(_token_rewards(rewards, mask), values, mask, gamma, lam)
    returns = torch.where(mask, advantages + values, 0.0)
    return _output(advantages, mask, dtype, returns, **{"returns/mean": _masked_mean(returns, mask)})


def vapo_policy_lambda(lengths: torch.Tensor, lam_alpha: float) -> torch.Tensor:
    """VAPO's length-adaptive lambda (sec. 3.2), clamped to [0, 1]::

        lambda_policy = 1 - 1 / (lam_alpha * l)         l = number of response tokens

    With lam_alpha = 0.05: l = 100 -> 0.8, l = 40 -> 0.5, l = 20 -> 0. Responses shorter than
    1 / lam_alpha tokens would get a negative lambda; it is clamped to 0 (one-step TD).
    """
    scaled = lam_alpha * lengths.to(F64)
    return torch.where(scaled > 0, 1.0 - 1.0 / scaled.clamp(min=1e-300), 0.0).clamp(0.0, 1.0)


@ADVANTAGES.register("vapo")
def vapo(
    *,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    values: torch.Tensor | None = None,
    gamma: float = 1.0,
    lam_critic: float = 1.0,
    lam_alpha: float = 0.05,
) -> AdvantageOutput:
    """VAPO (Yue et al., arXiv 2504.05118): decoupled GAE (sec. 3.1) + length-adaptive GAE (sec. 3.2)::

        returns    = GAE(gamma, lam_critic) + V             value targets; the paper uses lam_critic = 1.0
        advantages = GAE(gamma, lambda_policy(l))           per row, l = its number of response tokens
        lambda_policy(l) = clamp(1 - 1 / (lam_alpha * l), 0, 1)      lam_alpha = 0.05 in the paper

    The critic gets the unbiased lam_critic = 1 targets; the policy gets a lambda that grows with the
    response length so that the sum of GAE weights 1 / (1 - lambda) = lam_alpha * l. Responses shorter
    than 1 / lam_alpha = 20 tokens would get lambda <= 0: clamped to 0 (advantage = TD error).
    Masked positions inside a response are skipped as in :func:`gae`.

    Example, lam_alpha = 0.5, r = (0, 1), V = (0.5, 0.6), gamma = 1: l = 2 gives lambda_policy
    = 1 - 1 / 1 = 0, so A = delta = (0.6 - 0.5, 1 - 0.6) = (0.1, 0.4); with lam_critic = 1,
    returns = (1, 1).
    """
    _check_range("gamma", gamma, 0.0, 1.0)
    _check_range("lam_critic", lam_critic, 0.0, 1.0)
    if not lam_alpha > 0:
        raise ConfigError(f"algorithm.lam_alpha must be > 0, got {lam_alpha}")
    rewards, mask, _, values, dtype = _prepare("vapo", rewards, mask, group_ids, values)
    token_rewards = _token_rewards(rewards, mask)
    returns = torch.where(mask, _gae_scan(token_rewards, values, mask, gamma, lam_critic) + values, 0.0)
    lam_policy = vapo_policy_lambda(mask.sum(dim=1), lam_alpha)  # [B]
    advantages = _gae_scan(token_rewards, values, mask, gamma, lam_policy)
    has_tokens = mask.any(dim=1)
    lam_sum, rows = all_reduce_sum(
        torch.stack([lam_policy[has_tokens].sum(), has_tokens.sum().to(F64)])
    ).tolist()
    extra = {"returns/mean": _masked_mean(returns, mask), "vapo/lam_policy_mean": lam_sum / max(rows, 1.0)}
    return _output(advantages, mask, dtype, returns, **extra)


# REINFORCE++-baseline, MaxRL, GDPO and pass@k live in their own module and register on import;
# so does SPO (segment advantages from Monte Carlo values).
from rlvr.algorithms import group_estimators as _group_estimators  # noqa: E402,F401
from rlvr.algorithms import spo as _spo  # noqa: E402,F401
