"""Tiny real models, tokenizers and test environments shared by the environment tests."""

from __future__ import annotations

import dataclasses
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr.envs.base import Environment, StepResult
from rlvr.rollout.multi_turn import Segment
from rlvr.tasks.base import Problem
from rlvr.toy.tokenizer import build_tokenizer

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


CALCULATOR_RUN = [
    "task.name=arithmetic",
    "task.params={num_train: 16, num_test: 2, digits: 2, ops: ['+'], seed: 1000}",
    "env.name=calculator",
    "env.params={max_tool_calls: 2}",
    "env.max_turns=3",
    "env.max_turn_tokens=8",
    "env.max_context_tokens=160",
    "algorithm.kl_coef=0.0",
]
"""Settings of a training run in env mode: the toy model with the calculator tool, turns short
enough for a quick test."""


def plain_tokenizer():
    return build_tokenizer()


def chat_tokenizer():
    """The toy tokenizer with ChatML turn tokens and a chat template; <|im_end|> ends a turn."""
    tok = build_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_model(tokenizer, seed: int = 0, eos_bias: float = 0.0) -> Qwen2ForCausalLM:
    """A 2-layer Qwen2 over ``tokenizer``'s vocabulary with random weights (float32)."""
    torch.manual_seed(seed)
    eos = tokenizer.eos_token_id
    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        initializer_range=0.3,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = Qwen2ForCausalLM(cfg).float().eval()
    if eos_bias:
        bias = torch.zeros(len(tokenizer))
        bias[eos] = eos_bias
        model.lm_head.bias = torch.nn.Parameter(bias)
    return model


def problems(count: int) -> list[Problem]:
    return [Problem(f"p{i}", f"Count {i} to{' x' * (i % 3)}", str(i)) for i in range(count)]


class EchoEnv(Environment):
    """Ends a turn at any of a few common characters; answers with the turn's length; ends after
    ``steps`` turns (terminated) with reward = turns taken / 10."""

    name = "echo"
    stop_strings = ("a", "e", "1", "=")
    observation_role = "tool"

    def __init__(self, steps: int = 3, chat: bool = False) -> None:
        self.steps, self.chat, self.taken = steps, chat, 0

    def reset(self, problem: Problem, seed: int):
        self.taken = 0
        return [{"role": "user", "content": problem.question}] if self.chat else problem.question + "\n"

    def step(self, action: str) -> StepResult:
        self.taken += 1
        done = self.taken >= self.steps
        return StepResult(f"got {len(action)}\n", 0.1, done, False, {"tool_call": True})


class FaultyEnv(EchoEnv):
    """Problem ``crash`` raises in step; problem ``hang`` sleeps past any step timeout."""

    def reset(self, problem: Problem, seed: int):
        self.kind = problem.id
        return super().reset(problem, seed)

    def step(self, action: str) -> StepResult:
        if self.kind == "crash":
            raise RuntimeError("tool exploded")
        if self.kind == "hang":
            time.sleep(3.0)
        return super().step(action)


def split_into_turns(t):
    """The trajectory as rows of its own turns, each after everything before it (observation tokens
    included): a split that any template allows, so it must train exactly as the whole."""
    segments, ids, logprobs, new_index = [], [], [], {}
    k = 0
    while k < len(t.token_ids):
        if not t.mask[k]:
            k += 1
            continue
        start = k
        while k < len(t.token_ids) and t.mask[k]:
            new_index[k] = len(ids) + k - start
            k += 1
        segments.append(Segment(t.prompt_ids + t.token_ids[:start], len(ids), len(ids) + k - start))
        ids += t.token_ids[start:k]
        logprobs += t.logprobs[start:k]
    return dataclasses.replace(
        t,
        token_ids=ids,
        logprobs=logprobs,
        mask=[1] * len(ids),
        turn_ends=[new_index[e] for e in t.turn_ends],
        segments=segments,
    )
