"""algorithm.replay_sampling_support: the rollout's truncated logprobs equal the trainer's (ratio 1
before the first update, on the embedded toy model), the kept-mass bias of the untruncated ratio is
gone, and -inf outside the support never reaches a loss or the parameters."""

import copy
import math

import pytest
import torch
from training_fixtures import random_completions, tiny_model

from rlvr.algorithms.advantages import ADVANTAGES
from rlvr.algorithms.config import AlgorithmConfig
from rlvr.algorithms.sampling_support import SamplingSupport
from rlvr.config import load_config
from rlvr.training.batch import make_batch
from rlvr.training.generate_ahead import _completion_from_state, _completion_state
from rlvr.training.trainer import Trainer
from rlvr.training.update import (
    UpdateSettings,
    compute_logprobs,
    compute_logprobs_in_support,
    policy_update,
)

TINY = [
    "task.params.num_train=64",
    "task.params.num_test=8",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=24",
    "rollout.top_p=0.8",
    "rollout.top_k=5",
    "eval.num_problems=8",
    "training.steps=1",
    "training.skip_zero_advantage=false",  # every token enters the ratio metrics
]


def _first_batch(tmp_path, replay: bool):
    config = load_config(
        "recipes/quickstart.yaml",
        [*TINY, f"algorithm.replay_sampling_support={str(replay).lower()}", f"logging.output_dir={tmp_path}"],
    )
    trainer = Trainer(config, log=lambda *a: None)
    with trainer.parallel.gathered(trainer.model):
        rollouts = trainer.collector.collect(0, None)
    return trainer, rollouts, trainer._make_batch(rollouts.groups).to(trainer.device)


def _log_kept_mass(model, batch, row: int, temperature: float = 1.0) -> torch.Tensor:
    """log M at each response token of ``row``, from one full forward and a plain nucleus by sorting."""
    p, t = batch.prompt_lengths[row], batch.response_lengths[row]
    P = batch.prompt_width
    ids = batch.input_ids[row, P - p : P + t][None]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, p - 1 : p + t - 1].float() / temperature  # [t, V]
    probs = torch.softmax(logits.double(), -1)
    out = []
    for position in range(t):
        top = sorted(probs[position].tolist(), reverse=True)[:5]  # top_k 5
        mass, above, kept = sum(top), 0.0, 0.0
        for q in top:
            if above < 0.8 * mass:  # top_p 0.8 of the top-k renormalised mass
                kept += q
            above += q
        out.append(math.log(kept))
    return torch.tensor(out, dtype=torch.float64)


