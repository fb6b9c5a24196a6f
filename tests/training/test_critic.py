"""The critic: value alignment, GAE targets wired to the core, value pretraining, exact resume, config.

Real transformers models throughout: tiny Qwen2 models built here and the shipped toy model.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from training_fixtures import random_completions, tiny_model

from rlvr.algorithms.advantages import gae, vapo, whiten_advantages
from rlvr.algorithms.presets import get_preset
from rlvr.algorithms.value import explained_variance, value_loss_fn
from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.training.batch import make_batch
from rlvr.training.checkpoint import STATE_DIR, latest_checkpoint, load_checkpoint, save_checkpoint
from rlvr.training.critic import Critic, ValueModel, load_value_model, monte_carlo_returns
from rlvr.training.trainer import CRITIC_PRETRAIN_FILE, Trainer
from rlvr.training.update import minibatch_schedule

VOCAB = 40


def _toy(tmp_path, preset: str, *extra: str):
    """A run config on the shipped toy model with a tiny budget."""
    return load_config(
        None,
        [
            f"preset={preset}",
            "model.path=toy",
            "task.name=arithmetic",
            "task.params.num_train=64",
            "task.params.num_test=4",
            "task.params.seed=1000",
            "rollout.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=32",
            "optim.lr=1e-4",
            "optim.warmup_steps=0",
            "critic.lr=1e-3",
            "training.updates_per_step=2",
            "training.cpu_threads=1",
            "eval.num_problems=4",
            "checkpoint.every=0",
            "logging.sample_every=0",
            "logging.tensorboard=false",
            f"logging.output_dir={tmp_path}",
            *extra,
        ],
    )


def _critic(model: ValueModel, micro_batch_tokens: int = 10_000) -> Critic:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return Critic(
        model, optimizer, scheduler, micro_batch_tokens=micro_batch_tokens, max_grad_norm=1.0, norm_length=12
    )


# --- the value of each response token ----------------------------------------------------------------


def test_value_of_token_t_is_read_from_the_hidden_state_before_it():
    """values[i, t] = head(h(prompt + response[:t])) at the state's last position, for every row, whatever
    the left padding of the prompt, the right padding of the response and the micro-batch split."""
    lm = tiny_model(VOCAB, seed=3)
    model = ValueModel(lm.base_model, hidden_size=32)
    torch.nn.init.normal_(model.head.weight, std=0.5)
    torch.nn.init.constant_(model.head.bias, 0.3)
    completions = random_completions(VOCAB, num_prompts=3, n=3, seed=5)
    batch = make_batch(completions, [0.0] * 9, [False] * 9, [i // 3 for i in range(9)], pad_id=0)

    values = _critic(model).values(batch)
    for i, c in enumerate(completions):
        ids = torch.tensor([c.prompt_ids + c.token_ids])
        with torch.no_grad():
            hidden = lm.base_model(input_ids=ids).last_hidden_state[0]  # unpadded row
        p, t = len(c.prompt_ids), len(c.token_ids)
        expected = model.head(hidden[p - 1 : p - 1 + t]).squeeze(-1)  # V(s_j) for j < t
        torch.testing.assert_close(values[i, :t], expected, atol=1e-5, rtol=1e-5)
        assert (values[i, t:] == 0).all()  # exactly 0 on padding
    torch.testing.assert_close(
        _critic(model, micro_batch_tokens=1).values(batch), values, atol=1e-5, rtol=1e-5
    )


def test_a_new_critic_values_everything_at_zero():
    model = ValueModel(tiny_model(VOCAB).base_model, hidden_size=32)
    batch = make_batch(random_completions(VOCAB, 2, 2), [1.0] * 4, [True] * 4, [0, 0, 1, 1], pad_id=0)
    assert (_critic(model).values(batch) == 0).all()


def test_monte_carlo_returns_are_the_discounted_sum_of_later_rewards():
    completions = random_completions(VOCAB, num_prompts=1, n=2, seed=0)
    completions[0].token_ids, completions[0].logprobs = [5, 6, 7], [-1.0] * 3
    completions[1].token_ids, completions[1].logprobs = [5], [-1.0]
    batch = make_batch(completions, [1.0, 2.0], [True, True], [0, 0], pad_id=0)
    # gamma 0.5, reward 1 on the 3rd token: (0.5^2, 0.5, 1); reward 2 on a 1-token response: (2, pad, pad).
    expected = torch.tensor([[0.25, 0.5, 1.0], [2.0, 0.0, 0.0]])
    torch.testing.assert_close(monte_carlo_returns(batch, 0.5), expected)


# --- the trainer's targets are the algorithm core's ----------------------------------------------------


@pytest.mark.parametrize("preset", ["vapo", "ppo"])
def test_trainer_targets_and_advantages_are_the_core_functions_on_the_same_tensors(tmp_path, preset):
    trainer = Trainer(_toy(tmp_path, preset), log=lambda *a: None)
    alg = trainer.config.algorithm
    torch.nn.init.normal_(trainer.critic.model.head.weight, std=0.3)  # non-trivial values
    batch = trainer._make_batch(trainer.collector.collect(0).groups)
    metrics = trainer.prepare_advantages(batch)
    values, mask = batch.extra["values"], batch.response_mask
    torch.testing.assert_close(values, trainer.critic.values(batch))
    common = dict(rewards=batch.rewards, mask=mask, group_ids=batch.group_ids, values=values)
    if preset == "vapo":
        core = vapo(**common, gamma=alg.gamma, lam_critic=alg.lam_critic, lam_alpha=alg.lam_alpha)
        expected_advantages = core.advantages
    else:
        core = gae(**common, gamma=alg.gamma, lam=alg.lam)
        expected_advantages = whiten_advantages(core.advantages, mask)  # ORZ: batch normalisation
    torch.testing.assert_close(batch.extra["returns"], core.returns)
    torch.testing.assert_close(batch.extra["advantages"], expected_advantages)
    # gamma = lambda_critic = 1 (both papers): the value target of every response token is the outcome.
    torch.testing.assert_close(batch.extra["returns"], batch.rewards[:, None] * mask)
    assert metrics["value/return_mean"] == pytest.approx(float(batch.rewards @ mask.sum(1) / mask.sum()))

    # The critic's loss is the clipped value loss toward those returns: its first mini-batch, before
    # its optimizer step, has values = old values.
    schedule = minibatch_schedule(batch.size, epochs=1, updates_per_epoch=1, generator=torch.Generator())
    expected_loss = value_loss_fn(
        values=values,
        old_values=values,
        returns=batch.extra["returns"],
        mask=mask,
        aggregation=alg.aggregation,
        value_loss=alg.value_loss,
        value_clip=alg.value_clip,
        norm_length=trainer.critic.norm_length,
    ).loss
    update = trainer.critic.update(batch, schedule, alg)
    assert update["value/loss"] == pytest.approx(float(expected_loss), rel=1e-5)
    assert update["critic/updates"] == 1.0

    # A whole step reports the critic's metrics beside the policy's.
    step = trainer.train_step(1)
    for key in (
        "value/loss",
        "value/explained_variance",
        "value/mean",
        "value/return_mean",
        "critic/grad_norm",
        "advantage/mean",
        "advantage/std",
        "optim/grad_norm",
    ):
        assert key in step and step[key] == step[key], key  # present and not NaN
    expected_updates = trainer.config.critic.updates_per_step or trainer.config.training.updates_per_step
    assert step["critic/updates"] == expected_updates


# --- value pretraining -------------------------------------------------------------------------------


def test_value_pretraining_lowers_value_loss_and_raises_explained_variance_before_the_policy_moves(tmp_path):
    # The tiny task scored by DAPO's overlong penalty alone, a reward the critic can predict from what
    # it has read (how far the completion has got). The verifier's 0/1 reward on this task is close to
    # unpredictable beyond its mean for a model this small (benchmarks/RESULTS.md), so it could not
    # show whether the critic learns.
    config = _toy(
        tmp_path,
        "vapo",
        "task.rewards=[{name: overlong, params: {max_length: 24, buffer_length: 12}}]",
        "rollout.prompts_per_step=8",
        "rollout.samples_per_prompt=8",
        "critic.pretrain_steps=10",
        "critic.updates_per_step=4",
    )
    trainer = Trainer(config, log=lambda *a: None)
    policy_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    collector = copy.copy(trainer.collector)
    collector.prompts_per_step = 16  # 128 completions sampled with seeds pretraining never uses
    held_out = trainer._make_batch(collector.collect(10_000).groups)

    def fit() -> tuple[float, float]:
        values = trainer.critic.values(held_out)
        returns = held_out.rewards[:, None] * held_out.response_mask  # Monte-Carlo returns (gamma = 1)
        m = value_loss_fn(
            values=values, old_values=None, returns=returns, mask=held_out.response_mask, value_loss="mse"
        ).metrics
        return float(m["value/loss"]), explained_variance(values, returns, held_out.response_mask)

    loss_before, ev_before = fit()
    history = trainer.pretrain_critic()
    loss_after, ev_after = fit()

    assert ev_before == 0.0  # every value is 0 before pretraining
    assert loss_after < 0.1 * loss_before  # measured: 0.273 -> 0.0053
    assert ev_after > 0.15  # measured: 0.40 on completions it was not trained on
    assert len(history) == 10 and all(h["critic/updates"] == 4 for h in history)
    ev = [h["value/explained_variance"] for h in history]  # each on a new batch, before training on it
    assert sum(ev[-3:]) > sum(ev[:3])
    lines = (tmp_path / CRITIC_PRETRAIN_FILE).read_text().splitlines()
    assert [json.loads(line)["pretrain_step"] for line in lines] == list(range(1, 11))
    for key, value in trainer.model.state_dict().items():  # the policy has not moved
        assert torch.equal(value, policy_before[key]), key
    assert not trainer.optimizer.state and trainer.scheduler.last_epoch == 0
    assert trainer.critic_pretrained


def test_value_pretraining_runs_once_a_killed_run_restarts_it_and_a_resumed_run_skips_it(tmp_path):
    extra = ("critic.pretrain_steps=2", "critic.updates_per_step=2")
    # A run killed during pretraining left part of the log and no checkpoint.
    (tmp_path / CRITIC_PRETRAIN_FILE).write_text('{"pretrain_step": 1}\n')
    log: list[str] = []
    Trainer(_toy(tmp_path, "vapo", *extra, "training.steps=1"), log=log.append).run(resume=True)
    assert sum("value pretraining" in line for line in log) == 2  # done again from the start
    lines = (tmp_path / CRITIC_PRETRAIN_FILE).read_text().splitlines()
    assert [json.loads(line)["pretrain_step"] for line in lines] == [1, 2]
    assert (tmp_path / "checkpoints" / "step-000000" / "critic_scheduler.pt").is_file()  # saved once done

    log.clear()
    resumed = Trainer(_toy(tmp_path, "vapo", *extra, "training.steps=2"), log=log.append)
    resumed.run(resume=True)
    assert not any("value pretraining" in line for line in log)
    assert len((tmp_path / CRITIC_PRETRAIN_FILE).read_text().splitlines()) == 2
    assert json.loads((latest_checkpoint(tmp_path) / "trainer_state.json").read_text())["critic_pretrained"]


# --- checkpoints -------------------------------------------------------------------------------------


def test_resume_restores_the_critic_exactly(tmp_path):
    """Saving after a step and resuming in a new trainer gives the next step's metrics bit for bit."""
    config = _toy(tmp_path, "ppo", "critic.updates_per_step=3")
    straight = Trainer(config, log=lambda *a: None)
    straight.train_step(0)
    straight.step = 1
    straight.save()
    expected = straight.train_step(1)

    resumed = Trainer(config, log=lambda *a: None)
    assert resumed.resume() and resumed.step == 1
    got = resumed.train_step(1)
    for key, value in expected.items():
        if key.startswith(("value/", "critic/", "advantage/", "loss/", "optim/")):
            assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    for (name, a), b in zip(
        straight.critic.model.state_dict().items(), resumed.critic.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


# --- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("critic.lr=0", "critic.lr"),
        ("critic.pretrain_steps=-1", "critic.pretrain_steps"),
        ("critic.updates_per_step=0", "critic.updates_per_step"),
        ("critic.warmup_steps=-2", "critic.warmup_steps"),
        ("critic.lora_rank=-1", "critic.lora_rank"),
        ("critic.lrr=1e-5", "did you mean 'critic.lr'"),
        ("critic.schedule=linear", "critic.schedule"),
    ],
)
def test_bad_critic_settings_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["preset=ppo", override])


