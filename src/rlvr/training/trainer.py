"""``rlvr train``: the RL loop.

One step, top to bottom (shared/DESIGN.md's diagram)::

    prompts --sampler--> engine.generate (n per prompt) --> rewards --> group filters
        --> advantages (+ KL folded into rewards, + whitening) --> completion filters
        --> ppo_epochs x updates_per_step optimizer steps --> the engine sees the new weights

Every choice in it is a registered function named by the config; the loop never branches on an
algorithm's name.
"""

from __future__ import annotations

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

from rlvr.algorithms.advantages import ADVANTAGE_TENSOR_ARGS, ADVANTAGES, whiten_advantages
from rlvr.algorithms.config import hyperparameters_for
from rlvr.algorithms.filters import apply_filters, filter_stages, sequence_advantages
from rlvr.algorithms.kl import fold_kl_into_rewards, kl_penalty
from rlvr.algorithms.samplers import PromptSampler, difficulties_from_problems
from rlvr.algorithms.validation import needs_reference_model
from rlvr.config import Config, to_dict
from rlvr.distributed import rank
from rlvr.rewards.composite import CompositeReward
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.types import SamplingParams
from rlvr.training.batch import RolloutBatch, make_batch
from rlvr.training.model import (
    ReferenceModel,
    count_parameters,
    load_policy,
    load_tokenizer,
    resolve_device,
    save_model_dir,
)
from rlvr.training.rollouts import RolloutCollector, ScoredGroup, score_completions
from rlvr.training.setup import build_optimizer, build_task, tokenize_prompts
from rlvr.training.update import UpdateSettings, compute_logprobs, policy_update


@dataclass
class RunResult:
    output_dir: Path
    steps: int
    eval_before: dict[str, float]
    eval_after: dict[str, float]
    interrupted: bool = False


