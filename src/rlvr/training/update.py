"""The policy update of one step: ``ppo_epochs`` passes of mini-batch optimizer steps.

Each mini-batch is split into micro-batches of at most ``micro_batch_tokens`` tokens whose
gradients accumulate. Every loss term is aggregated with the *mini-batch's* global token and
sequence counts (summed over ranks), so the accumulated gradient equals that of the whole
mini-batch in one pass, whatever the micro-batch split (tests/training/test_update.py).

The loss (each term's coefficient from the config; KL only with ``kl_placement: loss``)::

    loss = policy_loss + kl_coef * KL(pi || pi_ref) - entropy_coef * H(pi) + lm_coef * NLL(correct)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlvr.algorithms.config import AlgorithmConfig, hyperparameters_for
from rlvr.algorithms.covariance import SELECTION_ARGS
from rlvr.algorithms.entropy import entropy_from_logits, entropy_loss, token_logprobs
from rlvr.algorithms.kl import kl_loss
from rlvr.algorithms.lm_loss import positive_lm_loss
from rlvr.algorithms.losses import POLICY_LOSS_TENSOR_ARGS, POLICY_LOSSES
from rlvr.algorithms.mismatch import MISMATCH_TENSOR_ARGS, mismatch_correction, mismatch_enabled
from rlvr.algorithms.sampling_support import (
    SamplingSupport,
    neutralize_outside_support,
    truncated_token_logprobs,
)
from rlvr.distributed import all_reduce_max, all_reduce_sum, gather_objects, world_size
from rlvr.training.batch import (
    MicroBatch,
    RolloutBatch,
    aligned_micro_batches,
    global_row_positions,
    idle_micro_batch,
)
from rlvr.training.model import autocast_context
from rlvr.training.parallel import clip_grad_norm


@dataclass(frozen=True)
class UpdateSettings:
    ppo_epochs: int
    updates_per_step: int
    micro_batch_tokens: int
    max_grad_norm: float
    temperature: float
    norm_length: int
    """Dr. GRPO's constant for seq-mean-token-sum-norm (loss_norm_length or max_new_tokens)."""
    autocast_dtype: torch.dtype | None = None
    """Forward passes run under torch.autocast in this dtype (model.autocast); None: no autocast."""
    skip_zero_advantage: bool = False
    """Leave out completions that add nothing to the loss (:func:`rows_with_gradient`)."""
    support: SamplingSupport | None = None
    """``algorithm.replay_sampling_support``: the rollout's top-k / top-p. The policy's logprobs in
    the importance ratio are then those of the truncated distribution
    (:func:`~rlvr.algorithms.sampling_support.truncated_token_logprobs`); the KL, entropy and LM
    terms keep the untruncated ones. None: untruncated everywhere."""


