"""SPO-tree (arXiv 2505.23564): sample each prompt's completions as a tree of fixed-length segments.

With ``algorithm.spo_tree`` set to branch factors ``(b_0, ..., b_{D-1})`` (the paper's 6-6-6), a
prompt is expanded level by level: ``b_0`` segments of ``M = algorithm.spo_tree_segment_tokens``
tokens from the prompt, ``b_1`` segments from the end of each of those, and so on; the segments of
the last level run to the end of the completion (``rollout.max_new_tokens`` counts every level).
A segment that ends its completion early (end-of-sequence, a stop string, the budget) is a leaf.
Leaves are graded by the task's rewards, prefix included, and values go up the tree::

    V(leaf) = its completion's reward        V(node) = mean of V over its children

Every node becomes one row of the step: its prompt is the prompt plus the path before it, its
response the segment, its reward ``V(node)``. The children of one node are one group (the paper's
*segment group*: same prompt, same token count), so the ``spo`` estimator's group baseline is
``V(parent)`` and each segment's advantage is ``V(node) - V(parent)`` (the paper's Figure 2b; no
continuations are sampled: the tree's own samples are the Monte Carlo estimates).

Each prompt's tree is sampled with seeds of the step and the prompt's draw position only (one
``generate`` call per level), so the rows do not depend on how many ranks share the step. The
collector runs no group filters (refused with ``spo_tree`` when the config loads).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from rlvr.distributed import all_reduce_sum, rank, world_size
from rlvr.rewards.base import RewardBatch
from rlvr.rollout.types import Completion, SamplingParams
from rlvr.training.rollouts import ScoredGroup, StepRollouts, _generation_spread, _merge_by_position

TREE_SEED_OFFSET = 3_000_017
"""Trees sample with seeds of their own."""


@dataclass
class TreeNode:
    """One segment of a tree: ``prefix`` (the response tokens before it), its ``tokens`` and their
    ``logprobs``; ``parent`` is the index of its parent node (-1: the prompt)."""

    prefix: list[int]
    tokens: list[int]
    logprobs: list[float]
    finish: str
    parent: int
    depth: int
    leaf: bool = False
    children: list[int] = field(default_factory=list)
    value: float = 0.0
    correct: bool = False


def tree_seed(base_seed: int, step: int, position: int) -> int:
    """The seed of one prompt's tree: a function of the step and the prompt's draw position only."""
    return base_seed + TREE_SEED_OFFSET + 7919 * step + 104729 * position


def sample_tree(
    engine: Any,
    prompt: list[int],
    *,
    branches: tuple[int, ...],
    segment_tokens: int,
    sampling: SamplingParams,
    seed: int,
) -> list[TreeNode]:
    """The nodes of one prompt's tree, parents before children (one ``generate`` call per level).

    Level ``d`` continues every open node of level ``d - 1`` (the prompt for ``d = 0``) with
    ``branches[d]`` samples of at most ``segment_tokens`` tokens (of the budget left after the
    node's path; the last level: all of it). A node is a leaf when its segment stopped, when the
    budget is spent, or at the last level.
    """
    nodes: list[TreeNode] = []
    frontier = [-1]
    budget = sampling.max_new_tokens
    for depth, b in enumerate(branches):
        if not frontier:
            break
        last = depth == len(branches) - 1
        prefixes = [[] if p < 0 else nodes[p].prefix + nodes[p].tokens for p in frontier]
        limits = [(budget - len(x)) if last else min(segment_tokens, budget - len(x)) for x in prefixes]
        call = dataclasses.replace(
            sampling, n=b, max_new_tokens=max(limits), seed=seed + 7919 * depth, truncated_logprobs=False
        )
        raw = engine.generate([list(prompt) + x for x in prefixes], call)
        parents, frontier = frontier, []
        for i, p in enumerate(parents):
            for c in raw[i * b : (i + 1) * b]:
                cut = len(c.token_ids) > limits[i]
                stopped = c.finish_reason == "stop" and not cut
                node = TreeNode(
                    prefix=prefixes[i],
                    tokens=c.token_ids[: limits[i]],
                    logprobs=c.logprobs[: limits[i]],
                    finish="stop" if stopped else "length",
                    parent=p,
                    depth=depth,
                )
                node.leaf = stopped or last or len(node.prefix) + len(node.tokens) >= budget
                if p >= 0:
                    nodes[p].children.append(len(nodes))
                if not node.leaf:
                    frontier.append(len(nodes))
                nodes.append(node)
    return nodes


def tree_values(nodes: list[TreeNode], leaf_rewards: list[float]) -> None:
    """Set ``value`` on every node: the leaves' rewards (in node order), the mean of the children's
    values above them (the paper's V(n) = mean over Ch(n))."""
    leaves = iter(leaf_rewards)
    for node in nodes:
        if node.leaf:
            node.value = float(next(leaves))
    for node in reversed(nodes):  # children come after their parent
        if not node.leaf:
            node.value = math.fsum(nodes[c].value for c in node.children) / len(node.children)


class TreeCollector:
    """Draws prompts with the sampler, samples a tree per prompt, grades its leaves; the same
    ``collect`` as :class:`~rlvr.training.rollouts.RolloutCollector`, whose groups are the trees'
    segment groups (the children of one node)."""

    def __init__(
        self,
        *,
        engine: Any,
        problems: list[Any],
        prompt_ids: list[list[int]],
        sampler: Any,
        reward: Any,
        sampling: SamplingParams,
        prompts_per_step: int,
        branches: tuple[int, ...],
        segment_tokens: int,
    ) -> None:
        self.engine, self.problems, self.prompt_ids = engine, problems, prompt_ids
        self.sampler, self.reward, self.sampling = sampler, reward, sampling
        self.prompts_per_step, self.branches, self.segment_tokens = prompts_per_step, branches, segment_tokens
        self.stride = 1 + sum(math.prod(branches[: d + 1]) for d in range(len(branches)))
        """Group positions: prompt position * stride + 1 + parent index, unique over the step."""

    def collect(self, step: int, first_round: Any = None) -> StepRollouts:
        if first_round is not None:
            raise RuntimeError("SPO-tree does not generate ahead")
        indices = self.sampler.sample(self.prompts_per_step, step)
        positions = list(range(rank(), len(indices), world_size()))
        t0 = time.perf_counter()
        trees = [
            sample_tree(
                self.engine,
                self.prompt_ids[indices[p]],
                branches=self.branches,
                segment_tokens=self.segment_tokens,
                sampling=self.sampling,
                seed=tree_seed(self.sampling.seed, step, p),
            )
            for p in positions
        ]
        generated = time.perf_counter() - t0
        leaves = [(k, node) for k, nodes in enumerate(trees) for node in nodes if node.leaf]
        full = [node.prefix + node.tokens for _, node in leaves]
        t1 = time.perf_counter()
        result = self.reward(  # one call on every rank: its metrics are reduced over the ranks
            RewardBatch(
                completions=[self.engine.tokenizer.decode(ids, skip_special_tokens=True) for ids in full],
                problems=[self.problems[indices[positions[k]]] for k, _ in leaves],
                response_lengths=[len(ids) for ids in full],
                group_ids=[k for k, _ in leaves],
                truncated=[node.finish == "length" for _, node in leaves],
                max_response_length=self.sampling.max_new_tokens,
            )
        )
        correct = result.correct if result.correct is not None else [v > 0 for v in result.values]
        seconds_reward = time.perf_counter() - t1
        groups: list[ScoredGroup] = []
        pass_rates = []
        done = 0
        for k, nodes in enumerate(trees):
            count = sum(node.leaf for node in nodes)
            tree_values(nodes, result.values[done : done + count])
            marks = iter(correct[done : done + count])
            for node in nodes:
                if node.leaf:
                    node.correct = bool(next(marks))
            pass_rates.append(sum(correct[done : done + count]) / max(count, 1))
            done += count
            groups += self._segment_groups(indices[positions[k]], positions[k], nodes)
        self.sampler.update(indices, _merge_by_position(positions, pass_rates, len(indices)))
        counts = all_reduce_sum(
            torch.tensor(
                [float(sum(len(t) for t in trees)), float(len(leaves)), float(sum(len(ids) for ids in full))],
                dtype=torch.float64,
            )
        ).tolist()
        metrics = dict(result.metrics)
        metrics.update(
            {
                "spo/tree_nodes": counts[0],
                "spo/tree_leaves": counts[1],
                "response/length_mean": counts[2] / max(counts[1], 1.0),
                "filter/prompts_drawn": float(len(indices)),
                "filter/rounds": 1.0,
                "filter/groups_used": float(all_reduce_sum(torch.tensor(float(len(groups)))).item()),
            }
        )
        timings = {"time/generate": generated, "time/reward": seconds_reward}
        timings.update(_generation_spread(generated))
        return StepRollouts(groups, metrics, timings)

    def _segment_groups(self, prompt_index: int, position: int, nodes: list[TreeNode]) -> list[ScoredGroup]:
        """One group per node with children (and one for the prompt): its children as rows."""
        prompt = self.prompt_ids[prompt_index]
        by_parent: dict[int, list[int]] = {}
        for i, node in enumerate(nodes):
            by_parent.setdefault(node.parent, []).append(i)
        groups = []
        for parent, children in sorted(by_parent.items()):
            rows = [nodes[i] for i in children]
            groups.append(
                ScoredGroup(
                    prompt_index=prompt_index,
                    completions=[
                        Completion(
                            prompt_index=prompt_index,
                            prompt_ids=list(prompt) + node.prefix,
                            token_ids=node.tokens,
                            logprobs=node.logprobs,
                            text=self.engine.tokenizer.decode(node.tokens, skip_special_tokens=True),
                            finish_reason=node.finish,  # type: ignore[arg-type]
                        )
                        for node in rows
                    ],
                    rewards=[node.value for node in rows],
                    correct=[node.correct if node.leaf else node.value > 0 for node in rows],
                    outcomes=["leaf" if node.leaf else "segment" for node in rows],
                    position=position * self.stride + 1 + parent,
                )
            )
        return groups