def test_critic_path_that_cannot_load_or_uses_another_tokenizer_is_an_error(tmp_path):
    config = _toy(tmp_path, "ppo", f"critic.path={tmp_path / 'missing'}")
    with pytest.raises(ConfigError, match="critic.path"):
        load_value_model(config, torch.device("cpu"))
    with pytest.raises(ConfigError, match="model.path.*tokenizer has 1000 tokens"):
        load_value_model(_toy(tmp_path, "ppo"), torch.device("cpu"), min_vocab=1000)


def test_critic_settings_without_a_critic_are_reported(tmp_path):
    log: list[str] = []
    trainer = Trainer(_toy(tmp_path, "grpo", "algorithm.kl_coef=0"), log=log.append)
    assert trainer.critic is None and trainer.critic_pretrained
    assert any("critic.* settings are not used" in line and "'grpo'" in line for line in log)


def test_presets_set_the_papers_critic_values():
    vapo_config = load_config(None, ["preset=vapo"])
    assert (vapo_config.critic.lr, vapo_config.critic.pretrain_steps) == (2e-6, 50)  # VAPO sec. 5.1
    ppo_config = load_config(None, ["preset=ppo"])
    assert (ppo_config.critic.lr, ppo_config.critic.updates_per_step) == (5e-6, 12)  # Open-Reasoner-Zero
    assert ppo_config.critic.pretrain_steps == 0
    for name in ("vapo", "ppo"):
        assert not any("critic" in key for key in get_preset(name).notes)


