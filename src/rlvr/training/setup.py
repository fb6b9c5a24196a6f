"""Building a run's parts from its config: task, prompts, reward, sampler, optimizer, schedule."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch

from rlvr.config import Config
from rlvr.errors import ConfigError
from rlvr.registry import nearest_name_hint
from rlvr.tasks.base import TASKS, Problem, RewardSpec, Task


def build_task(config: Config) -> Task:
    """The configured task, with the template and reward overrides applied."""
    from rlvr.tasks import load_builtin_tasks

    load_builtin_tasks()

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


def tokenize_prompts(
    problems: list[Problem], template: str, tokenizer: Any, max_tokens: int
) -> list[list[int]]:
    """Token ids of every problem's prompt; a prompt over ``max_tokens`` is an error naming it."""
    from rlvr.tasks.templates import TEMPLATES, render_prompt

    kind = TEMPLATES.get(template).kind
    out = []
    for p in problems:
        text = render_prompt(template, p.question, tokenizer)
        ids = tokenizer(text, add_special_tokens=kind == "text")["input_ids"]
        if len(ids) > max_tokens:
            raise ConfigError(
                f"problem {p.id} ({p.meta.get('source', 'no source')}) has a {len(ids)}-token prompt, more "
                f"than rollout.max_prompt_tokens = {max_tokens}; raise the setting or filter the data"
            )
        out.append(ids)
    return out


def build_optimizer(model: Any, config: Config) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over the trainable parameters and its warmup + constant/cosine schedule.

    The schedule counts optimizer steps: ``training.steps * ppo_epochs * updates_per_step``.
    """
    o, t = config.optim, config.training
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )
    total = max(1, t.steps * t.ppo_epochs * t.updates_per_step)

    def factor(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
