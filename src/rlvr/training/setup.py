"""Building a run's parts from its config: task, prompts, reward, sampler, optimizer, schedule."""

from __future__ import annotations

import functools
import inspect
import math
from typing import Any

import torch

from rlvr.config import Config, OptimConfig
from rlvr.errors import ConfigError
from rlvr.registry import nearest_name_hint
from rlvr.tasks.base import TASKS, Problem, RewardSpec, Task


def build_task(config: Config) -> Task:
    """The configured task, with the template and reward overrides applied."""
    from rlvr.envs.base import load_builtin_envs
    from rlvr.tasks import load_builtin_tasks

    load_builtin_tasks()
    load_builtin_envs()  # environments that bring their own problems register a task

    try:
        factory = TASKS.get(config.task.name)
    except Exception as e:
        raise ConfigError(f"setting 'task.name': {e}") from None
    accepted = inspect.signature(factory).parameters
    for key in config.task.params:
        if key not in accepted:
            hint = nearest_name_hint(key, accepted)
            raise ConfigError(
                f"setting 'task.params.{key}': task '{config.task.name}' has no parameter '{key}'{hint} "
                f"(valid: {', '.join(accepted)})"
            )
    task = factory(**config.task.params)
    if config.task.template is not None:
        task.template = config.task.template
    if config.task.rewards is not None:
        task.rewards = tuple(RewardSpec(r.name, r.weight, dict(r.params)) for r in config.task.rewards)
    if not task.train:
        raise ConfigError(f"task '{config.task.name}' has no training problems")
    return task


def build_runner(config: Config, task: Task) -> Any:
    """The multi-turn runner the ``env`` section describes (environments of ``task``'s problems)."""
    from rlvr.rollout.multi_turn import runner_from_env_config

    return runner_from_env_config(config.env, task, default_turn_tokens=config.rollout.max_new_tokens)


def turn_reward_tensor(trajectories: Any, shape: tuple[int, ...]) -> torch.Tensor:
    """Token rewards [B, T]: each step's reward on the last sampled token of its turn (0 elsewhere)."""
    out = torch.zeros(shape, dtype=torch.float32)
    for i, t in enumerate(trajectories):
        for end, reward in zip(getattr(t, "turn_ends", ()), getattr(t, "turn_rewards", ()), strict=True):
            out[i, end] += reward
    return out


@functools.lru_cache(maxsize=8)  # a vocabulary of 150k entries takes tens of milliseconds to walk
def max_chars_per_token(tokenizer: Any) -> int:
    """An upper bound on the characters of text one token stands for: the longest vocabulary entry.

    Byte-level vocabularies (GPT-2, Qwen, Llama 3) write one character per byte and SentencePiece
    ones one per character (a byte-fallback entry, ``<0x41>``, is longer than its byte), so no token
    covers more characters of text than its entry has. A text of ``n`` characters therefore has at
    least ``n / max_chars_per_token`` tokens.
    """
    return max(1, max((len(entry) for entry in tokenizer.get_vocab()), default=1))


def tokenize_prompts(
    problems: list[Problem],
    template: str,
    tokenizer: Any,
    max_tokens: int,
    setting: str = "rollout.max_prompt_tokens",
) -> list[list[int]]:
    """Token ids of every problem's prompt; a prompt over ``max_tokens`` is an error naming it.

    A prompt with more characters than ``max_tokens`` tokens can hold (:func:`max_chars_per_token`)
    is refused before it is tokenized: a stray 10 MB question costs nothing. ``setting`` names the
    limit in the error.
    """
    from rlvr.tasks.templates import TEMPLATES, render_prompt

    kind = TEMPLATES.get(template).kind
    max_chars = max_tokens * max_chars_per_token(tokenizer)
    out = []
    for p in problems:
        where = f"problem {p.id} ({p.meta.get('source', 'no source')})"
        hint = "raise the setting or filter the data"
        if len(p.question) > max_chars:
            raise ConfigError(
                f"{where} has a {len(p.question)}-character question: more than {setting} = {max_tokens} "
                f"tokens can hold (a token of this tokenizer covers at most {max_chars // max_tokens} "
                f"characters); {hint}"
            )
        text = render_prompt(template, p.question, tokenizer)
        ids = tokenizer(text, add_special_tokens=kind == "text")["input_ids"]
        if len(ids) > max_tokens:
            raise ConfigError(
                f"{where} has a {len(ids)}-token prompt, more than {setting} = {max_tokens}; {hint}"
            )
        out.append(ids)
    return out


def build_optimizer(model: Any, config: Config) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters and its warmup + constant/cosine schedule.

    The schedule counts optimizer steps: ``training.steps * ppo_epochs * updates_per_step``.
    """
    t = config.training
    return build_adamw(model, config.optim, t.steps * t.ppo_epochs * t.updates_per_step)


def build_adamw(model: Any, o: OptimConfig, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters of ``model`` with the settings ``o``, and its schedule:
    linear warmup over ``o.warmup_steps``, then constant or a cosine decay to ``o.min_lr_ratio``
    at ``total_steps`` optimizer steps."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
