"""Named recipes: each paper's combination of estimator, loss, aggregation, KL, filters and settings.

A preset is data, not code: an :class:`~rlvr.algorithms.config.AlgorithmConfig` plus dotted
overrides of the other config sections (``rollout``, ``optim``, ``critic``, ``training``) with the
values the paper states, and ``notes`` for what the paper uses that rlvr has no key for or that
lives in the task's rewards (DAPO's overlong shaping). ``notes`` are
shown by ``rlvr presets`` and never applied. Values the paper does not give are left at rlvr's
defaults; where a preset takes a value from the authors' released code rather than the paper, or
picks one the paper leaves open, its ``citation`` says so. ``docs/algorithms.md`` ("Presets") has
the table and the reasons for each choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.errors import ConfigError, UnknownNameError
from rlvr.registry import Registry


@dataclass(frozen=True)
class Preset:
    """One recipe. ``settings`` and ``notes`` are read-only mappings."""

    name: str
    summary: str
    """One line: what the recipe is."""
    citation: str
    """Paper title, arXiv id and sections the values come from."""
    algorithm: AlgorithmConfig
    settings: dict[str, Any] = field(default_factory=dict)
    """Dotted overrides of the other sections, e.g. {"rollout.samples_per_prompt": 16}."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What the paper also uses that no rlvr key expresses (documentation only, not applied)."""

    def __post_init__(self) -> None:
        for key in self.settings:
            section = key.split(".")[0]
            if "." not in key or section == "algorithm":
                raise ConfigError(
                    f"preset '{self.name}': setting '{key}' must be a dotted key of another section "
                    "(rollout.*, optim.*, critic.*, training.*, distill.*); algorithm settings go in Preset.algorithm"
                )
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        object.__setattr__(self, "notes", MappingProxyType(dict(self.notes)))


PRESETS: Registry = Registry("preset")


def get_preset(name: str) -> Preset:
    """The preset registered as ``name``; an error naming the nearest valid one otherwise."""
    try:
        return PRESETS.get(name)
    except UnknownNameError as e:
        raise ConfigError(f"preset: {e}") from None


def register_preset(preset: Preset, *, overwrite: bool = False) -> Preset:
    """Register ``preset`` under its name (users add their own recipes the same way)."""
    return PRESETS.register(preset.name, overwrite=overwrite)(preset)


A = AlgorithmConfig

_DAPO_REWARD_NOTE = (
    "add the 'overlong' reward (max_length 20480, buffer_length 4096): soft overlong punishment, eq. 13"
)

