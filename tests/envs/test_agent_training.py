"""Training on multi-turn trajectories: observation tokens are holes of the response mask that no
loss term sees, and every preset runs on trajectories end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from env_fixtures import EchoEnv, plain_tokenizer, problems, tiny_model

from rlvr.algorithms.config import AlgorithmConfig
from rlvr.config import load_config
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.multi_turn import MultiTurnRunner, TurnLimits
from rlvr.rollout.types import SamplingParams
from rlvr.training.batch import make_batch
from rlvr.training.setup import turn_reward_tensor
from rlvr.training.trainer import train
from rlvr.training.update import UpdateSettings, policy_update


def _trajectory_batch():
    tok = plain_tokenizer()
    model = tiny_model(tok, eos_bias=-2.0)
    runner = MultiTurnRunner(lambda: EchoEnv(steps=3), TurnLimits(4, 10, 120), workers=2)
    trajs = runner.run(HFEngine(model, tok), problems(3), SamplingParams(n=2, seed=1))
    batch = make_batch(
        trajs,
        [t.reward for t in trajs],
        [t.correct for t in trajs],
        [i // 2 for i in range(6)],
        tok.eos_token_id,
    )
    return model, trajs, batch


def test_observation_tokens_change_no_loss_or_gradient():
    model, trajs, batch = _trajectory_batch()
    holes = (batch.response_mask == 0) & (
        torch.arange(batch.response_mask.shape[1]) < torch.tensor(batch.response_lengths)[:, None]
    )
    assert holes.any()  # interior holes: observation tokens inside responses
    gen = torch.Generator().manual_seed(0)
    batch.extra["advantages"] = torch.randn(batch.response_mask.shape, generator=gen) * batch.response_mask
    batch.extra["ref_logprobs"] = (batch.old_logprobs - 0.1) * batch.response_mask
    algorithm = AlgorithmConfig(kl_coef=0.1, kl_placement="loss", entropy_coef=0.01, lm_coef=0.0)
    settings = UpdateSettings(
        ppo_epochs=1,
        updates_per_step=1,
        micro_batch_tokens=4096,
        max_grad_norm=0.0,
        temperature=1.0,
        norm_length=64,
        autocast_dtype=None,
        skip_zero_advantage=False,
    )

    def update(b):
        m = copy.deepcopy(model).train()
        opt = torch.optim.SGD(m.parameters(), lr=1.0)
        metrics = policy_update(
            model=m,
            optimizer=opt,
            scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
            batch=b,
            algorithm=algorithm,
            settings=settings,
            generator=torch.Generator().manual_seed(0),
        )
        return metrics, torch.cat([p.detach().flatten() for p in m.parameters()])

    base_metrics, base_params = update(batch)
    changed = copy.copy(batch)
    changed.extra = dict(batch.extra)
    changed.old_logprobs = torch.where(holes, torch.tensor(-7.0), batch.old_logprobs)
    changed.extra["ref_logprobs"] = torch.where(holes, torch.tensor(3.0), batch.extra["ref_logprobs"])
    changed.extra["advantages"] = torch.where(holes, torch.tensor(9.0), batch.extra["advantages"])
    metrics, params = update(changed)
    assert torch.equal(params, base_params)
    for key in ("loss/policy", "entropy/mean", "kl/mean"):
        if key in base_metrics:
            assert metrics[key] == base_metrics[key], key


def test_turn_rewards_sit_on_each_turns_last_sampled_token():
    _, trajs, batch = _trajectory_batch()
    rewards = turn_reward_tensor(trajs, tuple(batch.response_mask.shape))
    for i, t in enumerate(trajs):
        for end in t.turn_ends:
            assert batch.response_mask[i, end] == 1 and (end + 1 == len(t.token_ids) or t.mask[end + 1] == 0)
        torch.testing.assert_close(rewards[i].sum(), torch.tensor(t.reward))


GUESS = """
task: {name: guess_number}
env: {name: guess_number, max_turns: 4, max_turn_tokens: 4}
"""
TINY = [
    "task.params.num_train=32",
    "task.params.num_test=8",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=24",
    "eval.num_problems=4",
    "training.steps=2",
    "logging.sample_every=1",
    "logging.tensorboard=false",
    "checkpoint.every=0",
    "env.max_context_tokens=160",
]


@pytest.mark.parametrize(
    "overrides",
    [[], ["preset=ppo", "env.turn_rewards=true"], ["guess"]],
    ids=["grpo", "ppo_critic_turn_rewards", "guess_number"],
)
def test_agent_recipe_trains_a_few_steps(tmp_path, overrides):
    recipe = "recipes/agent_toy.yaml"
    if overrides == ["guess"]:  # the game instead of the calculator
        text = open(recipe).read().split("task:")[0] + GUESS
        recipe, overrides = tmp_path.parent / f"{tmp_path.name}_guess.yaml", []
        recipe.write_text(text)
    config = load_config(recipe, [*TINY, *overrides, f"logging.output_dir={tmp_path}"])
    result = train(config, log=lambda *a: None)
    assert result.steps == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in rows if r.get("step") == 1 and "env/turns" in r)
    for key in ("env/turns", "env/tool_calls", "env/tokens_generated", "env/tokens_observed", "env/errors"):
        assert key in step
    assert step["env/turns"] >= 1 and step["env/errors"] == 0
    assert 0.0 <= step["reward/accuracy"] <= 1.0 and "reward/total" in step  # the environments' verdicts
    assert step["reward/outcome/correct"] == step["reward/accuracy"]
    before = next(
        r for r in rows if r.get("step") == 0 and "eval/accuracy" in r
    )  # evaluated in the environment
    turns = [k for k in before if k.startswith("eval/") and k.endswith("/turns_mean")]
    assert turns and before[turns[0]] >= 1 and 0.0 <= before["eval/accuracy"] <= 1.0
    sample = json.loads((tmp_path / "samples.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in sample["conversation"]][:2] == ["user", "assistant"]
