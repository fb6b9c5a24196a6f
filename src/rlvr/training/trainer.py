"""``rlvr train``: the RL loop.

One step, top to bottom (shared/DESIGN.md's diagram)::

    prompts --sampler--> engine.generate (n per prompt) --> rewards --> group filters
        --> advantages (+ KL folded into rewards, + whitening) --> completion filters
        --> ppo_epochs x updates_per_step optimizer steps --> the engine sees the new weights

Every choice in it is a registered function named by the config; the loop never branches on an
algorithm's name.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr.algorithms.advantages import (
    ADVANTAGE_TENSOR_ARGS,
    ADVANTAGES,
    outcome_to_token_rewards,
    whiten_advantages,
)
from rlvr.algorithms.config import hyperparameters_for
from rlvr.algorithms.distill import distillation_advantages, distillation_metrics, teacher_log_ratio
from rlvr.algorithms.filters import apply_filters, filter_stages, sequence_advantages
from rlvr.algorithms.kl import fold_kl_into_rewards, kl_penalty
from rlvr.algorithms.mismatch import mismatch_enabled, needs_trainer_logprobs
from rlvr.algorithms.samplers import PromptSampler, difficulties_from_problems
from rlvr.algorithms.sampling_support import SamplingSupport
from rlvr.algorithms.spo import SPO_TENSOR_ARGS
from rlvr.algorithms.validation import needs_critic, needs_reference_model
from rlvr.config import Config, CriticConfig, to_dict
from rlvr.distributed import (
    all_reduce_max,
    all_reduce_sum,
    broadcast_object,
    init_from_environment,
    rank,
    world_size,
)
from rlvr.errors import ConfigError
from rlvr.evaluation.in_training import BestModel, TrainingEvaluator
from rlvr.rewards.composite import CompositeReward
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.types import SamplingParams
from rlvr.tasks.base import Task
from rlvr.training.batch import RolloutBatch, global_row_positions, make_batch, training_rows
from rlvr.training.critic import Critic, value_metrics
from rlvr.training.generate_ahead import GenerateAhead
from rlvr.training.model import (
    ReferenceModel,
    autocast_dtype,
    count_parameters,
    load_policy,
    load_teacher,
    load_tokenizer,
    resolve_device,
    save_model_dir,
)
from rlvr.training.parallel import Parallel
from rlvr.training.rollouts import RolloutCollector, ScoredGroup, StepRollouts
from rlvr.training.segment_values import estimate_cut_values
from rlvr.training.setup import (
    build_optimizer,
    build_runner,
    build_task,
    tokenize_prompts,
    turn_reward_tensor,
)
from rlvr.training.sharded_state import export_state
from rlvr.training.spo_tree import TreeCollector
from rlvr.training.update import (
    UpdateSettings,
    compute_logprobs,
    compute_logprobs_in_support,
    minibatch_schedule,
    policy_update,
)

CRITIC_PRETRAIN_FILE = "critic_pretrain.jsonl"
"""One line per value-pretraining step, in the run directory."""
PRETRAIN_SEED_OFFSET = 1_000_003
"""Value pretraining samples with seeds of its own, never those of a training step."""


@dataclass
class RunResult:
    output_dir: Path
    steps: int
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    interrupted: bool = False


class Trainer:
    """Holds a run's parts; :meth:`run` trains from step 0 or from the latest checkpoint."""

    _saved_step: int | None = None
    """The step of the last checkpoint saved or resumed from (None: none yet)."""
    _stop_at_once: bool = False
    """Set once the final state is saved: a Ctrl-C then ends the run at once."""

    def __init__(self, config: Config, *, log: Any = print, task: Task | None = None) -> None:
        """``task``: the task already built from ``config`` (the command line builds it first, so that
        a data error comes before the heavy imports); None builds it here."""
        self.given_config = config  # as the user wrote it: what config.json records and --resume compares
        if config.parallel.mixed_precision != "none":  # float32 shards; FSDP2 gathers them in bfloat16
            config = dataclasses.replace(config, model=dataclasses.replace(config.model, dtype="float32"))
        c = config
        self.device = resolve_device(c.training.device)
        init_from_environment(timeout_s=c.parallel.timeout_s, use_cuda=self.device.type == "cuda")
        if self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.parallel = Parallel(c.parallel, self.device)
        self.config, self.log = config, (log if rank() == 0 else _silent)
        self.out = Path(c.logging.output_dir)
        if c.rollout.prompts_per_step < world_size():
            raise ConfigError(
                f"setting 'rollout.prompts_per_step' ({c.rollout.prompts_per_step}) is smaller than the "
                f"{world_size()} ranks: every rank needs at least one prompt per step"
            )
        if c.training.cpu_threads is not None:
            torch.set_num_threads(c.training.cpu_threads)
        random.seed(c.training.seed)
        torch.manual_seed(c.training.seed)
        # The data first, then the tokenizer, then the weights: a bad row or prompt is reported at once.
        self.task = task if task is not None else build_task(c)
        self.evaluator = TrainingEvaluator(c, self.task)
        self.reward = CompositeReward(self.task.rewards)
        self.tokenizer = load_tokenizer(c.model)
        self.train_prompts = tokenize_prompts(
            self.task.train, self.task.template, self.tokenizer, c.rollout.max_prompt_tokens
        )
        self.evaluator.check_prompts(self.tokenizer)
        if self.task.skipped_rows:
            first = self.task.skipped_rows[0]
            self.log(f"{len(self.task.skipped_rows)} bad row(s) of the training data skipped; first: {first}")
        for eval_set in self.evaluator.sets:
            if eval_set.skipped:
                self.log(
                    f"[{eval_set.name}] {len(eval_set.skipped)} bad row(s) left out; first: {eval_set.skipped[0]}"
                )
        self.model = load_policy(c.model, self.device)
        self.sampler = PromptSampler.from_config(
            len(self.task.train),
            c.algorithm,
            seed=c.training.seed,
            difficulties=difficulties_from_problems(self.task.train)
            if c.algorithm.sampler == "curriculum"
            else None,
        )
        self.vllm_sync = None  # rollout.engine 'vllm': its own copy of the weights, pushed after each update
        if c.rollout.engine == "vllm":
            from rlvr.training.vllm_sync import VLLMSync, build_vllm_engine

            self.engine = build_vllm_engine(c, self.model, self.tokenizer, self.device)
            self.vllm_sync = VLLMSync(c, self.engine, self.log)
        else:
            self.engine = HFEngine(
                self.model,
                self.tokenizer,
                max_batch_sequences=c.rollout.max_batch_sequences,
                # rollout.autocast: a bfloat16 sampler also when the trainer computes in float32
                autocast_dtype=autocast_dtype(c.model)
                or (torch.bfloat16 if c.rollout.autocast == "bfloat16" else None),
                decoder=c.rollout.decoder,
            )
        self.best_model = (
            BestModel(self.out, c.eval.best_metric, c.eval.best_mode) if c.eval.best_metric else None
        )
        self.ahead: GenerateAhead | None = None
        if c.rollout.generate_ahead:  # a plain copy of the policy, taken before it is sharded or wrapped
            dtype = next(self.model.parameters()).dtype
            if dtype != torch.float32:
                raise ConfigError(
                    f"setting 'rollout.generate_ahead' needs float32 compute: model.dtype '{c.model.dtype}' "
                    f"loads {dtype} weights on {self.device}"
                )
            self.ahead = GenerateAhead(
                self.model,
                self.tokenizer,
                max_batch_sequences=c.rollout.max_batch_sequences,
                decoder=c.rollout.decoder,
            )
        self.reference = ReferenceModel(self.model) if needs_reference_model(c.algorithm) else None
        if self.reference is not None and not self.reference.shares_policy:
            self.parallel.prepare(self.reference.model)  # sharded too, with no optimizer state
        self.teacher = None  # on-policy distillation: a frozen model of the same vocabulary
        if c.distill.teacher is not None:
            self.teacher = load_teacher(c.model, c.distill.teacher, self.device, self.tokenizer)
            self.parallel.prepare(self.teacher)  # sharded like the reference, with no optimizer state
        self.parallel.prepare(self.model)  # before the optimizer: FSDP2 replaces the parameters
        self.optimizer, self.scheduler = build_optimizer(self.model, c)
        self.critic: Critic | None = None
        if needs_critic(c.algorithm):  # gae, vapo: a value model with its own optimizer
            self.critic = Critic.from_config(
                c, self.device, min_vocab=len(self.tokenizer), parallel=self.parallel
            )
        elif c.critic != CriticConfig():
            log(
                f"critic.* settings are not used: algorithm.advantage '{c.algorithm.advantage}' has no critic"
            )
        self.critic_pretrained = self.critic is None or c.critic.pretrain_steps == 0
        self.sampling = SamplingParams(
            n=c.rollout.samples_per_prompt,
            max_new_tokens=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature,
            top_p=c.rollout.top_p,
            top_k=c.rollout.top_k,
            stop_strings=self.task.stop_strings,
            seed=c.training.seed,
            truncated_logprobs=c.algorithm.replay_sampling_support,
        )
        self.episodes = None  # multi-turn rollouts: one environment per trajectory (docs/agents.md)
        if c.env.name is not None:
            self.episodes = build_runner(c, self.task)
            self.sampling = dataclasses.replace(self.sampling, stop_strings=())  # the environment's end turns
        self.collector = RolloutCollector(
            episodes=self.episodes,
            engine=self.engine,
            problems=self.task.train,
            prompt_ids=self.train_prompts,
            sampler=self.sampler,
            reward=self.reward,
            sampling=self.sampling,
            prompts_per_step=c.rollout.prompts_per_step,
            max_rounds=c.training.max_sampling_rounds,
            algorithm=c.algorithm,
        )
        if c.algorithm.spo_tree:  # SPO-tree: each prompt's completions are a tree of segments
            self.collector = TreeCollector(
                engine=self.engine,
                problems=self.task.train,
                prompt_ids=self.train_prompts,
                sampler=self.sampler,
                reward=self.reward,
                sampling=self.sampling,
                prompts_per_step=c.rollout.prompts_per_step,
                branches=tuple(c.algorithm.spo_tree),
                segment_tokens=c.algorithm.spo_tree_segment_tokens,
            )
        self.update_settings = UpdateSettings(
            ppo_epochs=c.training.ppo_epochs,
            updates_per_step=c.training.updates_per_step,
            micro_batch_tokens=c.training.micro_batch_tokens,
            max_grad_norm=c.optim.max_grad_norm,
            temperature=c.rollout.temperature if c.rollout.temperature > 0 else 1.0,
            norm_length=c.algorithm.loss_norm_length or c.rollout.max_new_tokens,
            autocast_dtype=autocast_dtype(c.model),
            skip_zero_advantage=c.training.skip_zero_advantage,
            support=SamplingSupport(c.rollout.top_k, c.rollout.top_p)
            if c.algorithm.replay_sampling_support
            else None,
        )
        self.generator = torch.Generator().manual_seed(c.training.seed)
        self.step = 0
        self._stop_requested = False

    # --- one step ------------------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        first_round = self.ahead.take(step) if self.ahead is not None else None  # generated during step - 1
        waited = time.perf_counter() - t0
        with self.parallel.gathered(self.model):  # prompts -> completions -> rewards -> group filters
            rollouts = self.collector.collect(step, first_round)
        if self.vllm_sync is not None:  # sampled by the weights the trainer holds
            self.vllm_sync.check_rollouts([c for g in rollouts.groups for c in g.completions])
        if self.ahead is not None:
            if step + 1 < self.config.training.steps:  # the next step's first round, from these weights
                self.ahead.start(step + 1, self.model, self.collector)
            rollouts.timings["time/generate_wait"] = waited
        return self.learn(rollouts, start_time=t0)

    def learn(self, rollouts: StepRollouts, *, start_time: float | None = None) -> dict[str, float]:
        """Advantages and updates from one step's rollouts (this rank's groups); returns the metrics."""
        c, alg = self.config, self.config.algorithm
        t0 = time.perf_counter() if start_time is None else start_time
        metrics = dict(rollouts.metrics)
        metrics.update(rollouts.timings)
        if all_reduce_sum(torch.tensor(float(len(rollouts.groups)))).item() == 0:
            self.log(f"step {self.step}: every group was filtered out; no update")
            metrics["optim/skipped_updates"] = 1.0
            return metrics
        batch = self._make_batch(rollouts.groups).to(self.device)
        if getattr(ADVANTAGES.get(alg.advantage), "takes_cut_values", False):  # SPO's Monte Carlo values
            metrics.update(self._cut_values(rollouts.groups, batch))
        t1 = time.perf_counter()
        metrics.update(self.prepare_advantages(batch))  # old logprobs, KL, values -> advantages, returns
        _, after = filter_stages(alg.filters)
        if after:  # filters that need advantages (CPPO) drop completions now
            batch = self._apply_completion_filters(batch, after, metrics)
        schedule = self._schedule(batch, c.training.updates_per_step)
        metrics.update(
            policy_update(
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                batch=batch,
                algorithm=alg,
                settings=self.update_settings,
                generator=self.generator,
                schedule=schedule,
                reduce_gradients=self.parallel.reduce_gradients,
            )
        )
        if self.critic is not None:  # the value loss toward the estimator's returns
            metrics.update(self.critic.update(batch, self._critic_schedule(batch, schedule), alg))
        if self.vllm_sync is not None:  # the engine serves the new weights from the next rollout on
            metrics.update(self.vllm_sync.push(self.model))
        t2 = time.perf_counter()
        metrics["time/update"] = t2 - t1
        metrics["time/step"] = t2 - t0
        tokens = all_reduce_sum(torch.tensor(float(batch.response_mask.sum() + sum(batch.prompt_lengths))))
        metrics["throughput/tokens_per_s"] = tokens.item() / max(t2 - t0, 1e-9)
        metrics["memory/peak_gb"] = all_reduce_max(torch.tensor(_peak_memory_gb(self.device))).item()
        return metrics

    def _schedule(self, batch: RolloutBatch, updates_per_epoch: int) -> list[torch.Tensor]:
        """This rank's rows of each optimizer step: :func:`minibatch_schedule` drawn over the rows of
        all ranks (in one process's order), so the mini-batches do not depend on the number of ranks."""
        positions, total = global_row_positions(batch.row_keys)
        local = {p: row for row, p in enumerate(positions)}
        schedule = minibatch_schedule(
            total,
            epochs=self.config.training.ppo_epochs,
            updates_per_epoch=updates_per_epoch,
            generator=self.generator,
        )
        return [
            torch.tensor([local[p] for p in rows.tolist() if p in local], dtype=torch.long)
            for rows in schedule
        ]

    def prepare_advantages(self, batch: RolloutBatch) -> dict[str, float]:
        """Fill ``batch.extra`` with everything the updates read; return the metrics.

        Old logprobs (recomputed in half precision, or to match a teacher's), the reference model's
        logprobs and the KL (in the loss or folded into the token rewards), a distillation teacher's
        logprobs (its log-ratio folded into the token rewards, or made the advantage), the critic's
        values V(s_t) at rollout time, then the advantage estimator: ``advantages`` (whitened when
        configured) for the policy and, from critic-based estimators, ``returns``, the critic's targets.
        """
        c, alg = self.config, self.config.algorithm
        metrics: dict[str, float] = {}
        support = self.update_settings.support
        if self._needs_recompute():
            rollout_logprobs = batch.old_logprobs
            if mismatch_enabled(alg.mismatch_is, alg.mismatch_mask, alg.mismatch_opsm_delta):
                batch.extra["rollout_logprobs"] = batch.old_logprobs  # the sampler's, for the correction
            if support is None:
                batch.old_logprobs = compute_logprobs(
                    self.model,
                    batch,
                    self.update_settings.temperature,
                    c.training.micro_batch_tokens,
                    self.update_settings.autocast_dtype,
                )
            else:  # the truncated ones for the ratio, the untruncated ones for the KL and the teacher
                batch.old_logprobs, batch.extra["untruncated_old_logprobs"] = compute_logprobs_in_support(
                    self.model,
                    batch,
                    self.update_settings.temperature,
                    c.training.micro_batch_tokens,
                    support,
                    self.update_settings.autocast_dtype,
                )
            if self.vllm_sync is not None:  # the policy served is the policy trained (docs/rollout.md)
                metrics.update(
                    self.vllm_sync.mismatch(rollout_logprobs, batch.old_logprobs, batch.response_mask)
                )
        # The policy's own logprobs, untruncated, against the reference and the teacher.
        policy_logprobs = batch.extra.get("untruncated_old_logprobs", batch.old_logprobs)
        rewards = batch.extra.pop("token_rewards", batch.rewards)  # [B, T] with env.turn_rewards
        if batch.layout is not None and rewards.dim() == 1 and self._folds_into_rewards():
            # every turn's row carries its trajectory's reward: on token rewards it goes on the
            # trajectory's last token only, once
            rewards = batch.layout.scatter_tokens(
                outcome_to_token_rewards(
                    batch.layout.gather_rows(rewards), batch.layout.gather_tokens(batch.response_mask)
                ),
                batch.response_mask.shape[1],
            )
        if self.reference is not None:  # KL to the reference policy, in the loss or in the reward
            with self.reference.active() as ref_model:
                batch.extra["ref_logprobs"] = compute_logprobs(
                    ref_model,
                    batch,
                    self.update_settings.temperature,
                    c.training.micro_batch_tokens,
                    self.update_settings.autocast_dtype,
                )
            kl = kl_penalty(
                logprobs=policy_logprobs,
                ref_logprobs=batch.extra["ref_logprobs"],
                mask=batch.response_mask,
                kl_estimator=alg.kl_estimator,
                kl_clamp=alg.kl_clamp,
            )
            kl_sum, tokens = all_reduce_sum(
                torch.stack([kl.sum().double(), batch.response_mask.sum().double()])
            )
            metrics["kl/reference"] = float(kl_sum / tokens.clamp(min=1))
            if alg.kl_placement == "reward":
                rewards = fold_kl_into_rewards(
                    rewards=rewards, kl=kl, mask=batch.response_mask, kl_coef=alg.kl_coef
                )
        distill = c.distill
        if self.teacher is not None:  # the teacher's log-probabilities of the sampled tokens
            metrics.update(self.score_with_teacher(batch))
            if distill.mode == "reward":  # log pi - log pi_teacher is a KL to the teacher: folded like
                rewards = fold_kl_into_rewards(  # kl_placement=reward (docs/algorithms.md)
                    rewards=rewards,
                    kl=-teacher_log_ratio(
                        teacher_logprobs=batch.extra["teacher_logprobs"],
                        logprobs=policy_logprobs,
                        mask=batch.response_mask,
                    ),
                    mask=batch.response_mask,
                    kl_coef=distill.coef,
                )
        if self.critic is not None:
            batch.extra["values"] = self.critic.values(batch)  # [B, T] V(s_t), before any update
        estimator = ADVANTAGES.get(alg.advantage)
        components = {}  # GDPO normalises each reward component on its own (arXiv 2601.05242)
        if getattr(estimator, "takes_reward_components", False) and "reward_components" in batch.extra:
            weights = [component.weight for component in self.reward.components]
            components = {
                "reward_components": batch.extra["reward_components"],
                "reward_weights": torch.tensor(weights, dtype=torch.float64),
            }
        if getattr(estimator, "takes_cut_values", False):  # SPO: filled by _cut_values
            components.update({name: batch.extra[name] for name in SPO_TENSOR_ARGS})
        layout = batch.layout  # trajectories split into turns: the estimator sees whole trajectories
        mask, group_ids, values = batch.response_mask, batch.group_ids, batch.extra.get("values")
        if layout is not None:
            rewards, mask, group_ids = layout.estimator_inputs(rewards, mask, group_ids)
            values = layout.gather_tokens(values) if values is not None else None
            components = {
                k: layout.gather_rows(v) if k == "reward_components" else v for k, v in components.items()
            }
        adv = estimator(
            rewards=rewards,
            mask=mask,
            group_ids=group_ids,
            values=values,
            **components,
            **hyperparameters_for(estimator, alg, ADVANTAGE_TENSOR_ARGS),
        )
        if layout is not None:
            width = batch.response_mask.shape[1]
            adv = dataclasses.replace(
                adv,
                **{
                    name: layout.scatter_tokens(getattr(adv, name), width)
                    for name in ("advantages", "returns", "loss_mask")
                    if getattr(adv, name) is not None
                },
            )
        metrics.update(adv.metrics)
        advantages = adv.advantages
        if adv.loss_mask is not None:  # tokens the policy loss leaves out (SPO's probability mask)
            batch.response_mask = batch.response_mask * adv.loss_mask.to(batch.response_mask.dtype)
        if self.teacher is not None and distill.mode == "advantage":  # A_t = r_t + w * A_task_t
            advantages = distillation_advantages(
                teacher_logprobs=batch.extra["teacher_logprobs"],
                logprobs=policy_logprobs,
                mask=batch.response_mask,
                task_advantages=advantages,
                reward_weight=distill.reward_weight,
            )
        if alg.whiten_advantages:
            advantages = whiten_advantages(advantages, batch.response_mask)
        batch.extra["advantages"] = advantages
        if adv.returns is not None:
            batch.extra["returns"] = adv.returns
        if self.critic is not None:
            metrics.update(value_metrics(batch.extra["values"], batch.extra["returns"], batch.response_mask))
        return metrics

    def _folds_into_rewards(self) -> bool:
        """Whether a KL term (to the reference, or a teacher's) is added to the token rewards."""
        alg, distill = self.config.algorithm, self.config.distill
        return (self.reference is not None and alg.kl_placement == "reward") or (
            self.teacher is not None and distill.mode == "reward"
        )

    def _cut_values(self, groups: list[ScoredGroup], batch: RolloutBatch) -> dict[str, float]:
        """SPO: ``batch.extra["sampling_logprobs"]`` (the rollout's logprobs, which define the cut
        points) and ``batch.extra["cut_values"]`` (Monte Carlo values at the cut points, from
        ``algorithm.spo_continuations`` continuations each, :mod:`rlvr.training.segment_values`);
        returns the ``spo/*`` cost metrics."""
        alg = self.config.algorithm
        logprobs = batch.old_logprobs.detach().clone()  # before any recomputation
        batch.extra["sampling_logprobs"] = logprobs
        if alg.spo_tree:  # SPO-tree: the tree's own samples are the Monte Carlo values
            batch.extra["cut_values"] = torch.zeros_like(logprobs, dtype=torch.float64)
            return {}
        with self.parallel.gathered(self.model):  # the policy that sampled the completions
            cut = estimate_cut_values(
                engine=self.engine,
                reward=self.reward,
                problems=[self.task.train[g.prompt_index] for g in groups],
                groups=groups,
                sampling_logprobs=logprobs.cpu(),
                mask=batch.response_mask.cpu(),
                sampling=self.sampling,
                step=self.step,
                continuations=alg.spo_continuations,
                spo_threshold=alg.spo_threshold,
                spo_interval=alg.spo_interval,
                spo_max_cuts=alg.spo_max_cuts,
            )
        batch.extra["cut_values"] = cut.values.to(self.device)
        return cut.metrics

    def score_with_teacher(self, batch: RolloutBatch) -> dict[str, float]:
        """On-policy distillation: the teacher's log-probabilities of the sampled tokens into
        ``batch.extra["teacher_logprobs"]`` [B, T], computed like the reference model's (same
        micro-batches, temperature and autocast); returns ``distill/reverse_kl`` (mean over the
        response tokens of all ranks of log pi_student - log pi_teacher) and ``distill/teacher_logprob``.
        """
        settings = self.update_settings
        with torch.no_grad():
            batch.extra["teacher_logprobs"] = compute_logprobs(
                self.teacher,
                batch,
                settings.temperature,
                self.config.training.micro_batch_tokens,
                settings.autocast_dtype,
            )
        sums = distillation_metrics(
            teacher_logprobs=batch.extra["teacher_logprobs"],
            logprobs=batch.extra.get("untruncated_old_logprobs", batch.old_logprobs),
            mask=batch.response_mask,
        )
        reverse_kl, teacher_logprob, tokens = all_reduce_sum(sums).tolist()
        return {
            "distill/reverse_kl": reverse_kl / max(tokens, 1.0),
            "distill/teacher_logprob": teacher_logprob / max(tokens, 1.0),
        }

    def _critic_schedule(self, batch: RolloutBatch, policy_schedule: list[torch.Tensor] | None) -> list:
        """The critic's mini-batches: the policy's, or ``critic.updates_per_step`` of its own per epoch."""
        c = self.config
        if policy_schedule is not None and c.critic.updates_per_step is None:
            return policy_schedule
        return self._schedule(batch, c.critic.updates_per_step or c.training.updates_per_step)

    # --- value pretraining ---------------------------------------------------------------------

    def pretrain_critic(self) -> list[dict[str, float]]:
        """Value pretraining (VAPO, arXiv 2504.05118 sec. 3.1): ``critic.pretrain_steps`` steps that
        train only the critic, on Monte-Carlo returns of completions sampled from the initial policy.

        The policy's weights, optimizer and schedule are untouched. Each step draws prompts from the
        training sampler (so training starts after them in the prompt order) and samples with seeds
        of its own. One line per step goes to ``critic_pretrain.jsonl`` (rewritten from the start:
        a run killed during pretraining restarts it from scratch on resume; :meth:`run` saves a
        checkpoint once it is done, so a resumed run never pretrains again).
        """
        from rlvr.logging import jsonable

        assert self.critic is not None
        steps = self.config.critic.pretrain_steps
        history: list[dict[str, float]] = []
        path = self.out / CRITIC_PRETRAIN_FILE
        if rank() == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            path.write_text("")
        for i in range(steps):
            metrics = self.critic_pretrain_step(i)
            history.append(metrics)
            if rank() == 0:
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps({"pretrain_step": i + 1, **jsonable(metrics)}) + "\n")
            every = max(self.config.logging.log_every, 1)
            if (i + 1) % every == 0 or i + 1 == steps:
                self.log(
                    f"value pretraining {i + 1}/{steps}: value loss {metrics.get('value/loss', float('nan')):.4f}, "
                    f"explained variance {metrics.get('value/explained_variance', float('nan')):.3f}, "
                    f"value mean {metrics.get('value/mean', float('nan')):.3f} "
                    f"vs return mean {metrics.get('value/return_mean', float('nan')):.3f}"
                )
        self.critic_pretrained = True
        return history

    def critic_pretrain_step(self, index: int) -> dict[str, float]:
        """One value-pretraining step: sample, score, Monte-Carlo returns, critic updates."""
        assert self.critic is not None
        alg = self.config.algorithm
        collector = copy.copy(self.collector)
        collector.sampling = dataclasses.replace(
            self.sampling, seed=self.sampling.seed + PRETRAIN_SEED_OFFSET + 7919 * index
        )
        with self.parallel.gathered(self.model):
            rollouts = collector.collect(0)
        if all_reduce_sum(torch.tensor(float(len(rollouts.groups)))).item() == 0:
            return {"critic/skipped_updates": 1.0}
        batch = self._make_batch(rollouts.groups).to(self.device)
        metrics = self.critic.pretrain_step(batch, self._critic_schedule(batch, None), alg)
        metrics.update({k: v for k, v in rollouts.metrics.items() if k.startswith("reward/")})
        return metrics

    def _needs_recompute(self) -> bool:
        """Old logprobs: the rollout's are reused when the trainer computes in float32.

        The engine samples from this very model, so the policy has not changed since the rollout;
        in half precision (bfloat16 weights or autocast, also a bfloat16 rollout alone:
        ``rollout.autocast``) the cached decode and the full forward differ enough to bias the ratio,
        so they are recomputed there.
        """
        half = self.update_settings.autocast_dtype is not None or self.engine.autocast_dtype is not None
        alg = self.config.algorithm
        if self.vllm_sync is not None:
            return True  # vLLM samples with its own kernels: its logprobs are compared, not reused
        if needs_trainer_logprobs(alg.mismatch_is, alg.mismatch_mask):
            return True  # the mismatch corrections compare the rollout's logprobs with these
        if self.teacher is not None and self.ahead is None:
            return True  # the same forward as the teacher's: equal weights give r_t = 0 exactly
        return half or next(self.model.parameters()).dtype != torch.float32

    def _make_batch(self, groups: list[ScoredGroup]) -> RolloutBatch:
        completions, rewards, correct, group_ids, keys = [], [], [], [], []
        for g, group in enumerate(groups):
            completions += group.completions
            rewards += group.rewards
            correct += group.correct
            group_ids += [g] * len(group.completions)
            keys += [(group.position, j) for j in range(len(group.completions))]
        parts = [c for group in groups for c in group.reward_components]  # GDPO's reward components
        rows, layout = training_rows(completions)  # a trajectory rendered anew each turn: a row per turn
        if layout is not None:
            keys = [(*keys[t], k) for t, k in zip(layout.trajectory, layout.turns, strict=True)]
            rewards, correct, group_ids, parts = (
                [x[t] for t in layout.trajectory] if len(x) == len(completions) else x
                for x in (rewards, correct, group_ids, parts)
            )
        batch = make_batch(rows, rewards, correct, group_ids, self.engine.pad_id, row_keys=keys)
        batch.layout = layout
        if batch.size and len(parts) == batch.size:
            components = torch.tensor(parts, dtype=torch.float64)
            batch.extra["reward_components"] = components.reshape(batch.size, -1)
        if self.episodes is not None and self.config.env.turn_rewards:  # each step's reward on its turn's end
            if layout is None:
                batch.extra["token_rewards"] = turn_reward_tensor(
                    completions, tuple(batch.response_mask.shape)
                )
            else:
                shape = (len(completions), max(layout.lengths, default=0) or 1)
                batch.extra["token_rewards"] = layout.scatter_tokens(
                    turn_reward_tensor(completions, shape), batch.response_mask.shape[1]
                )
        return batch

    def _apply_completion_filters(
        self, batch: RolloutBatch, names: tuple[str, ...], metrics: dict
    ) -> RolloutBatch:
        layout = batch.layout  # trajectories split into turns: a trajectory is kept or dropped whole
        rows = layout.gather_rows if layout is not None else lambda x: x
        tokens = layout.gather_tokens if layout is not None else lambda x: x
        out = apply_filters(
            names,
            rewards=rows(batch.rewards),
            group_ids=rows(batch.group_ids),
            correct=rows(batch.correct),
            advantages=sequence_advantages(tokens(batch.extra["advantages"]), tokens(batch.response_mask)),
            config=self.config.algorithm,
        )
        metrics.update(out.metrics)
        keep = (
            out.keep if layout is None else out.keep[torch.tensor(layout.trajectory, device=out.keep.device)]
        )
        return _select_rows(batch, keep.nonzero().squeeze(1).tolist())

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The ``eval`` section's benchmarks with the current policy (:mod:`rlvr.evaluation.in_training`)."""
        with self.parallel.gathered(self.model):
            return self.evaluator(self.engine, self.tokenizer)

    def _keep_best(self, metrics: dict[str, float]) -> None:
        if self.best_model is not None and self.best_model.update(
            self.step, metrics, self.model, self.tokenizer
        ):
            self.log(
                f"best {self.best_model.metric} so far ({metrics[self.best_model.metric]:.4g}): saved to {self.best_model.dir}"
            )

    # --- the run -------------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
            "critic_pretrained": self.critic_pretrained,
            "generated_ahead": self.ahead.state_dict() if self.ahead is not None else None,
        }

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])
        self.critic_pretrained = bool(state.get("critic_pretrained", self.critic_pretrained))
        if self.ahead is not None:  # without a round in flight, the next step generates its own
            self.ahead.load_state_dict(state.get("generated_ahead"))

    def _critic_parts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Checkpointed beside the policy: the critic's weights and optimizer, and its schedule."""
        return self.critic.checkpoint_parts() if self.critic is not None else ({}, {})

    def save(self) -> Path:
        from rlvr.training.checkpoint import save_checkpoint

        modules, extra_states = self._critic_parts()
        path = save_checkpoint(
            self.out,
            self.step,
            model=self.model,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer_state=self.trainer_state(),
            keep_last=self.config.checkpoint.keep_last,
            modules=modules,
            extra_states=extra_states,
        )
        self._saved_step = self.step
        return path

    def resume(self) -> bool:
        """Load the newest intact checkpoint of the run directory (a damaged one is skipped, with a
        message naming its file, for the one before it); False when there is none."""
        from rlvr.training.checkpoint import load_latest_checkpoint

        modules, extra_states = self._critic_parts()
        loaded = load_latest_checkpoint(
            self.out,
            log=self.log,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            modules=modules,
            extra_states=extra_states,
        )
        if loaded is None:
            return False
        path, state = loaded
        self.load_trainer_state(state)
        if self.vllm_sync is not None:  # the engine was built from model.path: serve the checkpoint's weights
            self.vllm_sync.push(self.model, check=True)
        self._saved_step = self.step
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def _prepare_run_dir(self, *, resume: bool, overwrite: bool, force_resume: bool) -> None:
        """Rank 0 checks the run directory (:func:`rlvr.training.run_dir.prepare_run_dir`) and every
        rank gets its verdict, so that all of them start or all of them raise the same error."""
        from rlvr.training.run_dir import prepare_run_dir

        verdict: tuple[str, Any] = ("start", [])
        if rank() == 0:
            try:
                notes = prepare_run_dir(
                    self.out,
                    to_dict(self.given_config),
                    resume=resume,
                    overwrite=overwrite,
                    force_resume=force_resume,
                )
                verdict = ("start", notes)
            except (ConfigError, OSError) as err:  # an OSError too: the other ranks wait for the verdict
                verdict = ("refuse", str(err))
        kind, value = broadcast_object(verdict)  # type: ignore[misc]
        if kind == "refuse":
            raise ConfigError(value)
        for note in value:
            self.log(note)

    def run(self, *, resume: bool = False, overwrite: bool = False, force_resume: bool = False) -> RunResult:
        """Train from step 0, or with ``resume`` from the latest checkpoint; see :func:`train`."""
        from rlvr.logging import ConsoleProgress, MetricsLogger
        from rlvr.training.run_dir import write_config

        c = self.config
        resume = resume or force_resume
        self._prepare_run_dir(resume=resume, overwrite=overwrite, force_resume=force_resume)
        resumed = self.resume() if resume else False
        if rank() == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            write_config(self.out, to_dict(self.given_config))
        total, trainable = count_parameters(self.model)
        per_step = c.rollout.prompts_per_step * c.rollout.samples_per_prompt
        self.log(
            f"model {c.model.path}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable) on {self.device}; "
            f"task {self.task.name}: {len(self.task.train)} train / {len(self.task.test)} held-out problems; "
            f"{c.rollout.prompts_per_step} prompts x {c.rollout.samples_per_prompt} samples = {per_step} completions "
            f"per step, {c.training.updates_per_step} optimizer step(s) per epoch, {c.training.ppo_epochs} epoch(s); "
            f"{self.parallel.describe()}"
        )
        if self.critic is not None:
            self.log(self.critic.describe())
        logger = MetricsLogger(
            self.out,
            tensorboard=c.logging.tensorboard,
            wandb_project=c.logging.wandb_project,
            config=to_dict(self.given_config),
        )
        if resumed:
            logger.truncate_after(self.step)
        eval_before = self._read_eval_before() if resumed else self.evaluate()
        if not resumed:
            self.log(
                f"held-out accuracy before training: {eval_before.get('eval/accuracy', float('nan')):.1%}"
            )
            logger.log(0, {**eval_before, "data/skipped_rows": float(len(self.task.skipped_rows))})
            if rank() == 0:
                (self.out / "eval_before.json").write_text(json.dumps(eval_before) + "\n")
            self._keep_best(eval_before)
        if not self.critic_pretrained:  # VAPO's value pretraining, before any policy update
            self.pretrain_critic()
            self.save()  # a resumed run starts after it
        progress = ConsoleProgress(c.training.steps, start_step=self.step, every=c.logging.log_every)
        previous = signal.signal(signal.SIGINT, self._request_stop)
        eval_after: dict[str, float] = {}
        try:
            interrupted = self._train_steps(logger, progress)
            if not interrupted:
                if self._saved_step != self.step:  # saved before the final evaluation, which may be long
                    self.save()
                interrupted = self._stop_agreed()  # a Ctrl-C during that save stops here
                if interrupted:
                    self.log(f"interrupted: the state at step {self.step} is saved")
            if not interrupted:
                self._stop_at_once = True  # nothing is left unsaved: a Ctrl-C from now on stops at once
                eval_after = self._finish(logger)
        except KeyboardInterrupt:
            if not self._stop_at_once:
                raise
            interrupted = True
            self.log(
                f"interrupted after training: the state at step {self.step} is saved; --resume runs the "
                "final evaluation and writes the final model"
            )
        finally:
            self._stop_at_once = False
            signal.signal(signal.SIGINT, previous)  # only once the run is saved
        logger.close()
        return RunResult(self.out, self.step, eval_before, eval_after, interrupted)

    def _train_steps(self, logger: Any, progress: Any) -> bool:
        """The steps up to ``training.steps``, with their evaluations, samples and checkpoints; True when
        a Ctrl-C stopped them (after a checkpoint of the last step done)."""
        c = self.config
        while self.step < c.training.steps:
            metrics = self.train_step(self.step)
            self.step += 1
            if c.eval.every and self.step % c.eval.every == 0 and self.step < c.training.steps:
                evaluation = self.evaluate()
                self._keep_best(evaluation)
                metrics.update(evaluation)
            logger.log(self.step, metrics)
            progress.update(self.step, metrics, {k: v for k, v in metrics.items() if k.startswith("time/")})
            if c.logging.sample_every and self.step % c.logging.sample_every == 0:
                with self.parallel.gathered(self.model):  # generation runs no collective
                    samples = self._samples() if rank() == 0 else []
                logger.log_samples(self.step, samples)
            if c.checkpoint.every and self.step % c.checkpoint.every == 0:
                self.save()
            if self._stop_agreed():
                self.log(f"interrupted: saving a checkpoint at step {self.step}")
                if self._saved_step != self.step:
                    self.save()
                return True
        return False

    def _finish(self, logger: Any) -> dict[str, float]:
        """The final evaluation and the final model (``RUN_DIR/final``); returns the evaluation."""
        eval_after = self.evaluate()
        logger.log(self.step, eval_after)
        self._keep_best(eval_after)
        state = export_state(self.model)  # every rank: gathering a sharded model is collective
        if rank() == 0:
            save_model_dir(self.model, self.tokenizer, self.out / "final", state_dict=state)
        return eval_after

    def _stop_agreed(self) -> bool:
        """Whether a Ctrl-C reached any rank: every rank stops at the same step (collective)."""
        return all_reduce_max(torch.tensor(float(self._stop_requested))).item() > 0

    def _read_eval_before(self) -> dict[str, float]:
        path = self.out / "eval_before.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _samples(self) -> list[dict[str, Any]]:
        """A few greedy completions of training prompts, to read what the policy writes."""
        problems = self.task.train[:4]
        prompts = self.train_prompts[:4]
        if self.episodes is not None:  # whole conversations, turn by turn
            greedy = dataclasses.replace(self.sampling, n=1, temperature=0.0, seed=0)
            return [
                {
                    "conversation": t.conversation,
                    "answer": str(pr.answer),
                    "reward": t.reward,
                    "turns": t.turns,
                    "truncation": t.truncation,
                    "error": t.error,
                }
                for t, pr in zip(self.episodes.run(self.engine, problems, greedy), problems, strict=True)
            ]
        completions = self.engine.generate(
            prompts,
            SamplingParams(
                n=1,
                max_new_tokens=self.sampling.max_new_tokens,
                temperature=0.0,
                stop_strings=self.task.stop_strings,
            ),
        )
        return [
            {
                "prompt": self.tokenizer.decode(p),
                "completion": c.text,
                "answer": str(pr.answer),
                "finish": c.finish_reason,
            }
            for p, c, pr in zip(prompts, completions, problems, strict=True)
        ]

    def _request_stop(self, signum: int, frame: Any) -> None:
        """SIGINT: stop after the step in progress and save; a second one, or one once the final state is
        saved, stops at once."""
        if self._stop_requested or self._stop_at_once:
            raise KeyboardInterrupt
        self._stop_requested = True


