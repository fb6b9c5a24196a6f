"""Tiny real transformers models and random rollouts for the training tests."""

from __future__ import annotations

import random

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr.rollout.types import Completion


def tiny_model(vocab: int, seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        eos_token_id=0,
        pad_token_id=0,
    )
    return Qwen2ForCausalLM(cfg)


def random_completions(vocab: int, num_prompts: int, n: int, seed: int = 0) -> list[Completion]:
    """Completions of varied prompt and response lengths (real token ids, random logprobs)."""
    rng = random.Random(seed)
    out = []
    for p in range(num_prompts):
        prompt = [rng.randrange(2, vocab) for _ in range(rng.randint(3, 9))]
        for _ in range(n):
            t = rng.randint(1, 12)
            out.append(
                Completion(
                    prompt_index=p,
                    prompt_ids=prompt,
                    token_ids=[rng.randrange(2, vocab) for _ in range(t)],
                    logprobs=[-rng.uniform(0.5, 4.0) for _ in range(t)],
                    text="",
                    finish_reason="length",
                )
            )
    return out
