"""GDPO gets each reward component: composite reward -> rollout groups -> batch -> estimator."""

import torch

from rlvr.algorithms import group_estimators
from rlvr.algorithms.advantages import ADVANTAGES
from rlvr.config import load_config
from rlvr.rewards.base import RewardBatch
from rlvr.rewards.composite import CompositeReward
from rlvr.tasks.base import Problem
from rlvr.training.trainer import Trainer


def test_composite_reward_reports_each_components_unweighted_values():
    overlong = {"name": "overlong", "weight": 0.5, "params": {"max_length": 4, "buffer_length": 2}}
    reward = CompositeReward([{"name": "arithmetic"}, overlong])
    problem = Problem(id="p", question="1+1=", answer="2")
    completions = ["<answer>2</answer>", "<answer>3</answer>"]
    batch = RewardBatch(completions, [problem, problem], response_lengths=[1, 4], max_response_length=4)
    result = reward(batch)
    assert list(result.components) == ["arithmetic", "overlong"]
    for i in range(2):
        total = result.components["arithmetic"][i] + 0.5 * result.components["overlong"][i]
        assert result.values[i] == total


def test_gdpo_receives_the_components_and_their_weights(tmp_path):
    calls = []

    def spy(**kwargs):
        calls.append(kwargs)
        return group_estimators.gdpo(**kwargs)

    spy.takes_reward_components = True
    ADVANTAGES.register("gdpo", overwrite=True)(spy)
    try:
        config = load_config(
            None,
            [
                "preset=gdpo",
                "model.path=toy",
                "task.name=arithmetic",
                "task.params.num_train=32",
                "task.params.num_test=4",
                "task.rewards=[{name: arithmetic}, {name: overlong, weight: 0.5,"
                " params: {max_length: 16, buffer_length: 8}}]",
                "rollout.prompts_per_step=2",
                "rollout.samples_per_prompt=4",
                "rollout.max_new_tokens=16",
                "eval.num_problems=4",
                f"logging.output_dir={tmp_path}",
            ],
        )
        Trainer(config, log=lambda *a: None).train_step(0)
    finally:
        ADVANTAGES.register("gdpo", overwrite=True)(group_estimators.gdpo)
    (call,) = calls
    components, weights = call["reward_components"], call["reward_weights"]
    assert components.shape == (8, 2) and weights.tolist() == [1.0, 0.5]
    torch.testing.assert_close(components @ weights, call["rewards"].to(torch.float64), rtol=0, atol=1e-6)