def test_rollout_and_trainer_truncated_logprobs_agree_so_the_first_ratio_is_one(tmp_path):
    trainer, rollouts, batch = _first_batch(tmp_path, replay=True)
    support = trainer.update_settings.support
    assert support == SamplingSupport(top_k=5, top_p=0.8)
    mask = batch.response_mask > 0
    truncated, untruncated = compute_logprobs_in_support(trainer.model, batch, 1.0, 4096, support)
    assert torch.isfinite(truncated[mask]).all()
    # The rollout recorded the logprob under the distribution it drew from: the trainer's, to 1e-5.
    assert (batch.old_logprobs - truncated)[mask].abs().max() <= 1e-5
    assert (batch.extra["untruncated_old_logprobs"] - untruncated)[mask].abs().max() <= 1e-5
    assert torch.equal(compute_logprobs(trainer.model, batch, 1.0, 4096, support=support), truncated)

    metrics = trainer.learn(rollouts)
    assert metrics["policy/ratio_max"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["policy/ratio_min"] == pytest.approx(1.0, abs=1e-5)
    assert metrics["policy/clipfrac_low"] == 0.0 and metrics["policy/clipfrac_high"] == 0.0
    assert metrics["sampling/outside_support_fraction"] == 0.0


def test_the_kept_mass_bias_is_what_the_replay_removes(tmp_path):
    trainer, _, batch = _first_batch(tmp_path, replay=True)
    gap = batch.extra["untruncated_old_logprobs"] - batch.old_logprobs  # log pi - log pi_T = log M
    for row in range(0, batch.size, 3):
        t = batch.response_lengths[row]
        torch.testing.assert_close(
            gap[row, :t].double(), _log_kept_mass(trainer.model, batch, row), atol=1e-5, rtol=0
        )
    mask = batch.response_mask > 0
    assert (gap[mask] <= 1e-6).all() and (gap[mask] < -0.01).any()  # top_p 0.8 drops real mass

    # Off: the same draws (same seed), recorded and recomputed untruncated, a ratio of 1 all the same:
    # the bias log M is invisible to the ratio. On: the recorded logprob is the sampling distribution's.
    _, _, plain = _first_batch(tmp_path / "off", replay=False)
    assert "untruncated_old_logprobs" not in plain.extra
    assert torch.equal(plain.input_ids, batch.input_ids)
    assert torch.equal(plain.old_logprobs, batch.extra["untruncated_old_logprobs"])


# --- policy_update with the support, float64 -----------------------------------------------------

VOCAB = 40
SUPPORT = SamplingSupport(top_k=30, top_p=0.9)


def _settings(support):
    return UpdateSettings(
        ppo_epochs=1,
        updates_per_step=1,
        micro_batch_tokens=40,
        max_grad_norm=0.0,
        temperature=1.0,
        norm_length=12,
        support=support,
    )


def _update(model, batch, algorithm, support):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    return policy_update(
        model=model,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        batch=batch,
        algorithm=algorithm,
        settings=_settings(support),
        generator=torch.Generator().manual_seed(0),
    )


def test_update_replays_the_support_and_keeps_the_kl_untruncated():
    torch.set_default_dtype(torch.float64)
    try:
        model = tiny_model(VOCAB).double()
        comps = random_completions(VOCAB, num_prompts=4, n=4, seed=0)
        rewards = [float((i * 7) % 3 == 0) for i in range(len(comps))]
        batch = make_batch(comps, rewards, [r > 0 for r in rewards], [i // 4 for i in range(16)], pad_id=0)
        batch.extra["advantages"] = ADVANTAGES.get("grpo")(
            rewards=batch.rewards, mask=batch.response_mask, group_ids=batch.group_ids
        ).advantages
        truncated, untruncated = compute_logprobs_in_support(model, batch, 1.0, 10_000, SUPPORT)
        mask = batch.response_mask > 0
        outside = mask & ~torch.isfinite(truncated)
        assert outside.any()  # random tokens: some lie outside the model's nucleus
        assert (truncated[~mask] == 0).all() and (untruncated[~mask] == 0).all()  # padding: 0, never NaN

        # Old logprobs from the trainer itself (stored in float32): inside the support the ratio is 1.
        batch.old_logprobs = truncated
        batch.extra["ref_logprobs"] = untruncated  # the reference is the same model, untruncated
        algorithm = AlgorithmConfig(kl_coef=0.1, kl_estimator="k3")
        before = [p.detach().clone() for p in model.parameters()]
        metrics = _update(model, copy.deepcopy(batch), algorithm, SUPPORT)
        assert metrics["policy/ratio_max"] == pytest.approx(1.0, abs=1e-6)
        assert metrics["policy/ratio_min"] == pytest.approx(1.0, abs=1e-6)
        assert metrics["kl/mean"] == pytest.approx(0.0, abs=1e-12)  # untruncated against untruncated
        expected = float(outside.sum() / mask.sum())
        assert 0 < expected < 0.5
        assert metrics["sampling/outside_support_fraction"] == pytest.approx(expected, abs=1e-6)
        assert math.isfinite(metrics["loss/policy"]) and metrics["optim/skipped_updates"] == 0.0
        moved = False
        for p, q in zip(model.parameters(), before, strict=True):
            assert torch.isfinite(p).all()
            moved |= not torch.equal(p, q)
        assert moved
    finally:
        torch.set_default_dtype(torch.float32)


def test_clip_cov_selection_sees_no_infinite_logprob():
    torch.set_default_dtype(torch.float64)
    try:
        model = tiny_model(VOCAB).double()
        comps = random_completions(VOCAB, num_prompts=2, n=4, seed=1)
        rewards = [float(i % 2) for i in range(len(comps))]
        batch = make_batch(comps, rewards, [r > 0 for r in rewards], [i // 4 for i in range(8)], pad_id=0)
        batch.extra["advantages"] = ADVANTAGES.get("grpo")(
            rewards=batch.rewards, mask=batch.response_mask, group_ids=batch.group_ids
        ).advantages
        batch.old_logprobs, _ = compute_logprobs_in_support(model, batch, 1.0, 10_000, SUPPORT)
        assert (~torch.isfinite(batch.old_logprobs)).any()
        algorithm = AlgorithmConfig(
            policy_loss="clip_cov", clip_cov_ratio=0.2, clip_cov_lb=-10.0, clip_cov_ub=10.0
        )
        metrics = _update(model, batch, algorithm, SUPPORT)
        assert math.isfinite(metrics["loss/policy"]) and metrics["optim/skipped_updates"] == 0.0
        assert all(torch.isfinite(p).all() for p in model.parameters())
    finally:
        torch.set_default_dtype(torch.float32)


def test_batch_and_generate_ahead_state_carry_the_untruncated_logprobs():
    comps = random_completions(VOCAB, num_prompts=2, n=2, seed=2)
    assert "untruncated_old_logprobs" not in make_batch(comps, [0.0] * 4, [False] * 4, [0, 0, 1, 1], 0).extra
    for c in comps:
        c.untruncated_logprobs = [x + 0.25 for x in c.logprobs]
    batch = make_batch(comps, [0.0] * 4, [False] * 4, [0, 0, 1, 1], 0)
    mask = batch.response_mask > 0
    torch.testing.assert_close(batch.extra["untruncated_old_logprobs"][mask], batch.old_logprobs[mask] + 0.25)
    again = _completion_from_state(_completion_state(comps[0]))
    assert again.untruncated_logprobs == pytest.approx(comps[0].untruncated_logprobs, abs=1e-6)
    comps[1].untruncated_logprobs = None
    assert _completion_from_state(_completion_state(comps[1])).untruncated_logprobs is None
