"""SPO on the toy model: the continuations continue the prefixes, cost metrics, rank-free values, a run."""

import dataclasses
import json
import math

import pytest
import torch

from rlvr.algorithms.spo import spo_cut_points
from rlvr.config import load_config
from rlvr.rollout.types import SamplingParams
from rlvr.training.segment_values import continue_prefixes, estimate_cut_values
from rlvr.training.trainer import Trainer, train

SMALL = [
    "preset=spo",
    "model.path=toy",
    "task.name=arithmetic",
    "task.params.num_train=32",
    "task.params.num_test=4",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=3",
    "rollout.max_new_tokens=16",
    "rollout.temperature=1.0",
    "algorithm.spo_interval=2",
    "algorithm.spo_continuations=3",
    "optim.lr=1e-4",
    "optim.warmup_steps=0",
    "training.cpu_threads=1",
    "eval.num_problems=4",
    "checkpoint.every=0",
    "logging.sample_every=0",
    "logging.tensorboard=false",
]


@pytest.fixture(scope="module")
def trainer(tmp_path_factory):
    out = tmp_path_factory.mktemp("spo")
    return Trainer(load_config(None, [*SMALL, f"logging.output_dir={out}"]), log=lambda *a: None)


class Recording:
    """The trainer's engine, recording the prompts of every generate call."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, sampling):
        self.calls.append(([list(p) for p in prompts], sampling))
        return self.engine.generate(prompts, sampling)


def test_continuations_start_with_the_prefix_and_keep_the_budget(trainer):
    engine = Recording(trainer.engine)
    prompt = trainer.train_prompts[0]
    first = trainer.engine.generate([prompt], SamplingParams(n=1, max_new_tokens=12, seed=1))[0]
    prefix = first.token_ids[:5]
    sampling = SamplingParams(n=4, max_new_tokens=12, temperature=1.0, seed=2)
    out = continue_prefixes(engine, [(prompt, prefix), (prompt, [])], sampling)
    assert len(engine.calls) == 1  # one batched call
    prompts, call = engine.calls[0]
    assert prompts == [prompt + prefix, prompt] and call.n == 4 and call.max_new_tokens == 12
    assert len(out) == 8
    for c in out[:4]:
        assert c.prompt_ids == prompt and c.token_ids[:5] == prefix and len(c.token_ids) <= 12
        assert c.logprobs[:5] == [0.0] * 5 and len(c.logprobs) == len(c.token_ids)
        assert c.text == trainer.tokenizer.decode(c.token_ids, skip_special_tokens=True)
        if len(c.token_ids) == 12:
            assert c.finish_reason == "length" or c.token_ids[-1] in trainer.engine.eos_ids
    assert all(c.token_ids[:0] == [] and len(c.token_ids) <= 12 for c in out[4:])


def test_a_train_step_samples_continuations_of_every_cut_point(trainer):
    engine = Recording(trainer.engine)
    trainer.engine = engine
    trainer.collector.engine = engine
    try:
        rollouts = trainer.collector.collect(0)
        metrics = trainer.learn(rollouts)
    finally:
        trainer.engine = trainer.collector.engine = engine.engine
    for key in ("spo/extra_rollouts", "spo/extra_tokens", "spo/cut_points", "spo/segments_per_completion"):
        assert key in metrics and math.isfinite(metrics[key])
    assert "time/spo_rollouts" in metrics and "spo/prob_mask_tokens" in metrics
    completions = [c for g in rollouts.groups for c in g.completions]
    logprobs = torch.zeros(len(completions), 16)
    mask = torch.zeros(len(completions), 16)
    for i, c in enumerate(completions):
        logprobs[i, : len(c.logprobs)] = torch.tensor(c.logprobs)
        mask[i, : len(c.token_ids)] = 1
    cuts = spo_cut_points(logprobs, mask, spo_threshold=0.9, spo_interval=2)
    expected = [
        c.prompt_ids + c.token_ids[:t]
        for c, row in zip(completions, cuts, strict=True)
        for t in torch.nonzero(row).flatten().tolist()
    ]
    continued = [p for prompts, sampling in engine.calls[1:] for p in prompts]  # call 0: the step's rollout
    assert sorted(continued) == sorted(expected) and expected  # the toy at T = 1 always has cut points
    assert metrics["spo/cut_points"] == len(expected)
    assert metrics["spo/extra_rollouts"] == 3 * len(expected)
    assert all(sampling.n == 3 for _, sampling in engine.calls[1:])
    assert len(engine.calls) - 1 <= len(rollouts.groups)  # one call per group at most
    assert metrics["spo/segments_per_completion"] == pytest.approx(1 + len(expected) / len(completions))


def test_values_do_not_depend_on_which_groups_share_the_call(trainer):
    rollouts = trainer.collector.collect(1)
    groups = rollouts.groups
    problems = [trainer.task.train[g.prompt_index] for g in groups]
    completions = [c for g in groups for c in g.completions]
    width = max(len(c.token_ids) for c in completions)
    logprobs = torch.zeros(len(completions), width)
    mask = torch.zeros(len(completions), width)
    for i, c in enumerate(completions):
        logprobs[i, : len(c.logprobs)] = torch.tensor(c.logprobs)
        mask[i, : len(c.token_ids)] = 1
    common = dict(
        engine=trainer.engine,
        reward=trainer.reward,
        sampling=dataclasses.replace(trainer.sampling, max_new_tokens=16),
        step=1,
        continuations=3,
        spo_threshold=0.9,
        spo_interval=2,
        spo_max_cuts=None,
    )
    both = estimate_cut_values(
        problems=problems, groups=groups, sampling_logprobs=logprobs, mask=mask, **common
    )
    n = len(groups[0].completions)
    second = estimate_cut_values(
        problems=problems[1:], groups=groups[1:], sampling_logprobs=logprobs[n:], mask=mask[n:], **common
    )
    assert torch.equal(both.values[n:], second.values)  # as on another rank
    again = estimate_cut_values(
        problems=problems, groups=groups, sampling_logprobs=logprobs, mask=mask, **common
    )
    assert torch.equal(both.values, again.values)
    assert ((both.values >= 0) & (both.values <= 1)).all()  # mean rewards of 0/1 grades
    assert not ((both.values != 0) & ~both.cuts).any()  # values only at the cuts


def test_a_rank_with_no_group_still_makes_its_one_reward_call(trainer):
    calls = []
    reward = lambda batch: calls.append(len(batch.completions)) or trainer.reward(batch)  # noqa: E731
    out = estimate_cut_values(
        engine=trainer.engine,
        reward=reward,
        problems=[],
        groups=[],
        sampling_logprobs=torch.zeros(0, 1),
        mask=torch.zeros(0, 1),
        sampling=trainer.sampling,
        step=0,
        continuations=3,
        spo_threshold=0.9,
        spo_interval=2,
        spo_max_cuts=None,
    )
    assert calls == [0] and out.values.shape == (0, 1) and out.metrics["spo/extra_rollouts"] == 0


def test_a_short_run_trains_and_logs_the_cost(tmp_path):
    config = load_config(None, [*SMALL, "training.steps=2", f"logging.output_dir={tmp_path}"])
    result = train(config, log=lambda *a: None)
    assert result.steps == 2 and "eval/accuracy" in result.eval_after
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "spo/extra_rollouts" in line]
    assert len(steps) == 2 and all(line["spo/extra_rollouts"] > 0 for line in steps)
    assert all(math.isfinite(line["optim/grad_norm"]) for line in steps if "optim/grad_norm" in line)


# --- SPO-tree ----------------------------------------------------------------------------------------


TREE = [
    *SMALL,
    "algorithm.spo_tree=[3,2]",
    "algorithm.spo_tree_segment_tokens=5",
    "rollout.max_new_tokens=12",
]


def test_a_tree_continues_each_node_from_its_path(trainer):
    from rlvr.training.spo_tree import sample_tree

    engine = Recording(trainer.engine)
    prompt = trainer.train_prompts[1]
    sampling = dataclasses.replace(trainer.sampling, max_new_tokens=12)
    nodes = sample_tree(engine, prompt, branches=(3, 2), segment_tokens=5, sampling=sampling, seed=4)
    roots = [n for n in nodes if n.parent == -1]
    assert len(roots) == 3 and engine.calls[0][0] == [prompt] and engine.calls[0][1].n == 3
    for i, node in enumerate(nodes):
        if node.parent >= 0:
            parent = nodes[node.parent]
            assert node.prefix == parent.prefix + parent.tokens and i in parent.children
        assert len(node.tokens) == len(node.logprobs) >= 1
        assert len(node.prefix) + len(node.tokens) <= 12
        if node.depth == 0:
            assert len(node.tokens) <= 5
        assert node.leaf == (node.depth == 1 or node.finish == "stop" or len(node.tokens) < 5)
        assert len(node.children) == (0 if node.leaf else 2)
    opened = [nodes[p].prefix + nodes[p].tokens for p in range(len(nodes)) if not nodes[p].leaf]
    if opened:  # level 1: one call continuing every open node, prompt + its path
        assert engine.calls[1][0] == [prompt + path for path in opened] and engine.calls[1][1].n == 2
    again = sample_tree(trainer.engine, prompt, branches=(3, 2), segment_tokens=5, sampling=sampling, seed=4)
    assert [n.tokens for n in again] == [n.tokens for n in nodes]


def test_a_tree_step_groups_siblings_with_their_values_and_trains(tmp_path):
    trainer = Trainer(load_config(None, [*TREE, f"logging.output_dir={tmp_path}"]), log=lambda *a: None)
    rollouts = trainer.collector.collect(0)
    positions = [g.position for g in rollouts.groups]
    assert len(set(positions)) == len(positions)
    by_prompt = {}
    for g in rollouts.groups:
        by_prompt.setdefault(g.prompt_index, []).append(g)
        assert all(0.0 <= r <= 1.0 for r in g.rewards)
    for groups in by_prompt.values():
        first, *deeper = groups
        assert len(first.completions) == 3  # the prompt's segment group
        for g in deeper:  # a node's children: their prompt is the prompt plus the node's path
            assert len(g.completions) == 2
            assert len({tuple(c.prompt_ids) for c in g.completions}) == 1
            parent = g.position % trainer.collector.stride - 1  # the node's index in its tree
            node = first.completions[parent]
            assert g.completions[0].prompt_ids == node.prompt_ids + node.token_ids
            assert first.rewards[parent] == pytest.approx(sum(g.rewards) / 2)  # V = mean of the children
    assert rollouts.metrics["spo/tree_leaves"] >= 3 * len(by_prompt)
    metrics = trainer.learn(rollouts)
    assert "spo/extra_rollouts" not in metrics and math.isfinite(metrics["advantage/mean"])
    assert metrics.get("optim/updates", 1) >= 1