_BUILTIN: tuple[Preset, ...] = (
    Preset(
        name="grpo",
        summary="GRPO as in DeepSeekMath: group-normalised advantages, PPO clip 0.2, k3 KL in the loss (beta 0.04).",
        citation=(
            "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open Language Models, arXiv 2402.03300, "
            "sec. 4.1 (eq. 3-4: objective, k3 KL) and 4.2 (training setup)"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.04,
            kl_estimator="k3",
            kl_placement="loss",
            kl_clamp=None,
        ),
        settings={
            "rollout.samples_per_prompt": 64,
            "rollout.max_new_tokens": 1024,
            "optim.lr": 1e-6,
            "training.ppo_epochs": 1,
            "training.updates_per_step": 1,
        },
        notes={
            "batch size": "1024 (the paper's training batch; its unit is not stated)",
            "DeepSeek-R1-Zero (arXiv 2501.12948, supplementary)": (
                "same objective with lr 3e-6, KL beta 0.001, clip eps 10, 16 samples per question, "
                "max length 32768 (65536 after step 8.2k), 32 questions per step split into 16 "
                "mini-batches, one epoch, reference model replaced every 400 steps"
            ),
        },
    ),
    Preset(
        name="dr_grpo",
        summary="Dr. GRPO: GRPO without the std and length normalisations; token sums divided by the budget, no KL.",
        citation=(
            "Understanding R1-Zero-Like Training: A Critical Perspective, arXiv 2503.20783, sec. 3.2 (Dr. GRPO); "
            "its minimalist R1-Zero recipe (Oat-Zero), values as in the authors' released scripts"
        ),
        algorithm=A(
            advantage="dr_grpo",
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-sum-norm",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
        ),
        settings={
            "rollout.prompts_per_step": 128,
            "rollout.samples_per_prompt": 8,
            "rollout.max_new_tokens": 3000,
            "rollout.temperature": 1.0,
            "optim.lr": 1e-6,
            "training.ppo_epochs": 1,
        },
        notes={
            "loss_norm_length": "None: the generation budget rollout.max_new_tokens (3000) divides each token sum"
        },
    ),
    Preset(
        name="dapo",
        summary="DAPO: clip-higher 0.2/0.28, token-mean loss, no KL, dynamic sampling, overlong reward shaping.",
        citation=(
            "DAPO: An Open-Source LLM Reinforcement Learning System at Scale, arXiv 2503.14476, sec. 3.1-3.4 "
            "(eq. 8-13) and 4.1 (training details)"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="ppo_clip",
            aggregation="token-mean",
            eps_low=0.2,
            eps_high=0.28,
            clip_ratio_c=None,
            kl_coef=0.0,
            filters=("dynamic_sampling",),
            dynamic_sampling_criterion="correct",
        ),
        settings={
            "rollout.prompts_per_step": 512,
            "rollout.samples_per_prompt": 16,
            "rollout.max_new_tokens": 20480,
            "optim.lr": 1e-6,
            "optim.schedule": "constant",
            "optim.warmup_steps": 320,
            "training.ppo_epochs": 1,
            "training.updates_per_step": 16,
        },
        notes={
            "task.rewards": _DAPO_REWARD_NOTE,
            "warmup": "20 rollout steps x 16 updates = 320 optimizer steps",
        },
    ),
    Preset(
        name="vapo",
        summary="VAPO: PPO with decoupled and length-adaptive GAE, clip-higher, token-mean, positive-example LM loss.",
        citation=(
            "VAPO: Efficient and Reliable Reinforcement Learning for Advanced Reasoning Tasks, arXiv 2504.05118, "
            "sec. 3.1-3.3 (value pretraining, decoupled GAE, length-adaptive GAE, clip-higher, token-level loss, "
            "positive-example LM loss, group sampling) and the training details (sec. 5.1 of the arXiv text: actor lr "
            "1e-6, critic lr 2e-6, value network warm-up for 50 steps, 512 prompts x 16 samples, mini-batch 512)"
        ),
        algorithm=A(
            advantage="vapo",
            gamma=1.0,
            lam_critic=1.0,
            lam_alpha=0.05,
            policy_loss="ppo_clip",
            aggregation="token-mean",
            eps_low=0.2,
            eps_high=0.28,
            kl_coef=0.0,
            lm_coef=0.1,
        ),
        settings={
            "rollout.prompts_per_step": 512,
            "rollout.samples_per_prompt": 16,
            "optim.lr": 1e-6,
            "critic.lr": 2e-6,
            "critic.pretrain_steps": 50,
            "training.updates_per_step": 16,
        },
    ),
    Preset(
        name="ppo",
        summary="PPO as in Open-Reasoner-Zero: GAE with gamma = lambda = 1, clip 0.2, no KL, batch advantage normalisation.",
        citation=(
            "Open-Reasoner-Zero: An Open Source Approach to Scaling Up Reinforcement Learning on the Base Model, "
            "arXiv 2503.24290, sec. 2.1.3 (eq. 1-2) and 3.1 (training details)"
        ),
        algorithm=A(
            advantage="gae",
            gamma=1.0,
            lam=1.0,
            whiten_advantages=True,
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
            entropy_coef=0.0,
            value_loss="mse",
        ),
        settings={
            "rollout.prompts_per_step": 128,
            "rollout.samples_per_prompt": 64,
            "rollout.temperature": 1.0,
            "rollout.top_p": 1.0,
            "optim.lr": 1e-6,
            "optim.betas": (0.9, 0.95),
            "optim.weight_decay": 0.0,
            "optim.warmup_steps": 50,
            "critic.lr": 5e-6,
            "critic.updates_per_step": 12,
            "training.ppo_epochs": 1,
            "training.updates_per_step": 1,
        },
        notes={
            "value loss": "eq. 2 is the plain squared error; the released code clips values at 0.2",
            "aggregation": "eq. 1 leaves it open; seq-mean-token-mean is the released code's",
        },
    ),
    Preset(
        name="kimi",
        summary="Kimi k1.5: mean-reward baseline with the tau-regularised squared loss, prioritized prompt sampling.",
        citation=(
            "Kimi k1.5: Scaling Reinforcement Learning with LLMs, arXiv 2501.12599, sec. 2.3.2 (policy optimization), "
            "2.3.3 (length penalty) and 2.3.4 (sampling strategies)"
        ),
        algorithm=A(
            advantage="kimi",
            policy_loss="kimi",
            aggregation="seq-mean-token-mean",
            kimi_tau=0.1,
            kl_coef=0.0,
            sampler="prioritized",
        ),
        notes={
            "kimi_tau": "not published; 0.1 is rlvr's default",
            "task.rewards": "add the 'kimi_length' reward (length penalty, sec. 2.3.3; the paper warms it up)",
            "sampler": "the paper uses curriculum and prioritized sampling; set algorithm.sampler=curriculum for the former",
        },
    ),
    Preset(
        name="rloo",
        summary="RLOO: REINFORCE with a leave-one-out baseline over k = 4 samples, sequence-level KL in the reward.",
        citation=(
            "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs, "
            "arXiv 2402.14740: the RLOO estimator with k samples (k = 2, 4 in its experiments)"
        ),
        algorithm=A(
            advantage="rloo",
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-sum",
            kl_coef=0.05,
            kl_estimator="k1",
            kl_placement="reward",
            kl_clamp=None,
        ),
        settings={
            "rollout.samples_per_prompt": 4,
            "training.ppo_epochs": 1,
            "training.updates_per_step": 1,
        },
        notes={
            "REINFORCE": "one on-policy update per batch: the ratio is 1, so the clipped loss has REINFORCE's gradient",
            "kl_coef": "the paper tunes beta per task; 0.05 is rlvr's choice",
        },
    ),
    Preset(
        name="reinforce_pp",
        summary="REINFORCE++: token-level k1 KL in the reward, returns whitened over the global batch, PPO clip.",
        citation=(
            "REINFORCE++: An Efficient RLHF Algorithm with Robustness to Both Prompt and Reward Models, "
            "arXiv 2501.03262: token-level k1 KL penalty in the reward, global advantage normalization, PPO "
            "clipping; beta and lr from the authors' OpenRLHF example"
        ),
        algorithm=A(
            advantage="reinforce_pp",
            gamma=1.0,
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.01,
            kl_estimator="k1",
            kl_placement="reward",
            kl_clamp=None,
        ),
        settings={"rollout.samples_per_prompt": 1, "optim.lr": 5e-7},
        notes={"aggregation": "not fixed by the paper; rlvr uses seq-mean-token-mean"},
    ),
    Preset(
        name="cppo",
        summary="CPPO: GRPO that keeps only the completions with the largest |advantage| (P = 0.875, k = 2 of 16).",
        citation=(
            "CPPO: Accelerating the Training of Group Relative Policy Optimization-Based Reasoning Models, "
            "arXiv 2503.22342: completion pruning by |advantage|; G = 16, P = 87.5% is its most accurate GSM8K run"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.04,
            kl_estimator="k3",
            kl_clamp=None,
            filters=("cppo",),
            cppo_pruning_rate=0.875,
        ),
        settings={"rollout.samples_per_prompt": 16},
        notes={
            "dynamic completion allocation": "the paper refills the freed slots with more prompts (loop-level)"
        },
    ),
    Preset(
        name="raft_pp",
        summary="RAFT++: train only on correct samples, advantage = reward, PPO-clipped importance ratio.",
        citation=(
            "A Minimalist Approach to LLM Reasoning: from Rejection Sampling to Reinforce, arXiv 2504.11343, "
            "RAFT++ (eq. 6); batch, length and KL from the authors' released scripts"
        ),
        algorithm=A(
            advantage="reinforce",
            policy_loss="ppo_clip",
            aggregation="token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.001,
            kl_estimator="k3",
            kl_placement="loss",
            filters=("raft_pp",),
        ),
        settings={
            "rollout.prompts_per_step": 1024,
            "rollout.samples_per_prompt": 4,
            "rollout.max_new_tokens": 3072,
            "optim.lr": 1e-6,
            "training.ppo_epochs": 1,
            "training.updates_per_step": 4,
        },
        notes={"advantage": "A = r (reward 1 on the kept correct samples): the reinforce estimator"},
    ),
    Preset(
        name="reinforce_rej",
        summary="Reinforce-Rej: REINFORCE (advantage = reward) on the prompts that are neither all right nor all wrong.",
        citation=(
            "A Minimalist Approach to LLM Reasoning: from Rejection Sampling to Reinforce, arXiv 2504.11343, "
            "Reinforce-Rej; batch, length and KL from the authors' released scripts"
        ),
        algorithm=A(
            advantage="reinforce",
            policy_loss="ppo_clip",
            aggregation="token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.001,
            kl_estimator="k3",
            kl_placement="loss",
            filters=("reject",),
        ),
        settings={
            "rollout.prompts_per_step": 1024,
            "rollout.samples_per_prompt": 4,
            "rollout.max_new_tokens": 3072,
            "optim.lr": 1e-6,
            "training.ppo_epochs": 1,
            "training.updates_per_step": 4,
        },
        notes={"advantage": "A = r, no baseline: the reinforce estimator"},
    ),
    Preset(
        name="gspo",
        summary="GSPO: one length-normalised sequence ratio per completion, clipped at 3e-4 / 4e-4, no KL.",
        citation="Group Sequence Policy Optimization, arXiv 2507.18071, sec. 4.1 (objective) and 5.1 (clip ranges)",
        algorithm=A(
            advantage="grpo",
            policy_loss="gspo",
            aggregation="seq-mean-token-mean",
            eps_low=3e-4,
            eps_high=4e-4,
            kl_coef=0.0,
        ),
    ),
    Preset(
        name="cispo",
        summary="CISPO: REINFORCE weighted by an importance ratio truncated from above, token-mean, dynamic sampling.",
        citation=(
            "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention, arXiv 2506.13585, "
            "sec. 3.1 (eq. 4-5); eps_high is not published (rlvr uses DAPO's 0.28)"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="cispo",
            aggregation="token-mean",
            eps_high=0.28,
            kl_coef=0.0,
            filters=("dynamic_sampling",),
            dynamic_sampling_criterion="correct",
        ),
        notes={"task.rewards": "the paper adds DAPO's length penalty: " + _DAPO_REWARD_NOTE},
    ),
    Preset(
        name="clip_cov",
        summary="Clip-Cov: PPO that stops the gradient of a few high-covariance tokens (ratio 2e-4, window [1, 5]).",
        citation=(
            "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models, arXiv 2505.22617, "
            "sec. 4.3 (Clip-Cov: ratio 2e-4, window [1, 5]); clip range 1 and batch from the authors' 7B recipe"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="clip_cov",
            aggregation="token-mean",
            eps_low=1.0,
            eps_high=1.0,
            clip_cov_ratio=2e-4,
            clip_cov_lb=1.0,
            clip_cov_ub=5.0,
            kl_coef=0.0,
            filters=("dynamic_sampling",),
            dynamic_sampling_criterion="correct",
        ),
        settings={
            "rollout.prompts_per_step": 256,
            "rollout.samples_per_prompt": 8,
            "rollout.max_new_tokens": 8192,
            "rollout.temperature": 1.0,
            "optim.lr": 5e-7,
            "training.updates_per_step": 8,
        },
    ),
    Preset(
        name="kl_cov",
        summary="KL-Cov: PPO with a KL penalty on the top 2e-3 of tokens by covariance (coefficient 1).",
        citation=(
            "The Entropy Mechanism of Reinforcement Learning for Reasoning Language Models, arXiv 2505.22617, "
            "sec. 4.3 (KL-Cov: k = 2e-3 for 7B, 2e-4 for 32B; beta = 1); batch from the authors' 7B recipe"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="kl_cov",
            aggregation="token-mean",
            kl_cov_ratio=2e-3,
            kl_cov_coef=1.0,
            kl_coef=0.0,
            filters=("dynamic_sampling",),
            dynamic_sampling_criterion="correct",
        ),
        settings={
            "rollout.prompts_per_step": 256,
            "rollout.samples_per_prompt": 8,
            "rollout.max_new_tokens": 8192,
            "rollout.temperature": 1.0,
            "optim.lr": 5e-7,
            "training.updates_per_step": 8,
        },
        notes={"32B models": "kl_cov_ratio 2e-4 and lr 1e-6"},
    ),
    Preset(
        name="opd",
        summary="On-policy distillation: the teacher's per-token log-ratio on the student's samples is the advantage.",
        citation=(
            "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes (GKD), arXiv "
            "2306.13649, sec. 3 (on-policy data, reverse KL; lambda = 1) and Algorithm 1 (one sample per input); "
            "the single-sample per-token estimate as advantage and the clip range are rlvr's choices"
        ),
        algorithm=A(
            advantage="grpo",
            policy_loss="ppo_clip",
            aggregation="seq-mean-token-mean",
            eps_low=0.2,
            eps_high=0.2,
            kl_coef=0.0,
        ),
        settings={
            "distill.mode": "advantage",
            "distill.reward_weight": 0.0,
            "rollout.samples_per_prompt": 1,
            "rollout.temperature": 1.0,
            "training.ppo_epochs": 1,
            "training.updates_per_step": 1,
        },
        notes={
            "distill.teacher": "required: a model sharing model.path's tokenizer (a larger model of its family)",
            "aggregation": "GKD's sequence divergence is the mean over a sequence's tokens (sec. 3): seq-mean-token-mean",
            "advantage": "grpo is computed on the task reward for its metrics only (reward_weight 0)",
            "KL": "no KL to the initial model: the teacher is the anchor",
        },
    ),
)

for _preset in _BUILTIN:
    register_preset(_preset)

# DPPO, SAPO, GMPO, MaxRL, GDPO and pass@k register from their own module.
from rlvr.algorithms import recent_presets as _recent_presets  # noqa: E402,F401
