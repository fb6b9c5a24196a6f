"""The critic of PPO-style training: a value model, its own optimizer, its update and its state.

**The value model** is the transformer body of a causal LM (``AutoModelForCausalLM(...).base_model``,
the LM head dropped) with a linear value head ``hidden_size -> 1``. By default it starts from the
policy's initial weights (``model.path``); ``critic.path`` names any other causal LM that shares the
policy's tokenizer. ``critic.lora_rank > 0`` trains a LoRA adapter on the body instead of all its
weights (peft); the value head is always trained in full. The head starts at zero (weight and bias),
so every value is 0 before the first update: no initial bias toward any return.

**Which hidden state gives which value.** In the response-aligned layout (:mod:`rlvr.training.batch`)
response token ``t`` of a row sits at position ``P + t`` and the logits at ``P - 1 + t`` predict it.
The value of response token ``t`` is V(s_t), the value of the state *before* the token is emitted
(the prompt and response tokens ``< t``); the last hidden state at position ``P - 1 + t`` is the one
that has read exactly that state, so::

    values[:, t] = head(hidden[:, P - 1 + t])          [B, T], the same positions as the logits

and GAE's ``delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)`` pairs the action ``a_t`` (token ``t``) with
the states before and after it. The value after the last response token is 0 (the episode ends;
the estimators in :mod:`rlvr.algorithms.advantages` assume it), so the final hidden state is unused.

**The update** mirrors the policy's: the same mini-batches (or ``critic.updates_per_step`` of its
own), micro-batches of at most ``training.micro_batch_tokens`` tokens, every loss aggregated with the
mini-batch's global token and sequence counts, a non-finite loss or gradient norm skipping the step
on every rank. The loss is :func:`rlvr.algorithms.value.value_loss_fn` with the values at rollout
time as ``old_values`` and the estimator's ``returns`` as targets.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.value import VALUE_TENSOR_ARGS, explained_variance, value_loss_fn
from rlvr.config import Config
from rlvr.distributed import all_reduce_max, all_reduce_sum, world_size
from rlvr.errors import ConfigError
from rlvr.training.batch import MicroBatch, RolloutBatch, aligned_micro_batches
from rlvr.training.model import autocast_context, autocast_dtype, resolve_model_path, weights_dtype, with_lora
from rlvr.training.parallel import Parallel, clip_grad_norm
from rlvr.training.update import WeightedMetrics


class ValueModel(torch.nn.Module):
    """A causal LM's transformer body and a scalar value head: V(s_t) for every response token."""

    def __init__(
        self, body: torch.nn.Module, hidden_size: int, autocast_dtype: torch.dtype | None = None
    ) -> None:
        super().__init__()
        self.body = body
        self.autocast_dtype = autocast_dtype  # the body runs under torch.autocast in it (model.autocast)
        self.head = torch.nn.Linear(hidden_size, 1, dtype=torch.float32)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    def forward(self, mb: MicroBatch) -> torch.Tensor:
        """Values [b, t] of the micro-batch's response tokens (float32); padding holds garbage."""
        with autocast_context(mb.input_ids.device, self.autocast_dtype):
            out = self.body(
                input_ids=mb.input_ids,
                attention_mask=mb.attention,
                position_ids=mb.position_ids,
                use_cache=False,
            )
        start = mb.prompt_width - 1  # the hidden state that has read the prompt and response[:t]
        hidden = out.last_hidden_state[:, start : start + mb.response_width]
        # float32, unless FSDP2 mixed precision gathers the head in bfloat16 (parallel.mixed_precision)
        return self.head(hidden.to(self.head.weight.dtype)).float().squeeze(-1)


def load_value_model(config: Config, device: torch.device, *, min_vocab: int | None = None) -> ValueModel:
    """The value model of ``config``: ``critic.path`` (or ``model.path``) without its LM head, plus a head."""
    from transformers import AutoModelForCausalLM

    m, c = config.model, config.critic
    key, path = ("critic.path", c.path) if c.path is not None else ("model.path", m.path)
    try:
        lm = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(path),
            dtype=weights_dtype(m, device),
            trust_remote_code=m.trust_remote_code,
        )
    except OSError as e:
        raise ConfigError(
            f"setting '{key}': cannot load a causal LM for the critic from '{path}' ({e})"
        ) from None
    embeddings = lm.get_input_embeddings().num_embeddings
    if min_vocab is not None and embeddings < min_vocab:
        raise ConfigError(
            f"setting '{key}': '{path}' has {embeddings} token embeddings but the policy's tokenizer has "
            f"{min_vocab} tokens; the critic must use the policy's tokenizer"
        )
    if m.gradient_checkpointing:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    body = lm.base_model
    if body is lm:
        raise ConfigError(f"setting '{key}': {type(lm).__name__} exposes no transformer body (base_model)")
    if c.lora_rank > 0:
        body = with_lora(body, m, c.lora_rank, "critic.lora_rank")
    hidden_size = lm.config.get_text_config().hidden_size
    return ValueModel(body, hidden_size, autocast_dtype(m)).to(device)