def response_logits(model: Any, mb: MicroBatch, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Logits [b, t, V] that predict the micro-batch's response tokens (float32 under autocast)."""
    with autocast_context(mb.input_ids.device, autocast_dtype):
        out = model(
            input_ids=mb.input_ids,
            attention_mask=mb.attention,
            position_ids=mb.position_ids,
            use_cache=False,
            logits_to_keep=mb.response_width + 1,
        )
    logits = out.logits[:, : mb.response_width]
    return logits.float() if autocast_dtype is not None else logits


def response_targets(mb: MicroBatch) -> torch.Tensor:
    return mb.input_ids[:, mb.prompt_width : mb.prompt_width + mb.response_width]


@torch.no_grad()
def compute_logprobs(
    model: Any,
    batch: RolloutBatch,
    temperature: float,
    micro_batch_tokens: int,
    autocast_dtype: torch.dtype | None = None,
    rows: list[int] | None = None,
    support: SamplingSupport | None = None,
) -> torch.Tensor:
    """Per-token logprobs [B, T] of the batch's responses under ``model`` (no gradient); with
    ``rows``, only those rows are computed (the others stay 0). With ``support``, those of the
    top-k / top-p truncated distribution (``-inf`` outside it), 0 on padding."""
    if support is not None:
        return compute_logprobs_in_support(
            model, batch, temperature, micro_batch_tokens, support, autocast_dtype, rows
        )[0]
    out = torch.zeros_like(batch.old_logprobs)
    chosen = range(batch.size) if rows is None else rows
    for mb in aligned_micro_batches(batch, chosen, micro_batch_tokens):
        logits = response_logits(model, mb, autocast_dtype)
        if mb.is_idle:
            continue
        lp = token_logprobs(logits, response_targets(mb), temperature=temperature)
        out[mb.rows, : mb.response_width] = lp.float()
    return out * batch.response_mask


@torch.no_grad()
def compute_logprobs_in_support(
    model: Any,
    batch: RolloutBatch,
    temperature: float,
    micro_batch_tokens: int,
    support: SamplingSupport,
    autocast_dtype: torch.dtype | None = None,
    rows: list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(truncated, untruncated) per-token logprobs [B, T] from one forward pass (no gradient): under
    the top-k / top-p truncated distribution of ``support`` (``-inf`` outside it) and under
    ``softmax(logits / temperature)``. Padding is 0 in both (``torch.where``: never ``-inf * 0``)."""
    truncated = torch.zeros_like(batch.old_logprobs)
    untruncated = torch.zeros_like(batch.old_logprobs)
    chosen = range(batch.size) if rows is None else rows
    for mb in aligned_micro_batches(batch, chosen, micro_batch_tokens):
        logits = response_logits(model, mb, autocast_dtype)
        if mb.is_idle:
            continue
        targets, width = response_targets(mb), mb.response_width
        untruncated[mb.rows, :width] = token_logprobs(logits, targets, temperature=temperature).float()
        truncated[mb.rows, :width] = truncated_token_logprobs(
            logits, targets, temperature=temperature, top_k=support.top_k, top_p=support.top_p
        ).float()
    keep = batch.response_mask > 0
    zero = torch.zeros((), dtype=truncated.dtype, device=truncated.device)
    return torch.where(keep, truncated, zero), torch.where(keep, untruncated, zero)


def rows_with_gradient(
    batch: RolloutBatch, rows: list[int], algorithm: AlgorithmConfig, loss_fn: Any
) -> list[int]:
    """The rows of ``rows`` that can add to the loss or its gradient, in the same order.

    A completion whose advantage is 0 on every response token adds exactly 0 to the loss and to
    its gradient when the policy loss is a multiple of the advantage (the loss function's
    ``vanishes_at_zero_advantage``), no KL or entropy term is in the loss, and it is not in the
    positive-example LM loss (``lm_coef > 0`` reads the correct completions). Such rows are left
    out; every other case keeps all rows. The loss still divides by the counts of the whole
    mini-batch, so the gradient is unchanged up to float summation order.
    """
    if (
        not getattr(loss_fn, "vanishes_at_zero_advantage", False)
        or algorithm.entropy_coef > 0
        or (algorithm.kl_coef > 0 and algorithm.kl_placement == "loss")
        or not rows
    ):
        return rows
    index = torch.tensor(rows, dtype=torch.long)
    moving = ((batch.extra["advantages"][index] != 0) & (batch.response_mask[index] > 0)).any(-1)
    if algorithm.lm_coef > 0:
        moving |= batch.correct[index].bool()
    return [r for r, keep in zip(rows, moving.tolist(), strict=True) if keep]


def _split(rows: torch.Tensor, parts: int) -> list[torch.Tensor]:
    parts = max(1, min(parts, rows.numel()))
    return [chunk for chunk in torch.tensor_split(rows, parts) if chunk.numel()]


def minibatch_schedule(
    num_rows: int, *, epochs: int, updates_per_epoch: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """The rows of each optimizer step of one training step, in order.

    Each of ``epochs`` passes takes a fresh random permutation of the ``num_rows`` completions and
    cuts it into ``updates_per_epoch`` mini-batches (as equal as possible). The policy and the
    critic are updated on the same schedule unless the critic has its own ``updates_per_step``.
    """
    schedule = []
    for _ in range(epochs):
        schedule += _split(torch.randperm(num_rows, generator=generator), updates_per_epoch)
    return schedule


class WeightedMetrics:
    """Per-micro-batch metrics combined over micro-batches and ranks: token-weighted means, except
    ``*_max`` (the largest) and ``*_min`` (the smallest) over micro-batches that have tokens."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.extremes: dict[str, float] = {}  # *_max as is, *_min negated: both reduce with max
        self.weight = 0.0

    def add(self, metrics: dict[str, Any], tokens: float) -> None:
        for key, value in metrics.items():
            v = float(value)
            if not math.isfinite(v):
                continue
            if key.endswith(("_max", "_min")):
                if tokens > 0:
                    signed = v if key.endswith("_max") else -v
                    self.extremes[key] = max(self.extremes.get(key, -math.inf), signed)
            else:
                self.sums[key] = self.sums.get(key, 0.0) + v * tokens
        self.weight += tokens

    def result(self) -> dict[str, float]:
        # Every rank reduces the same keys, also a rank that saw no tokens.
        names = gather_objects((sorted(self.sums), sorted(self.extremes)))
        mean_keys = sorted({k for means, _ in names for k in means})  # type: ignore[misc]
        extreme_keys = sorted({k for _, extremes in names for k in extremes})  # type: ignore[misc]
        totals = all_reduce_sum(
            torch.tensor([self.sums.get(k, 0.0) for k in mean_keys] + [self.weight], dtype=torch.float64)
        )
        weight = max(totals[-1].item(), 1e-12)
        out = {k: totals[i].item() / weight for i, k in enumerate(mean_keys)}
        if extreme_keys:
            top = all_reduce_max(
                torch.tensor([self.extremes.get(k, -math.inf) for k in extreme_keys], dtype=torch.float64)
            )
            for k, v in zip(extreme_keys, top.tolist(), strict=True):
                out[k] = v if k.endswith("_max") else -v
        return out


def policy_update(
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batch: RolloutBatch,
    algorithm: AlgorithmConfig,
    settings: UpdateSettings,
    generator: torch.Generator,
    schedule: list[torch.Tensor] | None = None,
    reduce_gradients: Callable[[list[torch.nn.Parameter]], None] | None = None,
) -> dict[str, float]:
    """Run the step's optimizer updates on ``batch`` (with ``advantages`` in ``batch.extra``).

    ``schedule`` lists the rows of each optimizer step (:func:`minibatch_schedule`); None draws it
    from ``generator`` with ``settings.ppo_epochs`` and ``settings.updates_per_step``.
    ``reduce_gradients`` averages the accumulated gradients over ranks before clipping (ddp).
    """
    if schedule is None:
        schedule = minibatch_schedule(
            batch.size,
            epochs=settings.ppo_epochs,
            updates_per_epoch=settings.updates_per_step,
            generator=generator,
        )
    loss_fn = POLICY_LOSSES.get(algorithm.policy_loss)
    loss_hp = hyperparameters_for(loss_fn, algorithm, POLICY_LOSS_TENSOR_ARGS)
    use_kl_loss = algorithm.kl_coef > 0 and algorithm.kl_placement == "loss"
    # Rollout/trainer mismatch: token weights on the advantages (rlvr.algorithms.mismatch). The
    # rollout's logprobs are kept in extra when the trainer recomputed old_logprobs.
    correct_mismatch = mismatch_enabled(
        algorithm.mismatch_is, algorithm.mismatch_mask, algorithm.mismatch_opsm_delta
    )
    mismatch_hp = hyperparameters_for(mismatch_correction, algorithm, MISMATCH_TENSOR_ARGS)
    rollout_logprobs = batch.extra.get("rollout_logprobs", batch.old_logprobs)
    params = [p for p in model.parameters() if p.requires_grad]
    metrics = WeightedMetrics()
    grad_norms: list[float] = []
    skipped = updates = 0
    rows_seen = rows_left_out = 0  # completions over all mini-batches, and those not computed
    policy_loss_sum = 0.0  # the mini-batches' policy losses, summed over micro-batches and mini-batches
    lm_loss_sum = 0.0  # the same for the positive-example NLL
    agg = dict(aggregation=algorithm.aggregation, norm_length=settings.norm_length)

    select_tokens = getattr(loss_fn, "select_tokens", None)  # Clip-Cov, KL-Cov: over the whole mini-batch
    if select_tokens is not None:
        select_hp = hyperparameters_for(select_tokens, algorithm, (*POLICY_LOSS_TENSOR_ARGS, *SELECTION_ARGS))
        positions = torch.tensor(global_row_positions(batch.row_keys)[0], dtype=torch.long)

    support = settings.support  # replay the rollout's top-k / top-p in the ratio (sampling_support)
    model.train()
    for rows in schedule:
        row_list = rows.tolist()
        if select_tokens is not None:
            current = compute_logprobs(
                model,
                batch,
                settings.temperature,
                settings.micro_batch_tokens,
                settings.autocast_dtype,
                row_list,
                support,
            )
            selected_old = batch.old_logprobs[rows]
            if support is not None:  # the covariance of a -inf logprob would be NaN
                current_rows, selected_old, _ = neutralize_outside_support(
                    current[rows], selected_old, batch.response_mask[rows]
                )
                current = current.clone()
                current[rows] = current_rows
            selection = torch.zeros_like(batch.response_mask, dtype=torch.bool)
            selection[rows] = select_tokens(
                logprobs=current[rows],
                old_logprobs=selected_old,
                advantages=batch.extra["advantages"][rows],
                mask=batch.response_mask[rows],
                positions=positions[rows],
                generator=generator,
                **select_hp,
            )
        mask_rows = batch.response_mask[rows]
        counts = all_reduce_sum(
            torch.stack(
                [
                    mask_rows.sum().double(),
                    (mask_rows.sum(-1) > 0).sum().double(),
                    (mask_rows * batch.correct[rows, None]).sum().double(),
                ]
            )
        )
        num_tokens, num_sequences, correct_tokens = counts.tolist()
        bad = torch.zeros((), dtype=torch.float64)
        computed = (
            rows_with_gradient(batch, row_list, algorithm, loss_fn)
            if settings.skip_zero_advantage
            else row_list
        )
        rows_seen, rows_left_out = rows_seen + len(row_list), rows_left_out + len(row_list) - len(computed)
        # With no row anywhere, one idle pass still gives every parameter its (zero) gradient, so
        # that the optimizer step is the one the full mini-batch would take (AdamW's momentum moves).
        passes = aligned_micro_batches(batch, computed, settings.micro_batch_tokens) or [
            idle_micro_batch(batch.input_ids.device)
        ]
        for mb in passes:
            if mb.is_idle:  # no rows here: a forward and backward only to keep the ranks in step
                (response_logits(model, mb, settings.autocast_dtype).sum() * 0.0).backward()
                continue
            t = mb.response_width
            mask = batch.response_mask[mb.rows, :t]
            logits = response_logits(model, mb, settings.autocast_dtype)
            logprobs = token_logprobs(logits, response_targets(mb), temperature=settings.temperature)
            full_logprobs = logprobs  # untruncated: the KL and LM terms read these
            old_logprobs = batch.old_logprobs[mb.rows, :t]
            advantages, mismatch_metrics = batch.extra["advantages"][mb.rows, :t], {}
            if support is not None:  # the ratio of the truncated distributions the tokens came from
                logprobs = truncated_token_logprobs(
                    logits,
                    response_targets(mb),
                    temperature=settings.temperature,
                    top_k=support.top_k,
                    top_p=support.top_p,
                )
            if correct_mismatch:
                fix = mismatch_correction(
                    old_logprobs=old_logprobs,
                    rollout_logprobs=rollout_logprobs[mb.rows, :t],
                    logprobs=logprobs,
                    advantages=advantages,
                    mask=mask,
                    **mismatch_hp,
                )
                advantages, mismatch_metrics = fix.advantages, fix.metrics
            if support is not None:  # -inf outside the support never reaches the loss
                logprobs, old_logprobs, outside = neutralize_outside_support(logprobs, old_logprobs, mask)
                share = outside.sum() / mask.sum().clamp(min=1)
                mismatch_metrics["sampling/outside_support_fraction"] = share
            out = loss_fn(
                logprobs=logprobs,
                old_logprobs=old_logprobs,
                advantages=advantages,
                mask=mask,
                num_tokens=num_tokens,
                num_sequences=num_sequences,
                norm_length=settings.norm_length,
                generator=generator,
                **loss_hp,
                **({"token_selection": selection[mb.rows, :t]} if select_tokens is not None else {}),
            )
            loss, step_metrics = out.loss, {**out.metrics, **mismatch_metrics}
            policy_loss_sum += float(out.loss.detach())  # micro-batch losses are parts of one sum
            if use_kl_loss:
                kl = kl_loss(
                    logprobs=full_logprobs,
                    ref_logprobs=batch.extra["ref_logprobs"][mb.rows, :t],
                    mask=mask,
                    num_tokens=num_tokens,
                    num_sequences=num_sequences,
                    kl_estimator=algorithm.kl_estimator,
                    kl_clamp=algorithm.kl_clamp,
                    **agg,
                )
                loss = loss + algorithm.kl_coef * kl.loss
                step_metrics.update(kl.metrics)
            if algorithm.entropy_coef > 0:
                entropy = entropy_from_logits(logits, temperature=settings.temperature)
                ent = entropy_loss(
                    entropy=entropy, mask=mask, num_tokens=num_tokens, num_sequences=num_sequences, **agg
                )
                loss = loss - algorithm.entropy_coef * ent.loss
                step_metrics.update(ent.metrics)
            else:
                with torch.no_grad():
                    entropy = entropy_from_logits(logits.detach(), temperature=settings.temperature)
                step_metrics["entropy/mean"] = (entropy * mask).sum() / mask.sum().clamp(min=1)
            if algorithm.lm_coef > 0:
                lm = positive_lm_loss(
                    logprobs=full_logprobs,
                    mask=mask,
                    correct=batch.correct[mb.rows],
                    num_tokens=correct_tokens,
                    num_sequences=num_sequences,
                    norm_length=settings.norm_length,
                    aggregation="token-mean",
                )
                loss = loss + algorithm.lm_coef * lm.loss
                lm_loss_sum += float(
                    lm.loss.detach()
                )  # a share of the mini-batch's NLL, like the policy loss
            # Gradients are averaged over ranks by data parallelism; the loss is a global sum.
            # A non-finite loss still runs its backward (the other ranks wait for it); the step is skipped.
            (loss * world_size()).backward()
            if torch.isfinite(loss):
                metrics.add(step_metrics, float(mask.sum()))
            else:
                bad.fill_(1.0)
        if reduce_gradients is not None:
            reduce_gradients(params)
        grad_norm = clip_grad_norm(params, settings.max_grad_norm)
        if not torch.isfinite(grad_norm):
            bad.fill_(1.0)
        if all_reduce_max(bad).item() > 0:  # all ranks skip together
            optimizer.zero_grad(set_to_none=True)
            skipped += 1
            continue
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        grad_norms.append(float(grad_norm))
        updates += 1
    result = metrics.result()
    # Each rank holds its part of every mini-batch's loss (global denominators): sum, then average.
    loss_total, lm_total = all_reduce_sum(
        torch.tensor([policy_loss_sum, lm_loss_sum], dtype=torch.float64)
    ).tolist()
    result["loss/policy"] = loss_total / max(len(schedule), 1)
    if algorithm.lm_coef > 0:
        correct, rows = all_reduce_sum(
            torch.tensor([float(batch.correct.sum()), float(batch.size)], dtype=torch.float64)
        ).tolist()
        result["lm/nll"] = lm_total / max(len(schedule), 1)
        result["lm/correct_fraction"] = correct / max(rows, 1.0)
    result["optim/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
    result["optim/lr"] = scheduler.get_last_lr()[0]
    result["optim/updates"] = float(updates)
    result["optim/skipped_updates"] = float(skipped)
    seen, left_out = all_reduce_sum(torch.tensor([rows_seen, rows_left_out], dtype=torch.float64)).tolist()
    result["optim/zero_advantage_skipped"] = left_out / max(seen, 1.0)
    return result
