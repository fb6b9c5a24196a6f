"""``rlvr toy build [NAME]``: the embedded tiny models, made from nothing and reproducible from a seed.

Each toy is a Qwen2 architecture (transformers' ``Qwen2ForCausalLM``) of under 1M parameters over
the character-level tokenizer of :mod:`rlvr.toy.tokenizer`, warm-started by a short supervised
fine-tuning on 2-digit additions written in the R1 format (:mod:`rlvr.toy.formats`):

* ``toy`` (``model: toy``) writes the column-wise working and the sum::

      47+38=  ->  <think>7+8=15 4+3+1=8</think><answer>85</answer>

  It is stopped early, while it writes the format reliably but gets few sums right: the analogue of
  a base model before R1-Zero training. RL then has something to improve.
* ``toy-long`` (``model: toy-long``) writes the same working in four styles, from terse to three
  times as long, mostly the long ones; it is trained to a useful accuracy. Its answers vary in length
  for the same accuracy: the long-answer model of the long2short recipes.
* ``toy-tool`` (``model: toy-tool``) answers 4- and 5-digit additions, which it cannot do in its
  head, and calls the ``calculator`` environment's tool in about one answer in ten
  (:func:`rlvr.toy.formats.tool_completion`): the start of the tool-use recipe
  (``recipes/tool_toy.yaml``). Its build report gives its accuracy and tool-call rate as a
  multi-turn rollout with the calculator measures them.

The learning rate stays constant after a short warmup, and the run stops at a fixed step. For
``toy``, a schedule decayed to zero at the stopping point gives a model that is stopped in the
middle of a sharp transition (greedy accuracy 5% at step 210, 14% at 220, 42% at 240), whose samples
at temperature 1 are rarely right (3%): most GRPO groups then have all rewards equal and the few
updates lower the accuracy. At a constant rate the model at 14% greedy accuracy is more confident
(entropy 0.26 instead of 0.59 nats per token) and its samples are right about as often as its
greedy answers (13%), so most groups of 8 samples hold both right and wrong answers.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlvr.toy.formats import terse_completion, tool_completion, verbose_completion
from rlvr.toy.tokenizer import build_tokenizer

PACKAGE_DIR = Path(__file__).resolve().parent


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
    max_new_tokens: int = 48
    """Generation budget of the held-out accuracy check, in tokens."""


@dataclass(frozen=True)
class Toy:
    """An embedded tiny model: where it ships, how it is built, and what it writes."""

    name: str
    directory: Path
    completion: Callable[[str, str, random.Random], str | list[tuple[str, bool]]]
    """(question, answer, rng) -> the warm-start completion: a text, or ``(text, trained)`` pieces
    where text the model does not write (a tool's output) is in the input but not in the loss."""
    config: ToyBuildConfig = field(default_factory=ToyBuildConfig)
    summary: str = ""
    digits: tuple[int, ...] = (2,)
    """Operand lengths of its arithmetic problems."""
    check: Callable[..., dict] | None = None
    """(model, tokenizer, problems, cfg) -> extra measures for the build report."""


TOYS: dict[str, Toy] = {
    "toy": Toy(
        "toy",
        PACKAGE_DIR / "model",
        lambda question, answer, rng: terse_completion(question, answer),
        summary="2-digit addition with terse working, stopped early (about 14% greedy accuracy)",
    ),
    "toy-long": Toy(
        "toy-long",
        PACKAGE_DIR / "model_long",
        verbose_completion,
        ToyBuildConfig(max_positions=192, sft_steps=600, sft_lr=2e-3, eval_problems=500, max_new_tokens=160),
        summary="2-digit addition with working of varying length, mostly long (the long2short recipes)",
    ),
    "toy-tool": Toy(
        "toy-tool",
        PACKAGE_DIR / "model_tool",
        tool_completion,
        ToyBuildConfig(sft_steps=1000, sft_problems=4000, eval_problems=200, max_new_tokens=40),
        summary="4-5 digit addition, answered in its head or, rarely, with a calculator call (the tool recipe)",
        digits=(4, 5),
        check=lambda *args: tool_use_check(*args),
    ),
}
"""The embedded toys by the name a config gives as ``model.path``."""

SHIPPED_DIR = TOYS["toy"].directory
"""The ``toy`` model's directory."""


def toy_named(name: str) -> Toy:
    """The toy called ``name``; an unknown name is an error listing the toys."""
    from rlvr.errors import ConfigError

    if name not in TOYS:
        raise ConfigError(f"no embedded toy model {name!r}; the toys are: {', '.join(TOYS)}")
    return TOYS[name]


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


def _sft_batch(
    tokenizer, pairs: list[tuple[str, str | list[tuple[str, bool]]]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and labels: the loss is on the completion's trained pieces and
    the EOS only (not on the prompt, nor on a tool's output inside the completion)."""
    rows, labels = [], []
    for question, completion in pairs:
        pieces = [(completion, True)] if isinstance(completion, str) else completion
        q = tokenizer(question)["input_ids"]
        row, label = list(q), [-100] * len(q)
        for text, trained in pieces:
            ids = tokenizer(text)["input_ids"]
            row += ids
            label += ids if trained else [-100] * len(ids)
        rows.append(row + [tokenizer.eos_token_id])
        labels.append(label + [tokenizer.eos_token_id])
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


def build_toy(
    output_dir: str | Path | None = None, cfg: ToyBuildConfig | None = None, log=print, *, name: str = "toy"
) -> dict:
    """Build, warm-start and save the toy ``name`` (default: into its shipped directory, with its own
    settings); returns the build report (also saved as JSON)."""
    from rlvr.tasks.arithmetic import arithmetic_task

    toy = toy_named(name)
    cfg = cfg or toy.config
    output_dir = Path(output_dir or toy.directory)
    tokenizer = build_tokenizer()
    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id)
    task = arithmetic_task(
        num_train=cfg.sft_problems, num_test=cfg.eval_problems, digits=toy.digits, seed=cfg.seed + 1000
    )
    data_rng = random.Random(cfg.seed + 1)
    pairs = [(p.question, toy.completion(p.question, p.answer, data_rng)) for p in task.train]
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
    accuracy = greedy_accuracy(model, tokenizer, task.test, cfg.max_new_tokens)
    params = sum(p.numel() for p in model.parameters())
    report = {"name": name, "parameters": params, "greedy_accuracy_heldout": accuracy, "config": asdict(cfg)}
    log(f"{name} model: {params / 1e6:.2f}M parameters, greedy held-out accuracy {accuracy:.1%}")
    if toy.check is not None:
        report.update(toy.check(model, tokenizer, task.test, cfg))
        log("  ".join(f"{k} {v:.1%}" for k, v in report.items() if k.startswith("with_calculator")))
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    (output_dir / "toy_build.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def tool_use_check(model, tokenizer, problems, cfg: ToyBuildConfig, sampled: bool = True) -> dict[str, float]:
    """Accuracy and tool-call rate of ``model`` as a multi-turn rollout with the ``calculator``
    environment (one call allowed, two turns): greedy, and with ``sampled`` at temperature 1 (4 per
    problem)."""
    from rlvr.envs.base import env_factory
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.rollout.multi_turn import MultiTurnRunner, TurnLimits
    from rlvr.rollout.types import SamplingParams

    runner = MultiTurnRunner(
        env_factory("calculator", {"max_tool_calls": 1}),
        TurnLimits(max_turns=2, max_turn_tokens=cfg.max_new_tokens, max_context_tokens=cfg.max_positions),
        format="plain",
        workers=1,
        env_name="calculator",
    )
    engine = HFEngine(model, tokenizer)
    report = {}
    for label, temperature, n in (("greedy", 0.0, 1), ("sampled", 1.0, 4))[: 2 if sampled else 1]:
        sampling = SamplingParams(n=n, temperature=temperature, stop_strings=("</answer>",), seed=cfg.seed)
        trajectories = runner.run(engine, problems, sampling)
        report[f"with_calculator_{label}_accuracy"] = sum(t.correct for t in trajectories) / len(trajectories)
        report[f"with_calculator_{label}_tool_call_rate"] = sum(t.tool_calls > 0 for t in trajectories) / len(
            trajectories
        )
    return report
