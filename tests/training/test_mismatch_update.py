"""The rollout/trainer mismatch corrections inside policy_update: off changes nothing, on
weights the advantages exactly as rlvr.algorithms.mismatch documents."""

import copy
import math

import torch
from training_fixtures import random_completions, tiny_model

from rlvr.algorithms.advantages import ADVANTAGES
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.training.batch import make_batch
from rlvr.training.update import UpdateSettings, compute_logprobs, policy_update

VOCAB = 40


def _batch():
    comps = random_completions(VOCAB, num_prompts=4, n=4, seed=0)
    rewards = [float((i * 7) % 3 == 0) for i in range(len(comps))]
    batch = make_batch(comps, rewards, [r > 0 for r in rewards], [i // 4 for i in range(16)], pad_id=0)
    adv = ADVANTAGES.get("grpo")(rewards=batch.rewards, mask=batch.response_mask, group_ids=batch.group_ids)
    batch.extra["advantages"] = adv.advantages
    return batch


def _update(model, batch, algorithm):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return policy_update(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        batch=batch,
        algorithm=algorithm,
        settings=UpdateSettings(
            ppo_epochs=1,
            updates_per_step=1,
            micro_batch_tokens=40,
            max_grad_norm=0.0,
            temperature=1.0,
            norm_length=12,
        ),
        generator=torch.Generator().manual_seed(0),
    )


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_mismatch_correction_in_the_update():
    torch.set_default_dtype(torch.float64)
    try:
        base = tiny_model(VOCAB).double()
        batch = _batch()
        batch.old_logprobs = compute_logprobs(base, batch, 1.0, 10_000)  # the trainer's pi_old
        mask = batch.response_mask.bool()
        noise = 0.6 * torch.randn(batch.old_logprobs.shape, generator=torch.Generator().manual_seed(3))
        rollout = torch.where(mask, batch.old_logprobs + noise, torch.zeros(()))  # the sampler's mu
        rollout[0, 0] = -math.inf  # a stale logprob
        plain = copy.deepcopy(batch)

        # Off (the default): the rollout's logprobs beside the trainer's change nothing, bit for bit.
        batch.extra["rollout_logprobs"] = rollout
        m_plain = _update(a := copy.deepcopy(base), plain, AlgorithmConfig())
        m_off = _update(b := copy.deepcopy(base), batch, AlgorithmConfig())
        for p, q in zip(_params(a), _params(b), strict=True):
            assert torch.equal(p, q)
        assert m_plain == m_off and not any(k.startswith("mismatch/") for k in m_off)

        # On, with rollout == trainer: the identity, bit for bit, and nothing truncated or masked.
        same = copy.deepcopy(plain)
        same.extra["rollout_logprobs"] = plain.old_logprobs.clone()
        on = AlgorithmConfig(mismatch_is="token", mismatch_mask="token")
        m_same = _update(c := copy.deepcopy(base), same, on)
        for p, q in zip(_params(a), _params(c), strict=True):
            assert torch.equal(p, q)
        assert m_same["mismatch/masked_fraction"] == 0.0 and m_same["mismatch/is_truncated_fraction"] == 0.0

        # On, mismatched: the same step as the plain update on advantages
        # A' = where(0.5 <= r <= 2, min(r, 2) * A, 0), r = exp(old - rollout).
        m_on = _update(d := copy.deepcopy(base), batch, on)
        delta = batch.old_logprobs - rollout
        in_band = mask & (delta >= math.log(0.5)) & (delta <= math.log(2.0))
        expected = copy.deepcopy(plain)
        weighted = plain.extra["advantages"] * torch.exp(delta.clamp(max=math.log(2.0)))
        expected.extra["advantages"] = torch.where(in_band, weighted, torch.zeros(()))
        _update(e := copy.deepcopy(base), expected, AlgorithmConfig())
        moved = False
        for p, q, r in zip(_params(d), _params(e), _params(a), strict=True):
            assert torch.isfinite(p).all()
            assert torch.allclose(p, q, atol=1e-12, rtol=0), (p - q).abs().max()
            moved |= not torch.allclose(p, r, atol=1e-6, rtol=0)
        assert moved  # the correction changed the update
        dropped = float((mask & ~in_band).sum() / mask.sum())
        assert abs(m_on["mismatch/masked_fraction"] - dropped) < 1e-12 and 0 < dropped < 1
        assert m_on["mismatch/nonfinite_fraction"] > 0 and m_on["mismatch/k3_kl"] > 0
        assert math.isfinite(m_on["loss/policy"]) and m_on["optim/skipped_updates"] == 0.0
    finally:
        torch.set_default_dtype(torch.float32)