class Trainer:
    """Holds a run's parts; :meth:`run` trains from step 0 or from the latest checkpoint."""

    def __init__(self, config: Config, *, log: Any = print) -> None:
        self.config, self.log = config, log
        c = config
        self.out = Path(c.logging.output_dir)
        self.device = resolve_device(c.training.device)
        if c.training.cpu_threads is not None:
            torch.set_num_threads(c.training.cpu_threads)
        random.seed(c.training.seed)
        torch.manual_seed(c.training.seed)
        self.tokenizer = load_tokenizer(c.model)
        self.model = load_policy(c.model, self.device)
        self.task = build_task(c)
        self.reward = CompositeReward(self.task.rewards)
        self.train_prompts = tokenize_prompts(
            self.task.train, self.task.template, self.tokenizer, c.rollout.max_prompt_tokens
        )
        self.sampler = PromptSampler.from_config(
            len(self.task.train),
            c.algorithm,
            seed=c.training.seed,
            difficulties=difficulties_from_problems(self.task.train)
            if c.algorithm.sampler == "curriculum"
            else None,
        )
        self.engine = HFEngine(self.model, self.tokenizer, max_batch_sequences=c.rollout.max_batch_sequences)
        self.reference = ReferenceModel(self.model) if needs_reference_model(c.algorithm) else None
        self.optimizer, self.scheduler = build_optimizer(self.model, c)
        self.sampling = SamplingParams(
            n=c.rollout.samples_per_prompt,
            max_new_tokens=c.rollout.max_new_tokens,
            temperature=c.rollout.temperature,
            top_p=c.rollout.top_p,
            top_k=c.rollout.top_k,
            stop_strings=self.task.stop_strings,
            seed=c.training.seed,
        )
        self.collector = RolloutCollector(
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
        self.update_settings = UpdateSettings(
            ppo_epochs=c.training.ppo_epochs,
            updates_per_step=c.training.updates_per_step,
            micro_batch_tokens=c.training.micro_batch_tokens,
            max_grad_norm=c.optim.max_grad_norm,
            temperature=c.rollout.temperature if c.rollout.temperature > 0 else 1.0,
            norm_length=c.algorithm.loss_norm_length or c.rollout.max_new_tokens,
        )
        self.generator = torch.Generator().manual_seed(c.training.seed)
        self.step = 0
        self._stop_requested = False

    # --- one step ------------------------------------------------------------------------------

    def train_step(self, step: int) -> dict[str, float]:
        c, alg = self.config, self.config.algorithm
        t0 = time.perf_counter()
        rollouts = self.collector.collect(step)  # prompts -> completions -> rewards -> group filters
        metrics = dict(rollouts.metrics)
        metrics.update(rollouts.timings)
        if not rollouts.groups:
            self.log(f"step {step}: every group was filtered out; no update")
            metrics["optim/skipped_updates"] = 1.0
            return metrics
        batch = self._make_batch(rollouts.groups).to(self.device)
        t1 = time.perf_counter()
        if self._needs_recompute():
            batch.old_logprobs = compute_logprobs(
                self.model, batch, self.update_settings.temperature, c.training.micro_batch_tokens
            )
        rewards = batch.rewards
        if self.reference is not None:  # KL to the reference policy, in the loss or in the reward
            with self.reference.active() as ref_model:
                batch.extra["ref_logprobs"] = compute_logprobs(
                    ref_model, batch, self.update_settings.temperature, c.training.micro_batch_tokens
                )
            kl = kl_penalty(
                logprobs=batch.old_logprobs,
                ref_logprobs=batch.extra["ref_logprobs"],
                mask=batch.response_mask,
                kl_estimator=alg.kl_estimator,
                kl_clamp=alg.kl_clamp,
            )
            metrics["kl/reference"] = float((kl.sum() / batch.response_mask.sum().clamp(min=1)).item())
            if alg.kl_placement == "reward":
                rewards = fold_kl_into_rewards(
                    rewards=rewards, kl=kl, mask=batch.response_mask, kl_coef=alg.kl_coef
                )
        estimator = ADVANTAGES.get(alg.advantage)
        adv = estimator(
            rewards=rewards,
            mask=batch.response_mask,
            group_ids=batch.group_ids,
            values=batch.extra.get("values"),
            **hyperparameters_for(estimator, alg, ADVANTAGE_TENSOR_ARGS),
        )
        advantages = adv.advantages
        if alg.whiten_advantages:
            advantages = whiten_advantages(advantages, batch.response_mask)
        batch.extra["advantages"] = advantages
        metrics.update(adv.metrics)
        _, after = filter_stages(alg.filters)
        if after:  # filters that need advantages (CPPO) drop completions now
            batch = self._apply_completion_filters(batch, after, metrics)
        metrics.update(
            policy_update(
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                batch=batch,
                algorithm=alg,
                settings=self.update_settings,
                generator=self.generator,
            )
        )
        t2 = time.perf_counter()
        metrics["time/update"] = t2 - t1
        metrics["time/step"] = t2 - t0
        tokens = float(batch.response_mask.sum() + sum(batch.prompt_lengths))
        metrics["throughput/tokens_per_s"] = tokens / max(t2 - t0, 1e-9)
        metrics["memory/peak_gb"] = _peak_memory_gb(self.device)
        return metrics

    def _needs_recompute(self) -> bool:
        """Old logprobs: the rollout's are reused when the trainer computes in float32.

        The engine samples from this very model, so the policy has not changed since the rollout;
        in half precision the cached decode and the full forward differ enough to bias the ratio,
        so they are recomputed there.
        """
        return next(self.model.parameters()).dtype != torch.float32

    def _make_batch(self, groups: list[ScoredGroup]) -> RolloutBatch:
        completions, rewards, correct, group_ids = [], [], [], []
        for g, group in enumerate(groups):
            completions += group.completions
            rewards += group.rewards
            correct += group.correct
            group_ids += [g] * len(group.completions)
        return make_batch(completions, rewards, correct, group_ids, self.engine.pad_id)

    def _apply_completion_filters(
        self, batch: RolloutBatch, names: tuple[str, ...], metrics: dict
    ) -> RolloutBatch:
        out = apply_filters(
            names,
            rewards=batch.rewards,
            group_ids=batch.group_ids,
            correct=batch.correct,
            advantages=sequence_advantages(batch.extra["advantages"], batch.response_mask),
            config=self.config.algorithm,
        )
        metrics.update(out.metrics)
        keep = out.keep.nonzero().squeeze(1).tolist()
        return _select_rows(batch, keep)

    # --- evaluation ----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out accuracy on the task's test split (greedy by default)."""
        e = self.config.eval
        problems = self.task.test[: e.num_problems] if e.num_problems else self.task.test
        if not problems:
            return {}
        prompts = tokenize_prompts(
            problems, self.task.template, self.tokenizer, self.config.rollout.max_prompt_tokens
        )
        n = e.samples_per_problem if e.temperature > 0 else 1
        completions = self.engine.generate(
            prompts,
            SamplingParams(
                n=n,
                max_new_tokens=e.max_new_tokens or self.config.rollout.max_new_tokens,
                temperature=e.temperature,
                top_p=self.config.rollout.top_p if e.temperature > 0 else 1.0,
                stop_strings=self.task.stop_strings,
                seed=self.config.training.seed + 1,
            ),
        )
        result, correct = score_completions(
            self.reward, completions, problems, n, e.max_new_tokens or self.config.rollout.max_new_tokens
        )
        return {
            "eval/accuracy": sum(correct) / len(correct),
            "eval/reward": sum(result.values) / len(result.values),
            "eval/length_mean": sum(len(c.token_ids) for c in completions) / len(completions),
        }

    # --- the run -------------------------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_trainer_state(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.sampler.load_state_dict(state["sampler"])
        self.generator.set_state(state["generator"])

    def save(self) -> Path:
        from rlvr.training.checkpoint import save_checkpoint

        return save_checkpoint(
            self.out,
            self.step,
            model=self.model,
            tokenizer=self.tokenizer,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            trainer_state=self.trainer_state(),
            keep_last=self.config.checkpoint.keep_last,
        )

    def resume(self) -> bool:
        """Load the latest checkpoint of the run directory; False when there is none."""
        from rlvr.training.checkpoint import latest_checkpoint, load_checkpoint

        path = latest_checkpoint(self.out)
        if path is None:
            return False
        state = load_checkpoint(path, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler)
        self.load_trainer_state(state)
        self.log(f"resumed from {path} at step {self.step}")
        return True

    def run(self, *, resume: bool = False) -> RunResult:
        from rlvr.logging import ConsoleProgress, MetricsLogger

        c = self.config
        resumed = self.resume() if resume else False
        if rank() == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(to_dict(c), indent=2, default=str) + "\n")
        total, trainable = count_parameters(self.model)
        per_step = c.rollout.prompts_per_step * c.rollout.samples_per_prompt
        self.log(
            f"model {c.model.path}: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable) on {self.device}; "
            f"task {self.task.name}: {len(self.task.train)} train / {len(self.task.test)} held-out problems; "
            f"{c.rollout.prompts_per_step} prompts x {c.rollout.samples_per_prompt} samples = {per_step} completions "
            f"per step, {c.training.updates_per_step} optimizer step(s) per epoch, {c.training.ppo_epochs} epoch(s)"
        )
        logger = MetricsLogger(
            self.out,
            tensorboard=c.logging.tensorboard,
            wandb_project=c.logging.wandb_project,
            config=to_dict(c),
        )
        if resumed:
            logger.truncate_after(self.step)
        eval_before = self._read_eval_before() if resumed else self.evaluate()
        if not resumed:
            self.log(
                f"held-out accuracy before training: {eval_before.get('eval/accuracy', float('nan')):.1%}"
            )
            logger.log(0, eval_before)
            (self.out / "eval_before.json").write_text(json.dumps(eval_before) + "\n")
        progress = ConsoleProgress(c.training.steps, start_step=self.step, every=c.logging.log_every)
        previous = signal.signal(signal.SIGINT, self._request_stop)
        interrupted = False
        try:
            while self.step < c.training.steps:
                metrics = self.train_step(self.step)
                self.step += 1
                if c.eval.every and self.step % c.eval.every == 0 and self.step < c.training.steps:
                    metrics.update(self.evaluate())
                logger.log(self.step, metrics)
                progress.update(
                    self.step, metrics, {k: v for k, v in metrics.items() if k.startswith("time/")}
                )
                if c.logging.sample_every and self.step % c.logging.sample_every == 0:
                    logger.log_samples(self.step, self._samples())
                if c.checkpoint.every and self.step % c.checkpoint.every == 0:
                    self.save()
                if self._stop_requested:
                    interrupted = True
                    self.log(f"interrupted: saving a checkpoint at step {self.step}")
                    self.save()
                    break
        finally:
            signal.signal(signal.SIGINT, previous)
        eval_after: dict[str, float] = {}
        if not interrupted:
            eval_after = self.evaluate()
            logger.log(self.step, eval_after)
            self.save()
            save_model_dir(self.model, self.tokenizer, self.out / "final")
        logger.close()
        return RunResult(self.out, self.step, eval_before, eval_after, interrupted)

    def _read_eval_before(self) -> dict[str, float]:
        path = self.out / "eval_before.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def _samples(self) -> list[dict[str, Any]]:
        """A few greedy completions of training prompts, to read what the policy writes."""
        problems = self.task.train[:4]
        prompts = self.train_prompts[:4]
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
        if self._stop_requested:  # a second Ctrl-C stops at once
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
    )


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def train(config: Config, *, resume: bool = False, log: Any = print) -> RunResult:
    """Train with ``config``; with ``resume``, continue from the run directory's latest checkpoint."""
    return Trainer(config, log=log).run(resume=resume)