def _select_rows(batch: RolloutBatch, rows: list[int]) -> RolloutBatch:
    index = torch.tensor(rows, dtype=torch.long, device=batch.input_ids.device)
    return dataclasses.replace(
        batch,
        input_ids=batch.input_ids[index],
        attention=batch.attention[index],
        response_mask=batch.response_mask[index],
        old_logprobs=batch.old_logprobs[index],
        rewards=batch.rewards[index],
        correct=batch.correct[index],
        group_ids=batch.group_ids[index],
        prompt_lengths=[batch.prompt_lengths[r] for r in rows],
        response_lengths=[batch.response_lengths[r] for r in rows],
        extra={k: v[index] for k, v in batch.extra.items()},
        row_keys=[batch.row_keys[r] for r in rows],
        layout=None,  # read only before rows are dropped (by the advantage estimator)
    )


def _silent(*args: Any, **kwargs: Any) -> None:
    """The log of ranks other than 0."""


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train(
    config: Config,
    *,
    resume: bool = False,
    overwrite: bool = False,
    force_resume: bool = False,
    log: Any = print,
    task: Task | None = None,
) -> RunResult:
    """Train with ``config`` in the run directory ``logging.output_dir``, which must be new or empty.

    With ``resume``, continue from the run directory's latest intact checkpoint (the settings of
    :data:`rlvr.training.run_dir.SAFE_TO_CHANGE_ON_RESUME` may differ from the saved config, others
    only with ``force_resume``, which implies ``resume``); with ``overwrite``, delete the run the
    directory holds and start again. The command line's ``--resume``, ``--force-resume`` and
    ``--overwrite`` set them. ``task``: the task already built from ``config`` (None builds it).
    """
    return Trainer(config, log=log, task=task).run(
        resume=resume, overwrite=overwrite, force_resume=force_resume
    )