def test_lora_critic_trains_only_its_adapter_and_head_and_reloads(tmp_path):
    pytest.importorskip("peft")
    config = _toy(tmp_path, "ppo", "critic.lora_rank=4")
    critic = Critic.from_config(config, torch.device("cpu"))
    trainable = critic.trainable_parameters()
    assert trainable and all("lora_" in name or name.startswith("head.") for name in trainable)
    frozen = {n: p.clone() for n, p in critic.model.named_parameters() if not p.requires_grad}
    assert frozen

    completions = random_completions(81, num_prompts=2, n=4, seed=1)
    batch = make_batch(completions, [1.0, 0.0] * 4, [True, False] * 4, [0] * 4 + [1] * 4, pad_id=0)
    batch.extra["values"] = critic.values(batch)
    batch.extra["returns"] = batch.rewards[:, None] * batch.response_mask
    schedule = minibatch_schedule(batch.size, epochs=2, updates_per_epoch=2, generator=torch.Generator())
    metrics = critic.update(batch, schedule, config.algorithm)
    assert metrics["critic/updates"] == 4
    for name, p in critic.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), name

    policy = tiny_model(81)
    modules, extra = critic.checkpoint_parts()
    path = save_checkpoint(tmp_path / "run", 1, model=policy, modules=modules, extra_states=extra)
    metadata = dcp.FileSystemReader(str(path / STATE_DIR)).read_metadata().state_dict_metadata
    saved = {k.removeprefix("critic.model.") for k in metadata if k.startswith("critic.model.")}
    assert saved == set(trainable)  # the frozen body is not saved
    fresh = Critic.from_config(config, torch.device("cpu"))
    fresh_modules, fresh_extra = fresh.checkpoint_parts()
    load_checkpoint(path, model=policy, modules=fresh_modules, extra_states=fresh_extra)
    torch.testing.assert_close(fresh.values(batch), critic.values(batch))
    assert fresh.optimizer.state_dict()["state"].keys() == critic.optimizer.state_dict()["state"].keys()
