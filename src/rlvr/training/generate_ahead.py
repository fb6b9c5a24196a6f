"""Generating the next step's completions while this step's update runs (``rollout.generate_ahead``).

Step ``t`` of the loop runs, in the main thread::

    rollouts = collector.collect(t, first_round=ahead.take(t))  # round 1 was generated during step t-1
    ahead.start(t + 1)      # copy the weights theta_t, draw step t+1's prompts, generate in a thread
    learn(rollouts)         # the update theta_t -> theta_{t+1}, while the thread generates

so the completions of step ``t`` are sampled by ``theta_{t-1}``, the policy one update before the
one they update: the batch is one step off-policy (as in the asynchronous RL of Noukhovitch et al.,
"Asynchronous RLHF", arXiv 2410.18252, with one batch in flight). The PPO-style losses need no
change for this: their "old" logprobs are those of the policy that sampled (the rollout's own,
which the trainer reuses in float32), and the clip of the ratio ``pi_theta / pi_old`` bounds the
update around that policy, as in any second PPO epoch (Schulman et al. 2017, eq. 7). Step 0's
completions are generated in the step itself, by ``theta_0``.

Where it pays: the update and the generation run on different cores at once. On a 2-core CPU with
one torch thread each, a step of the quickstart takes about the longer of the two instead of their
sum. The price is one more copy of the weights in memory (the generating copy), and the one-step
lag.

The generating copy is a plain module (never sharded or wrapped): its weights are copied from the
policy's (gathered first when sharded, a collective every rank runs in the main thread) before each
round it generates. With LoRA only the trainable weights change, so only those are copied. The
thread runs only the engine: scoring, filters, the sampler and every collective stay in the main
thread, in the order of a run without ``generate_ahead``. Dynamic sampling's further rounds are
generated in the step, by the current policy.

A checkpoint holds the round in flight (waiting for it first), so a resumed run trains on the same
completions as an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.multi_turn import Segment, Trajectory
from rlvr.rollout.types import Completion
from rlvr.training.rollouts import GeneratedRound, RolloutCollector


class GenerateAhead:
    """A copy of the policy that generates the next step's first round in a background thread.

    Build it from the policy before the policy is sharded or wrapped (``copy.deepcopy`` of the
    plain module).
    """

    def __init__(self, policy: torch.nn.Module, tokenizer: Any, **engine_args: Any) -> None:
        self.model = copy.deepcopy(policy)
        self.model.requires_grad_(False)
        self.model.eval()
        self.names = [name for name, p in policy.named_parameters() if p.requires_grad]
        # The thread decodes with a tokenizer of its own: the main thread may use the policy's meanwhile.
        self.engine = HFEngine(self.model, copy.deepcopy(tokenizer), **engine_args)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlvr-generate-ahead")
        self.pending: tuple[int, Future[GeneratedRound]] | None = None

    def start(self, step: int, policy: torch.nn.Module, collector: RolloutCollector) -> None:
        """Copy the policy's weights, draw ``step``'s first prompts with ``collector`` and generate
        them in the thread."""
        if self.pending is not None:
            raise RuntimeError(f"a round of step {self.pending[0]} is still pending")
        self.copy_weights(policy)
        indices = collector.draw(step)
        future = self.executor.submit(collector.generate, self.engine, step, 1, indices)
        self.pending = (step, future)

    @torch.no_grad()
    def copy_weights(self, policy: torch.nn.Module) -> None:
        params = dict(policy.named_parameters())
        mine = dict(self.model.named_parameters())
        for name in self.names:
            value = params[name]
            if hasattr(value, "full_tensor"):  # a DTensor shard (fsdp2): gathered on every rank
                value = value.full_tensor()
            mine[name].copy_(value)

    def take(self, step: int) -> GeneratedRound | None:
        """The round generated for ``step`` (waiting for it), or None when none was started."""
        if self.pending is None:
            return None
        pending_step, future = self.pending
        if pending_step != step:
            raise RuntimeError(f"the round generated ahead is step {pending_step}'s, not {step}'s")
        self.pending = None
        return future.result()

    def state_dict(self) -> dict[str, Any] | None:
        """The round in flight, as checkpoint state (waiting for it); None when there is none."""
        if self.pending is None:
            return None
        step, future = self.pending
        generated = future.result()
        return {
            "step": step,
            "indices": list(generated.indices),
            "positions": list(generated.positions),
            "seconds": generated.seconds,
            "completions": [_completion_state(c) for c in generated.completions],
        }

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.pending = None
        if state is None:
            return
        generated = GeneratedRound(
            step=int(state["step"]),
            indices=[int(i) for i in state["indices"]],
            positions=[int(p) for p in state["positions"]],
            completions=[_completion_from_state(c) for c in state["completions"]],
            seconds=float(state["seconds"]),
        )
        future: Future[GeneratedRound] = Future()
        future.set_result(generated)
        self.pending = (generated.step, future)


def _completion_state(c: Completion) -> dict[str, Any]:
    # Logprobs as a float32 tensor: they came from float32 logits, so the values are kept exactly.
    state: dict[str, Any] = {
        "prompt_index": c.prompt_index,
        "prompt_ids": torch.tensor(c.prompt_ids, dtype=torch.long),
        "token_ids": torch.tensor(c.token_ids, dtype=torch.long),
        "logprobs": torch.tensor(c.logprobs, dtype=torch.float32),
        "text": c.text,
        "finish_reason": c.finish_reason,
    }
    if c.untruncated_logprobs is not None:
        state["untruncated_logprobs"] = torch.tensor(c.untruncated_logprobs, dtype=torch.float32)
    if c.mask is not None:  # a multi-turn trajectory's observation holes
        state["mask"] = torch.tensor(c.mask, dtype=torch.long)
    if c.weight_version is not None:
        state["weight_version"] = c.weight_version
    if isinstance(c, Trajectory):  # the rest of what the environments recorded
        state["trajectory"] = {
            name: getattr(c, name) for name in _TRAJECTORY_FIELDS if name not in ("segments", "conversation")
        }
        state["trajectory"]["conversation"] = [dict(m) for m in c.conversation]
        state["trajectory"]["segments"] = (
            None if c.segments is None else [[list(s.prompt_ids), s.start, s.end] for s in c.segments]
        )
    return state


def _completion_from_state(state: dict[str, Any]) -> Completion:
    common = dict(
        prompt_index=int(state["prompt_index"]),
        prompt_ids=state["prompt_ids"].tolist(),
        token_ids=state["token_ids"].tolist(),
        logprobs=state["logprobs"].tolist(),
        text=state["text"],
        finish_reason=state["finish_reason"],
        mask=state["mask"].tolist() if "mask" in state else None,
        weight_version=state.get("weight_version"),
        untruncated_logprobs=state["untruncated_logprobs"].tolist()
        if "untruncated_logprobs" in state
        else None,
    )
    if "trajectory" not in state:
        return Completion(**common)
    fields = dict(state["trajectory"])
    if fields["segments"] is not None:
        fields["segments"] = [Segment(list(p), int(a), int(b)) for p, a, b in fields["segments"]]
    return Trajectory(**common, **fields)


_TRAJECTORY_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Trajectory)
    if f.name not in {g.name for g in dataclasses.fields(Completion)}
)
"""What a :class:`~rlvr.rollout.multi_turn.Trajectory` holds beyond a :class:`Completion`."""
