"""``rlvr toy build``: the embedded tiny model, made from nothing and reproducible from a seed.

The model is a Qwen2 architecture (transformers' ``Qwen2ForCausalLM``) of about 0.9M parameters
over the character-level tokenizer of :mod:`rlvr.toy.tokenizer`. It is warm-started by a short
supervised fine-tuning on 2-digit addition written in the R1 format with a column-wise chain of
thought::

    47+38=  ->  <think>7+8=15 4+3+1=8</think><answer>85</answer>

and stopped early, while it writes the format reliably but gets few sums right: the analogue of a
base model before R1-Zero training. RL then has something to improve.

The learning rate stays constant after a short warmup, and the run stops at a fixed step. A
schedule decayed to zero at the stopping point gives a model that is stopped in the middle of a
sharp transition (greedy accuracy 5% at step 210, 14% at 220, 42% at 240), whose samples at
temperature 1 are rarely right (3%): most GRPO groups then have all rewards equal and the few
updates lower the accuracy. At a constant rate the model at 14% greedy accuracy is more confident
(entropy 0.26 instead of 0.59 nats per token) and its samples are right about as often as its
greedy answers (13%), so most groups of 8 samples hold both right and wrong answers.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr.toy.tokenizer import build_tokenizer

SHIPPED_DIR = Path(__file__).resolve().parent / "model"


@dataclass(frozen=True)
class ToyBuildConfig:
    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 352
    max_positions: int = 128
    sft_steps: int = 260
    sft_batch: int = 64
    sft_lr: float = 3e-3
    sft_problems: int = 2000
    eval_problems: int = 200


def addition_chain_of_thought(a: int, b: int) -> str:
    """The column-wise reasoning for ``a + b``, least significant digit first.

    >>> addition_chain_of_thought(47, 38)
    '7+8=15 4+3+1=8'
    """
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={total}")
        carry = total // 10
    return " ".join(steps)


def sft_completion(question: str, answer: str) -> str:
    a, b = (int(x) for x in question.rstrip("=").split("+"))
    return f"<think>{addition_chain_of_thought(a, b)}</think><answer>{answer}</answer>"


def build_model(cfg: ToyBuildConfig, vocab_size: int, eos_id: int) -> Qwen2ForCausalLM:
    torch.manual_seed(cfg.seed)
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    return Qwen2ForCausalLM(config)


def _sft_batch(tokenizer, pairs: list[tuple[str, str]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels (loss on completion tokens and the EOS only)."""
    rows, labels = [], []
    for question, completion in pairs:
        q = tokenizer(question)["input_ids"]
        c = tokenizer(completion)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(q + c)
        labels.append([-100] * len(q) + c)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    lab = torch.full((len(rows), width), -100)
    for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        lab[i, : len(lb)] = torch.tensor(lb)
    return ids, mask, lab


def greedy_accuracy(model, tokenizer, problems, max_new_tokens: int = 48) -> float:
    """Fraction of ``problems`` whose greedy completion has the right answer."""
    from rlvr.rewards.base import RewardBatch
    from rlvr.rewards.composite import resolve_reward
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.rollout.types import SamplingParams

    engine = HFEngine(model, tokenizer)
    prompts = [tokenizer(p.question)["input_ids"] for p in problems]
    completions = engine.generate(
        prompts,
        SamplingParams(n=1, max_new_tokens=max_new_tokens, temperature=0.0, stop_strings=("</answer>",)),
    )
    result = resolve_reward("arithmetic")(RewardBatch([c.text for c in completions], list(problems)))
    return sum(result.correct or []) / max(1, len(problems))


def build_toy(output_dir: str | Path, cfg: ToyBuildConfig = ToyBuildConfig(), log=print) -> dict:
    """Build, warm-start and save the toy model; returns the build report (also saved as JSON)."""
    from rlvr.tasks.arithmetic import arithmetic_task

    output_dir = Path(output_dir)
    tokenizer = build_tokenizer()
    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id)
    task = arithmetic_task(num_train=cfg.sft_problems, num_test=cfg.eval_problems, seed=cfg.seed + 1000)
    pairs = [(p.question, sft_completion(p.question, p.answer)) for p in task.train]
    rng = random.Random(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20))
    model.train()
    start = time.time()
    for step in range(cfg.sft_steps):
        ids, mask, labels = _sft_batch(tokenizer, rng.sample(pairs, cfg.sft_batch))
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == cfg.sft_steps - 1:
            log(f"sft step {step:4d}/{cfg.sft_steps}  loss {loss.item():.4f}  ({time.time() - start:.0f}s)")
    model.eval()
    accuracy = greedy_accuracy(model, tokenizer, task.test)
    params = sum(p.numel() for p in model.parameters())
    report = {"parameters": params, "greedy_accuracy_heldout": accuracy, "config": asdict(cfg)}
    log(f"toy model: {params / 1e6:.2f}M parameters, greedy held-out accuracy {accuracy:.1%}")
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "toy_build.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
