"""The policy update: micro-batching equals one big batch; a non-finite loss never touches weights."""

import copy

import pytest
import torch
from training_fixtures import random_completions, tiny_model

from rlvr.algorithms.advantages import ADVANTAGES
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.training.batch import make_batch
from rlvr.training.update import UpdateSettings, compute_logprobs, policy_update

VOCAB = 40


def _batch(seed=0, rewards=None):
    comps = random_completions(VOCAB, num_prompts=4, n=4, seed=seed)
    if rewards is None:
        rewards = [float((i * 7) % 3 == 0) for i in range(len(comps))]
    batch = make_batch(comps, rewards, [r > 0 for r in rewards], [i // 4 for i in range(16)], pad_id=0)
    adv = ADVANTAGES.get("grpo")(rewards=batch.rewards, mask=batch.response_mask, group_ids=batch.group_ids)
    batch.extra["advantages"] = adv.advantages
    return batch


def _update(model, optimizer, batch, algorithm, **settings):
    """One policy_update with a constant learning rate; ``settings`` override the defaults below."""
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    defaults = dict(ppo_epochs=1, updates_per_step=1, max_grad_norm=0.0, temperature=1.0, norm_length=12)
    return policy_update(
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        batch=batch,
        algorithm=algorithm,
        settings=UpdateSettings(**{**defaults, **settings}),
        generator=torch.Generator().manual_seed(0),
    )


def _run(model, batch, algorithm, micro_batch_tokens, updates_per_step=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return _update(
        model,
        optimizer,
        batch,
        algorithm,
        micro_batch_tokens=micro_batch_tokens,
        updates_per_step=updates_per_step,
    )


@pytest.mark.parametrize(
    "algorithm",
    [
        AlgorithmConfig(aggregation="token-mean"),
        AlgorithmConfig(aggregation="seq-mean-token-mean", entropy_coef=0.01),
        AlgorithmConfig(aggregation="seq-mean-token-sum-norm", lm_coef=0.1),
        AlgorithmConfig(aggregation="seq-mean-token-sum", policy_loss="gspo", eps_low=3e-4, eps_high=4e-4),
        AlgorithmConfig(aggregation="token-mean", policy_loss="cispo", eps_high=0.28),
        AlgorithmConfig(policy_loss="clip_cov", clip_cov_ratio=0.1, clip_cov_lb=-10.0, clip_cov_ub=10.0),
        AlgorithmConfig(policy_loss="kl_cov", kl_cov_ratio=0.1),
    ],
    ids=[
        "token-mean",
        "seq-mean-token-mean+entropy",
        "dr-grpo-norm+lm",
        "gspo",
        "cispo",
        "clip_cov",
        "kl_cov",
    ],
)
def test_micro_batching_equals_one_big_batch(algorithm):
    torch.set_default_dtype(torch.float64)
    try:
        batch = _batch()
        base = tiny_model(VOCAB).double()
        # Old logprobs from the model itself, perturbed so that ratios differ from 1.
        batch.old_logprobs = compute_logprobs(base, batch, 1.0, 10_000) + 0.05 * torch.randn_like(
            batch.old_logprobs
        )
        batch.old_logprobs *= batch.response_mask
        whole, split = copy.deepcopy(base), copy.deepcopy(base)
        m1 = _run(whole, batch, algorithm, micro_batch_tokens=10_000)
        m2 = _run(split, batch, algorithm, micro_batch_tokens=40)  # one or two rows per micro-batch
        for (name, p1), (_, p2) in zip(whole.named_parameters(), split.named_parameters(), strict=True):
            assert torch.allclose(p1, p2, atol=1e-10, rtol=0), name
        assert not torch.equal(next(base.parameters()), next(whole.parameters()))  # it did update
        assert m1.get("policy/clipfrac_high") == pytest.approx(m2.get("policy/clipfrac_high"), abs=1e-12)
        frac = f"policy/{algorithm.policy_loss}_frac"
        if frac in m1:  # Clip-Cov, KL-Cov: floor(0.1 N) tokens of the whole batch, not of each micro-batch
            assert m1[frac] == pytest.approx(m2[frac], abs=1e-12)
            tokens = float(batch.response_mask.sum())
            assert m1[frac] * tokens == pytest.approx(int(0.1 * tokens), abs=1e-9)
        assert m1["loss/policy"] == pytest.approx(m2["loss/policy"], abs=1e-10)  # the whole loss, not a part
    finally:
        torch.set_default_dtype(torch.float32)


def test_non_finite_loss_skips_the_update_and_keeps_the_weights():
    batch = _batch()
    batch.extra["advantages"] = batch.extra["advantages"].clone()
    batch.extra["advantages"][0, 0] = float("nan")
    model = tiny_model(VOCAB)
    before = copy.deepcopy(model.state_dict())
    metrics = _run(model, batch, AlgorithmConfig(aggregation="token-mean"), micro_batch_tokens=10_000)
    assert metrics["optim/skipped_updates"] == 1.0 and metrics["optim/updates"] == 0.0
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_updates_per_step_makes_that_many_optimizer_steps():
    metrics = _run(
        tiny_model(VOCAB), _batch(), AlgorithmConfig(), micro_batch_tokens=10_000, updates_per_step=4
    )
    assert metrics["optim/updates"] == 4.0


def _batch_with_equal_groups(rewards):
    """Four groups of four; ``rewards`` has 16 entries, so a group with equal rewards has A = 0."""
    batch = _batch(seed=3, rewards=rewards)
    batch.extra["ref_logprobs"] = batch.old_logprobs - 0.1 * batch.response_mask
    return batch


def _run_adamw(model, batch, algorithm, skip, updates_per_step=2):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return _update(
        model,
        optimizer,
        batch,
        algorithm,
        ppo_epochs=2,
        updates_per_step=updates_per_step,
        micro_batch_tokens=40,
        max_grad_norm=1.0,
        skip_zero_advantage=skip,
    )


SKIPPABLE = {
    "token-mean": AlgorithmConfig(aggregation="token-mean"),
    "seq-mean-token-mean": AlgorithmConfig(aggregation="seq-mean-token-mean"),
    "dr-grpo-norm": AlgorithmConfig(aggregation="seq-mean-token-sum-norm"),
    "dual-clip": AlgorithmConfig(clip_ratio_c=3.0),
    "gspo": AlgorithmConfig(
        aggregation="seq-mean-token-mean", policy_loss="gspo", eps_low=3e-4, eps_high=4e-4
    ),
    "cispo": AlgorithmConfig(policy_loss="cispo", eps_high=0.28),
    "clip_cov": AlgorithmConfig(
        policy_loss="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-10.0, clip_cov_ub=10.0
    ),
    "kl-in-reward": AlgorithmConfig(kl_coef=0.1, kl_placement="reward"),
    "lm-loss": AlgorithmConfig(lm_coef=0.1),  # correct completions of an all-correct group stay in
}
NOT_SKIPPABLE = {
    "kimi": AlgorithmConfig(policy_loss="kimi", aggregation="seq-mean-token-mean"),
    "kl_cov": AlgorithmConfig(policy_loss="kl_cov", kl_cov_ratio=0.2),
    "kl-in-loss": AlgorithmConfig(kl_coef=0.1, kl_placement="loss"),
    "entropy": AlgorithmConfig(entropy_coef=0.01),
}


@pytest.mark.parametrize("name", [*SKIPPABLE, *NOT_SKIPPABLE])
def test_skipping_zero_advantage_completions_keeps_every_weight(name):
    """Group 1 all wrong and group 3 all right (A = 0): leaving them out of the passes gives the
    same weights after 2 epochs x 2 AdamW steps with weight decay and clipping, in float64."""
    algorithm = {**SKIPPABLE, **NOT_SKIPPABLE}[name]
    rewards = [1.0, 0.0, 0.0, 1.0] + [0.0] * 4 + [0.0, 1.0, 0.0, 0.0] + [1.0] * 4
    torch.set_default_dtype(torch.float64)
    try:
        batch = _batch_with_equal_groups(rewards)
        base = tiny_model(VOCAB).double()
        batch.old_logprobs = compute_logprobs(base, batch, 1.0, 10_000) + 0.05 * torch.randn_like(
            batch.old_logprobs
        )
        batch.old_logprobs *= batch.response_mask
        batch.extra["ref_logprobs"] = batch.old_logprobs - 0.1 * batch.response_mask
        full, skipping = copy.deepcopy(base), copy.deepcopy(base)
        m_full = _run_adamw(full, batch, algorithm, skip=False)
        m_skip = _run_adamw(skipping, batch, algorithm, skip=True)
        for (n, p1), (_, p2) in zip(full.named_parameters(), skipping.named_parameters(), strict=True):
            assert torch.allclose(p1, p2, atol=1e-10, rtol=0), n
        assert m_full["loss/policy"] == pytest.approx(m_skip["loss/policy"], abs=1e-10)
        assert m_full["optim/zero_advantage_skipped"] == 0.0
        if name == "lm-loss":  # only the 4 all-wrong completions leave
            assert m_skip["optim/zero_advantage_skipped"] == pytest.approx(4 / 16)
        elif name in SKIPPABLE:
            assert m_skip["optim/zero_advantage_skipped"] == pytest.approx(8 / 16)
        else:
            assert m_skip["optim/zero_advantage_skipped"] == 0.0
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_mini_batch_with_nothing_to_learn_still_takes_its_optimizer_step():
    """Every group solved or failed: no completion is computed, yet the zero gradient still gives
    AdamW its step (weight decay, moments), exactly as the full passes do."""
    rewards = [0.0] * 8 + [1.0] * 8
    batch = _batch_with_equal_groups(rewards)
    base = tiny_model(VOCAB)
    full, skipping = copy.deepcopy(base), copy.deepcopy(base)
    m_full = _run_adamw(full, batch, AlgorithmConfig(), skip=False)
    m_skip = _run_adamw(skipping, batch, AlgorithmConfig(), skip=True)
    assert m_skip["optim/zero_advantage_skipped"] == 1.0 and m_skip["optim/updates"] == 4.0
    assert m_full["optim/zero_advantage_skipped"] == 0.0 and m_full["optim/updates"] == 4.0
    for (n, p1), (_, p2) in zip(full.named_parameters(), skipping.named_parameters(), strict=True):
        assert torch.equal(p1, p2), n
    embed = skipping.get_input_embeddings().weight
    assert not torch.equal(embed, base.get_input_embeddings().weight)  # weight decay moved it