def value_metrics(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """How well the values at rollout time [B, T] predicted the returns [B, T], over the global batch.

    ``value/explained_variance`` (1 - Var[R - V] / Var[R]), ``value/mean``, ``value/return_mean`` and
    ``value/rollout_mse`` = 0.5 * mean (V - R)^2: the critic's error on completions it has not been
    trained on yet (every mean over the response tokens of all ranks).
    """
    valid = mask.bool()
    v = torch.where(valid, values.detach().double(), 0.0)
    r = torch.where(valid, returns.detach().double(), 0.0)
    total_v, total_r, total_sq, count = all_reduce_sum(
        torch.stack([v.sum(), r.sum(), (0.5 * (v - r) ** 2).sum(), valid.sum().double()])
    ).tolist()
    count = max(count, 1.0)
    return {
        "value/explained_variance": explained_variance(values, returns, mask),
        "value/mean": total_v / count,
        "value/return_mean": total_r / count,
        "value/rollout_mse": total_sq / count,
    }


def monte_carlo_returns(batch: RolloutBatch, gamma: float) -> torch.Tensor:
    """G_t = sum_{s >= t} gamma^(s - t) r_s [B, T] for the batch's outcome rewards on the last tokens.

    Computed by the core's GAE with lambda = 1 and V = 0, where A_t = G_t exactly. Example, gamma =
    0.5, reward 1 on a 3-token response: G = (0.25, 0.5, 1).
    """
    from rlvr.algorithms.advantages import gae

    rewards, mask, group_ids, layout = batch.rewards, batch.response_mask, batch.group_ids, batch.layout
    if layout is not None:  # trajectories split into turns: the return runs over the whole trajectory
        rewards, mask, group_ids = layout.estimator_inputs(rewards, mask, group_ids)
    zeros = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    returns = gae(rewards=rewards, mask=mask, group_ids=group_ids, values=zeros, gamma=gamma, lam=1.0).returns
    return returns if layout is None else layout.scatter_tokens(returns, batch.response_mask.shape[1])


class Critic:
    """The value model with its optimizer and schedule: values for a batch, updates, checkpoint state."""

    def __init__(
        self,
        model: ValueModel,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        *,
        micro_batch_tokens: int,
        max_grad_norm: float,
        norm_length: int,
        parallel: Parallel | None = None,
    ) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.parallel = parallel
        self.micro_batch_tokens, self.max_grad_norm, self.norm_length = (
            micro_batch_tokens,
            max_grad_norm,
            norm_length,
        )

    @classmethod
    def from_config(
        cls,
        config: Config,
        device: torch.device,
        *,
        min_vocab: int | None = None,
        parallel: Parallel | None = None,
    ) -> Critic:
        """The critic of a run: its value model (sharded or replicated by ``parallel``), AdamW at
        ``critic.lr`` and its warmup/schedule.

        The schedule counts critic optimizer steps over the whole run: (``critic.pretrain_steps`` +
        ``training.steps``) x ``training.ppo_epochs`` x (``critic.updates_per_step`` or
        ``training.updates_per_step``). Betas, eps, weight decay and ``min_lr_ratio`` are ``optim``'s.
        """
        from rlvr.training.setup import build_optimizer

        c, t = config.critic, config.training
        model = load_value_model(config, device, min_vocab=min_vocab)
        if parallel is not None:
            model = parallel.prepare(model)
        # The policy's optimizer builder, given the critic's rate, schedule and number of steps.
        as_policy = dataclasses.replace(
            config,
            optim=dataclasses.replace(
                config.optim, lr=c.lr, warmup_steps=c.warmup_steps, schedule=c.schedule
            ),
            training=dataclasses.replace(
                t,
                steps=t.steps + c.pretrain_steps,
                updates_per_step=c.updates_per_step or t.updates_per_step,
            ),
        )
        optimizer, scheduler = build_optimizer(model, as_policy)
        return cls(
            model,
            optimizer,
            scheduler,
            micro_batch_tokens=t.micro_batch_tokens,
            max_grad_norm=c.max_grad_norm,
            norm_length=config.algorithm.loss_norm_length or config.rollout.max_new_tokens,
            parallel=parallel,
        )

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        if self.parallel is not None:
            self.parallel.reduce_gradients(params)

    def trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def values(self, batch: RolloutBatch) -> torch.Tensor:
        """V(s_t) [B, T] (float32) of every response token of ``batch``; exactly 0 on padding."""
        out = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.response_mask.device)
        was_training = self.model.training
        self.model.eval()
        for mb in aligned_micro_batches(batch, range(batch.size), self.micro_batch_tokens):
            values = self.model(mb)
            if not mb.is_idle:
                out[mb.rows, : mb.response_width] = values
        self.model.train(was_training)
        return torch.where(batch.response_mask.bool(), out, 0.0)

    def update(
        self, batch: RolloutBatch, schedule: list[torch.Tensor], algorithm: AlgorithmConfig
    ) -> dict[str, float]:
        """One optimizer step per entry of ``schedule`` on the value loss.

        ``batch.extra`` holds ``values`` (the critic's values at rollout time: the clip's old values)
        and ``returns`` (the targets). Metrics: ``value/loss`` (mean over the optimizer steps of each
        mini-batch's loss before its step), ``value/clipfrac``, ``critic/grad_norm``, ``critic/lr``,
        ``critic/updates``, ``critic/skipped_updates``.
        """
        loss_hp = hyperparameters_for(value_loss_fn, algorithm, VALUE_TENSOR_ARGS)
        old_values, returns = batch.extra["values"], batch.extra["returns"]
        params = list(self.trainable_parameters().values())
        clipfrac = WeightedMetrics()
        losses: list[float] = []
        grad_norms: list[float] = []
        skipped = updates = 0

        self.model.train()
        for rows in schedule:
            mask_rows = batch.response_mask[rows]
            num_tokens, num_sequences = all_reduce_sum(
                torch.stack([mask_rows.sum().double(), (mask_rows.sum(-1) > 0).sum().double()])
            ).tolist()
            loss_sum = torch.zeros((), dtype=torch.float64)
            bad = torch.zeros((), dtype=torch.float64)
            for mb in aligned_micro_batches(batch, rows.tolist(), self.micro_batch_tokens):
                if mb.is_idle:  # keeps this rank in step with the others' passes
                    (self.model(mb).sum() * 0.0).backward()
                    continue
                t = mb.response_width
                mask = batch.response_mask[mb.rows, :t]
                out = value_loss_fn(
                    values=self.model(mb),
                    old_values=old_values[mb.rows, :t],
                    returns=returns[mb.rows, :t],
                    mask=mask,
                    num_tokens=num_tokens,
                    num_sequences=num_sequences,
                    norm_length=self.norm_length,
                    **loss_hp,
                )
                # Each micro-batch's loss is its share of the mini-batch loss (global denominators).
                (out.loss * world_size()).backward()
                if not torch.isfinite(out.loss):
                    bad.fill_(1.0)
                    continue
                loss_sum += out.loss.detach().double().cpu()
                clipfrac.add({"value/clipfrac": out.metrics["value/clipfrac"]}, float(mask.sum()))
            self.reduce_gradients(params)
            grad_norm = clip_grad_norm(params, self.max_grad_norm)
            if not torch.isfinite(grad_norm):
                bad.fill_(1.0)
            if all_reduce_max(bad).item() > 0:  # all ranks skip together
                self.optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses.append(all_reduce_sum(loss_sum).item())
            grad_norms.append(float(grad_norm))
            updates += 1
        result = clipfrac.result()
        result["value/loss"] = sum(losses) / len(losses) if losses else float("nan")
        result["critic/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        result["critic/lr"] = self.scheduler.get_last_lr()[0]
        result["critic/updates"] = float(updates)
        result["critic/skipped_updates"] = float(skipped)
        return result

    def pretrain_step(
        self, batch: RolloutBatch, schedule: list[torch.Tensor], algorithm: AlgorithmConfig
    ) -> dict[str, float]:
        """One step of value pretraining (VAPO, arXiv 2504.05118 sec. 3.1) on completions of the
        initial policy: the targets are their Monte-Carlo returns, not bootstrapped from the critic.

        Returns :func:`value_metrics` of the values before this step's updates, and the update's.
        """
        values = self.values(batch)
        returns = monte_carlo_returns(batch, algorithm.gamma)
        batch.extra.update(values=values, returns=returns)
        metrics = value_metrics(values, returns, batch.response_mask)
        metrics.update(self.update(batch, schedule, algorithm))
        return metrics

    # --- checkpoint state --------------------------------------------------------------------------

    def checkpoint_parts(self) -> tuple[dict[str, tuple[Any, Any]], dict[str, Any]]:
        """What a checkpoint holds of the critic: its trainable weights and optimizer state (sharded,
        under ``critic`` in the checkpoint's ``state/``) and its schedule (``critic_scheduler.pt``).

        Frozen weights are not saved: they are the ones ``critic.path`` (or ``model.path``) loads.
        """
        return {"critic": (self.model, self.optimizer)}, {"critic_scheduler": self.scheduler}

    def describe(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for p in self.trainable_parameters().values())
        return f"critic: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable)"
