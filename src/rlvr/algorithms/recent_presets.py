"""Presets of the second round of objectives: DPPO, SAPO, GMPO, MaxRL, GDPO, pass@k training and SPO.

Registered into :data:`rlvr.algorithms.presets.PRESETS` on import (by :mod:`rlvr.algorithms.presets`).
Each fixes its paper's estimator and surrogate; where a value below is rlvr's choice rather than
one read in the paper, the citation or ``notes`` say so. GSPO's preset lives with the first round's.
"""

from __future__ import annotations

from rlvr.algorithms.config import AlgorithmConfig as A
from rlvr.algorithms.presets import Preset, register_preset

_ONE_UPDATE = {"training.ppo_epochs": 1}

RECENT: tuple[Preset, ...] = (
    Preset(
        name="dppo",
        summary="DPPO-Binary-TV: GRPO advantages, a trust region on |pi - pi_old| of the token instead of the ratio clip.",
        citation=(
            "Rethinking the Trust Region in LLM Reinforcement Learning, arXiv 2602.04879: DPPO with the Binary-TV "
            "divergence; masks and the truncated importance weight (cap 20, sec. 5.4) as in the authors' released "
            "code; delta 0.2 and token-mean are rlvr's choices (the recommendation of a widely used port)"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="dppo_tv",
            aggregation="token-mean",
            dppo_delta_low=0.2,
            dppo_delta_high=0.2,
            dppo_ratio_cap=20.0,
            kl_coef=0.0,
        ),
        notes={
            "dppo_kl": "the Binary-KL variant: algorithm.policy_loss=dppo_kl with much smaller deltas (0.05 in ports)",
            "Top-K": "the paper's Top-K divergence approximation needs the full next-token distribution; not offered",
        },
    ),
    Preset(
        name="sapo",
        summary="SAPO: GRPO advantages with a soft sigmoid gate on the ratio (tau 1.0 for A > 0, 1.05 for A < 0).",
        citation=(
            "Soft Adaptive Policy Optimization, arXiv 2511.20347: the gated objective averaged per sequence "
            "(seq-mean-token-mean); tau_neg > tau_pos as the paper prescribes, the values 1.0 / 1.05 from "
            "widely used ports"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="sapo",
            aggregation="seq-mean-token-mean",
            sapo_tau_pos=1.0,
            sapo_tau_neg=1.05,
            kl_coef=0.0,
        ),
    ),
    Preset(
        name="gmpo",
        summary="GMPO: GRPO advantages, geometric mean of token ratios clipped in log space to (e^-0.4, e^0.4).",
        citation=(
            "Geometric-Mean Policy Optimization, arXiv 2507.20673: the GMPO objective with token-level clipping "
            "of the log-ratio and the wider range (e^-0.4, e^0.4) of its experiments, averaged over sequences"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="gmpo",
            aggregation="seq-mean-token-mean",
            gmpo_eps_low=0.4,
            gmpo_eps_high=0.4,
            kl_coef=0.0,
        ),
        settings=_ONE_UPDATE,
    ),
    Preset(
        name="maxrl",
        summary="MaxRL: advantages (r - mean) / mean, a sample estimate of grad log pass-rate; PPO clip, no KL.",
        citation=(
            "Maximum Likelihood Reinforcement Learning, arXiv 2602.02710: the estimator that divides the centred "
            "reward by the group mean; the surrogate (PPO clip 0.2) and aggregation are rlvr's choices"
        ),
        algorithm=A(
            advantage="maxrl",
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
        ),
        notes={
            "rewards": "the paper's setting is binary correctness; shaping rewards change what the mean means"
        },
    ),
    Preset(
        name="gdpo",
        summary="GDPO: each reward component normalised within its group, summed with its weight, then over the batch.",
        citation=(
            "GDPO: Group reward-Decoupled Normalization Policy Optimization for Multi-reward RL Optimization, "
            "arXiv 2601.05242: decoupled group normalisation per reward, then batch normalisation; PPO clip 0.2 "
            "and the aggregation are rlvr's choices"
        ),
        algorithm=A(
            advantage="gdpo",
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
        ),
        notes={
            "task.rewards": "meant for several reward components (accuracy + format + length); with one it is GRPO "
            "followed by batch normalisation",
        },
    ),
    Preset(
        name="passk",
        summary="Pass@k training: analytical pass@k advantages of the group (k = 4), PPO clip, no KL.",
        citation=(
            "Pass@k Training for Adaptively Balancing Exploration and Exploitation of Large Reasoning Models, "
            "arXiv 2508.10751: the analytical advantage of pass@k training; k = 4 is rlvr's default"
        ),
        algorithm=A(
            advantage="passk",
            passk_k=4,
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
        ),
        settings={"rollout.samples_per_prompt": 8},
        notes={
            "k": "needs k < samples_per_prompt: with k = n every group holding one correct sample gets no signal",
            "PKPO (arXiv 2505.15201)": "optimises the same pass@k with unbiased transformed rewards: "
            "algorithm.advantage=pkpo (no preset of its own)",
        },
    ),
    Preset(
        name="spo",
        summary="SPO-chain: segments cut at low-probability tokens, A = V(end) - V(start) from 9 rollouts per cut.",
        citation=(
            "Segment Policy Optimization: Effective Segment-Level Credit Assignment in RL for Large Language "
            "Models, arXiv 2505.23564: SPO-chain (cutpoint-based partition with rho = 0.9 and int = 5, chain-based "
            "Monte Carlo advantages, the probability mask); 9 continuations per cut point, 8 samples per prompt, "
            "temperature 0.6, PPO clip 0.2 and the token-mean aggregation as in the authors' released configuration"
        ),
        algorithm=A(
            advantage="spo",
            spo_threshold=0.9,
            spo_interval=5,
            spo_max_cuts=None,
            spo_continuations=9,
            spo_prob_mask=True,
            policy_loss="ppo_clip",
            aggregation="token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
        ),
        settings={"rollout.samples_per_prompt": 8, "rollout.temperature": 0.6},
        notes={
            "cost": "each step samples spo_continuations completions from every cut point: about "
            "(completions) x (cut points per completion) x 9 extra rollouts; algorithm.spo_max_cuts caps it",
            "V(prompt)": "the group's mean reward (the group's samples are Monte Carlo rollouts of the prompt)",
            "SPO-tree": "the paper's tree-based variant for long chains of thought: preset spo_tree",
        },
    ),
    Preset(
        name="spo_tree",
        summary="SPO-tree: completions sampled as a 6-6-6 tree of 30-token segments, A = V(node) - V(parent).",
        citation=(
            "Segment Policy Optimization, arXiv 2505.23564: SPO-tree (tree-based segment advantages, Figure 2b) "
            "with the probability mask; branch factors 6-6-6, 30-token segments, 16 prompts per step, "
            "temperature 0.6, PPO clip 0.2 and token-mean as in the authors' released GSM8K configuration"
        ),
        algorithm=A(
            advantage="spo",
            spo_threshold=0.9,
            spo_prob_mask=True,
            spo_tree=(6, 6, 6),
            spo_tree_segment_tokens=30,
            policy_loss="ppo_clip",
            aggregation="token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
        ),
        settings={"rollout.prompts_per_step": 16, "rollout.temperature": 0.6},
        notes={
            "cost": "a prompt's tree has 6 + 36 + 216 segments and up to 216 leaves (complete completions); "
            "rollout.samples_per_prompt is not used",
            "rows": "every segment is a row (prompt + its path as the prompt, the segment as the response), "
            "grouped with its siblings",
        },
    ),
)

for _preset in RECENT:
    register_preset(_preset)
