"""The typed settings of the algorithm core.

One flat dataclass: each field is a hyperparameter of one or more registered functions, under
the same name as the function's keyword argument. The loop passes a function exactly the fields
its signature names (:func:`hyperparameters_for`), and :func:`validate_algorithm_config` checks at
load time that the chosen names exist and that each function's hyperparameters are fields here, so
no setting is silently ignored and no function silently falls back to a default.

Surrogate, aggregation, estimator, KL placement and filters are independent choices; a preset
(:mod:`rlvr.algorithms.presets`) fixes a combination.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from rlvr.errors import ConfigError

Aggregation = Literal[
    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm", "token-sum"
]


@dataclass(frozen=True)
class AlgorithmConfig:
    # --- advantage estimator -------------------------------------------------------------
    advantage: str = "grpo"
    """Advantage estimator: grpo | dr_grpo | rloo | reinforce | reinforce_pp | reinforce_pp_baseline |
    gae | vapo | kimi | maxrl | gdpo | passk | pkpo | spo."""
    std_eps: float = 1e-6
    """grpo: epsilon added to the group standard deviation, (r - mean) / (std + std_eps)."""
    std_unbiased: bool = True
    """grpo: Bessel-corrected (n - 1) group standard deviation; False uses the biased (n) one."""
    whiten_advantages: bool = False
    """Whiten the advantages over all response tokens of the global batch (masked)."""
    gamma: float = 1.0
    """Discount per token (reinforce_pp, gae, vapo)."""
    lam: float = 1.0
    """GAE lambda (gae). Open-Reasoner-Zero uses gamma = lam = 1."""
    lam_critic: float = 1.0
    """vapo: lambda of the critic's value targets (VAPO sec. 3.2: 1.0, unbiased)."""
    lam_alpha: float = 0.05
    """vapo: length-adaptive lambda_policy = 1 - 1 / (lam_alpha * length) (VAPO eq. 8)."""
    passk_k: int = 4
    """passk, pkpo: the k of the pass@k the advantages optimise (1 <= k). passk: a group of n < k
    samples uses k = n; pkpo: k must not exceed the group size (rollout.samples_per_prompt)."""
    spo_threshold: float = 0.9
    """spo: rho, a response token sampled with probability below it is a cutpoint (SPO-chain, arXiv
    2505.23564); with spo_prob_mask only these tokens are trained. In (0, 1]."""
    spo_interval: int = 5
    """spo: a new segment starts at every spo_interval-th cutpoint (the paper's int; 5 in its main
    SPO-chain runs), so each segment holds that many cutpoints."""
    spo_max_cuts: int | None = None
    """spo: at most this many segment starts (Monte Carlo value estimates) per completion, the
    first ones; None: no cap (the paper's). Bounds the extra rollouts with spo_continuations."""
    spo_continuations: int = 9
    """spo: K, the completions sampled from each cut point's prefix; V(cut) is their mean reward
    (the paper's SPO-chain runs use 9). Each step samples K x (cut points) extra completions."""
    spo_prob_mask: bool = True
    """spo: the paper's probability mask: only the cutpoint tokens (probability < spo_threshold)
    carry their segment's advantage and enter the policy loss; false trains every token."""
    spo_tree: tuple[int, ...] = ()
    """spo: SPO-tree's branch factors per level (the paper's 6-6-6 is [6, 6, 6]): each prompt's
    completions are sampled as a tree of spo_tree_segment_tokens-token segments and each segment's
    advantage is V(node) - V(parent) (rlvr.training.spo_tree). Empty: SPO-chain."""
    spo_tree_segment_tokens: int = 30
    """spo with spo_tree: M, the tokens of a segment on every level but the last (which runs to
    the end of the completion); 30 in the paper's 6-6-6 short-CoT runs."""

    # --- policy loss ---------------------------------------------------------------------
    policy_loss: str = "ppo_clip"
    """Surrogate: ppo_clip | gspo | cispo | kimi | clip_cov | kl_cov | dppo_tv | dppo_kl | sapo | gmpo |
    vespo | luspo."""
    aggregation: Aggregation = "seq-mean-token-mean"
    """How per-token losses become one number (see docs/algorithms.md, 'Aggregation')."""
    loss_norm_length: int | None = None
    """seq-mean-token-sum-norm: the constant length each sequence's token sum is divided by
    (Dr. GRPO: the generation budget). None uses the rollout's max_new_tokens."""
    eps_low: float = 0.2
    """Lower clip range: the ratio is clipped at 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip range: the ratio is clipped at 1 + eps_high (DAPO clip-higher: 0.28)."""
    clip_ratio_c: float | None = None
    """Dual-clip bound for negative advantages (Ye et al. 2020; e.g. 3.0). None disables it."""
    kimi_tau: float = 0.1
    """kimi: the tau of Kimi k1.5's mirror-descent objective (regularisation toward the old policy)."""
    clip_cov_ratio: float = 2e-4
    """clip_cov: fraction of tokens whose gradient is detached."""
    clip_cov_lb: float = 1.0
    """clip_cov: lower bound of the covariance window candidates are drawn from."""
    clip_cov_ub: float = 5.0
    """clip_cov: upper bound of the covariance window candidates are drawn from."""
    kl_cov_ratio: float = 2e-3
    """kl_cov: fraction of tokens (largest covariance) that get the KL penalty."""
    kl_cov_coef: float = 1.0
    """kl_cov: coefficient of that penalty."""
    dppo_delta_low: float = 0.2
    """dppo_tv / dppo_kl: divergence threshold for tokens with A < 0 (their probability falling)."""
    dppo_delta_high: float = 0.2
    """dppo_tv / dppo_kl: divergence threshold for tokens with A > 0 (their probability rising)."""
    dppo_ratio_cap: float = 20.0
    """dppo_tv / dppo_kl: the stop-gradient importance weight is truncated at this value."""
    sapo_tau_pos: float = 1.0
    """sapo: temperature of the soft gate for A > 0."""
    sapo_tau_neg: float = 1.05
    """sapo: temperature of the soft gate for A <= 0."""
    gmpo_eps_low: float = 0.4
    """gmpo: token log-ratios are clipped at -gmpo_eps_low (ratio e^-0.4 = 0.670)."""
    gmpo_eps_high: float = 0.4
    """gmpo: token log-ratios are clipped at +gmpo_eps_high (ratio e^0.4 = 1.492)."""
    vespo_c1_pos: float = 2.0
    """vespo: power c1 of the kernel phi(W) = W^c1 exp(c2 (1 - W)) for A >= 0 (> 0; VESPO: 2)."""
    vespo_c2_pos: float = 3.0
    """vespo: decay c2 of the kernel for A >= 0 (> 0; VESPO: 3)."""
    vespo_c1_neg: float = 3.0
    """vespo: power c1 of the kernel for A < 0 (> 0; VESPO: 3)."""
    vespo_c2_neg: float = 2.0
    """vespo: decay c2 of the kernel for A < 0 (> 0; VESPO: 2)."""
    luspo_eps_low: float = 2e-3
    """luspo: the sequence ratio is clipped at 1 - luspo_eps_low (in [0, 1]; LUSPO: 2e-3)."""
    luspo_eps_high: float = 2.5e-3
    """luspo: the sequence ratio is clipped at 1 + luspo_eps_high (>= 0; LUSPO: 2.5e-3)."""

    # --- rollout/trainer mismatch (rlvr.algorithms.mismatch; all off by default) ----------
    mismatch_is: Literal["none", "token", "sequence", "geometric"] = "none"
    """Truncated importance weight min(pi_old / pi_rollout, mismatch_is_cap) on each token's loss:
    per token (TIS), per sequence from the product of its ratios, or from their geometric mean."""
    mismatch_is_cap: float = 2.0
    """The truncation C of mismatch_is (>= 1)."""
    mismatch_mask: Literal["none", "token", "sequence", "geometric"] = "none"
    """Masked IS: drop tokens (token: IcePop) or whole sequences (product or geometric mean of the
    ratios) whose pi_old / pi_rollout ratio lies outside [mismatch_mask_low, mismatch_mask_high]."""
    mismatch_mask_low: float = 0.5
    """Lower bound of the mismatch_mask band, in [0, 1]."""
    mismatch_mask_high: float = 2.0
    """Upper bound of the mismatch_mask band, >= 1."""
    mismatch_opsm_delta: float | None = None
    """DeepSeek-V3.2's off-policy sequence mask: drop sequences with A < 0 whose mean per-token
    log(pi_rollout / pi_theta) exceeds this delta (>= 0). None disables it."""
    replay_sampling_support: bool = False
    """Under rollout.top_k / rollout.top_p: the rollout records each token's logprob under the
    truncated, renormalised distribution it was drawn from, and the trainer computes the policy's
    logprobs in the importance ratio under the same truncation of its own logits
    (rlvr.algorithms.sampling_support). Off: both are untruncated, a ratio of 1 for tokens drawn
    from another distribution. The KL, entropy and LM terms stay untruncated either way."""

    # --- KL to the reference model -------------------------------------------------------
    kl_coef: float = 0.0
    """beta. 0 disables the KL term and loads no reference model."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3 | abs (Schulman's estimators of KL(pi || pi_ref))."""
    kl_placement: Literal["loss", "reward"] = "loss"
    """'loss': beta * KL added to the loss; 'reward': -beta * KL folded into the token rewards."""
    kl_clamp: float | None = 10.0
    """Clamp of the per-token KL value to [-kl_clamp, kl_clamp]; None disables it."""

    # --- other loss terms ----------------------------------------------------------------
    entropy_coef: float = 0.0
    """Entropy bonus: loss -= entropy_coef * aggregated token entropy."""
    lm_coef: float = 0.0
    """Positive-example LM loss weight (VAPO sec. 3.3: mu = 0.1): NLL on correct completions."""
    value_loss: Literal["clipped", "mse"] = "clipped"
    """Critic loss: PPO's clipped value loss or plain MSE."""
    value_clip: float = 0.2
    """Clipped value loss: values move at most value_clip from the old values."""

    # --- group filters -------------------------------------------------------------------
    filters: tuple[str, ...] = ()
    """Group filters applied in order: dynamic_sampling | cppo | raft_pp | reject."""
    cppo_pruning_rate: float = 0.5
    """cppo: fraction P of each group pruned; the k = max(1, floor(G * (1 - P))) with the
    largest |advantage| are kept (CPPO)."""
    dynamic_sampling_criterion: Literal["reward", "correct"] = "reward"
    """dynamic_sampling: drop a group when its rewards are all equal ('reward'), or when its
    completions are all correct or all wrong ('correct', DAPO eq. 11)."""

    # --- prompt sampler ------------------------------------------------------------------
    sampler: Literal["uniform", "curriculum", "prioritized"] = "uniform"
    """How prompts are drawn (Kimi k1.5 sec. 2.3.4: curriculum and prioritized sampling)."""
    sampler_momentum: float | None = None
    """Running success rate of a prompt: None keeps the mean of all its observed success rates;
    a float m in [0, 1) keeps an exponential moving average s = m * s + (1 - m) * observed."""
    curriculum_start: float = 0.25
    """curriculum: fraction of the prompts (easiest first) available at step 0."""
    curriculum_steps: int = 1000
    """curriculum: steps over which the available fraction grows linearly to 1."""


ALGORITHM_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(AlgorithmConfig))


def hyperparameters_for(fn: Any, config: AlgorithmConfig, tensor_args: tuple[str, ...]) -> dict[str, Any]:
    """The config values for the keyword hyperparameters of ``fn`` (its non-tensor arguments)."""
    from rlvr.registry import hyperparameters

    out = {}
    for name in hyperparameters(fn, tensor_args):
        if name not in ALGORITHM_FIELDS:
            raise ConfigError(
                f"{getattr(fn, '__name__', fn)} takes hyperparameter '{name}' which is not a field of "
                "AlgorithmConfig; add it there so a config can set it"
            )
        out[name] = getattr(config, name)
    return out


def replace_fields(config: AlgorithmConfig, **changes: Any) -> AlgorithmConfig:
    """A copy of ``config`` with ``changes``; an unknown field names the nearest valid one."""
    from rlvr.registry import nearest_name_hint

    for key in changes:
        if key not in ALGORITHM_FIELDS:
            raise ConfigError(f"unknown algorithm setting '{key}'{nearest_name_hint(key, ALGORITHM_FIELDS)}")
    return dataclasses.replace(config, **changes)
