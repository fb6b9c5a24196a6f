"""Evaluation during ``rlvr train``: the configured benchmarks every ``eval.every`` steps, and the best model.

:class:`TrainingEvaluator` runs the same generation, grading and estimators as ``rlvr eval`` on
the ``eval`` section's benchmarks. On N ranks each rank generates every N-th problem and the
records are gathered, so every rank computes the same metrics. Metrics, logged with the training
metrics:

* ``eval/<benchmark>/avg@n``, ``pass@k`` and ``maj@k`` (k = 2, 4, ..., n), ``length_mean``,
  ``format_rate``, ``truncation_rate``, ``no_answer_rate``;
* ``eval/accuracy``: avg@n averaged over the benchmarks (each counts once), and
  ``eval/length_mean``.

A run with an environment (``env.name``) is evaluated in it, as ``rlvr eval`` evaluates a run
directory (:mod:`rlvr.evaluation.trajectories`): n trajectories per problem, avg@n and pass@k of
the environment's verdicts, and what the trajectories did (``turns_mean``, ``tool_calls_mean``,
``truncation_rate``, ``error_rate``, ...).

:class:`BestModel` keeps the model with the best value of ``eval.best_metric`` in ``RUN_DIR/best``
(a Hugging Face model directory, replaced atomically, with ``best.json`` naming the step and value).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from rlvr.config import Config
from rlvr.distributed import gather_objects, rank, world_size
from rlvr.errors import ConfigError
from rlvr.evaluation.estimators import k_values
from rlvr.evaluation.generation import GenerationSettings, generate_records
from rlvr.evaluation.sets import EvalSet, resolve_set
from rlvr.evaluation.summary import macro_average, summarize
from rlvr.rewards.composite import CompositeReward
from rlvr.tasks.base import Task

BEST_DIR = "best"
BEST_FILE = "best.json"
_SKIPPED = ("problems", "samples_per_problem", "length_correct", "length_wrong")


def training_eval_sets(config: Config, task: Task) -> list[EvalSet]:
    e = config.eval
    template = e.template or task.template
    return [
        resolve_set(
            name,
            template,
            task=task,
            task_template=e.template,
            num_problems=e.num_problems,
            skip_bad_rows=e.skip_bad_rows,
            skip_setting="eval.skip_bad_rows",
        )
        for name in e.benchmarks
    ]


def set_metrics(name: str, result: dict[str, Any]) -> dict[str, float]:
    """The logged metrics of one benchmark's summary: headline ks only, no breakdowns."""
    n = result["samples_per_problem"]
    shown = {f"pass@{k}" for k in k_values(n) if k > 1} | {f"maj@{k}" for k in k_values(n) if k > 1}
    out = {}
    for key, value in result.items():
        if not isinstance(value, (int, float)) or key in _SKIPPED:
            continue
        if key.startswith(("pass@", "maj@")) and key not in shown:
            continue
        out[f"eval/{name}/{key}"] = float(value)
    return out


class TrainingEvaluator:
    """The benchmarks of a run's ``eval`` section, evaluated with the policy as it is now."""

    def __init__(self, config: Config, task: Task) -> None:
        e, r = config.eval, config.rollout
        self.sets = [s for s in training_eval_sets(config, task) if s.problems]
        self.rewards = [CompositeReward(s.rewards) for s in self.sets]
        self.settings = GenerationSettings(
            n=e.samples_per_problem,
            temperature=e.temperature,
            top_p=r.top_p,
            top_k=r.top_k,
            max_new_tokens=e.max_new_tokens or r.max_new_tokens,
            max_prompt_tokens=r.max_prompt_tokens,
        )
        self.seed = config.training.seed + 1
        self.runners = None
        if config.env.name is not None:  # evaluated in the environment it trains in
            from rlvr.evaluation.trajectories import env_runner

            self.runners = [env_runner(config.env, s, self.settings.max_new_tokens) for s in self.sets]

    def check_prompts(self, tokenizer: Any) -> None:
        """Every benchmark prompt within ``rollout.max_prompt_tokens``: an error naming the problem now,
        before the model loads, rather than at the first evaluation."""
        from rlvr.training.setup import tokenize_prompts

        for eval_set in self.sets:
            tokenize_prompts(eval_set.problems, eval_set.template, tokenizer, self.settings.max_prompt_tokens)

    def __call__(self, engine: Any, tokenizer: Any) -> dict[str, float]:
        results = {}
        for i, (eval_set, reward) in enumerate(zip(self.sets, self.rewards, strict=True)):
            mine = list(range(rank(), len(eval_set.problems), world_size()))
            if self.runners is not None:
                records = self._play(engine, tokenizer, self.runners[i], eval_set, mine)
            else:
                records = generate_records(
                    engine, tokenizer, eval_set, reward, mine, self.settings, self.seed
                )
            everything = [r for part in gather_objects(records) for r in part]  # type: ignore[union-attr]
            if self.runners is not None:
                from rlvr.evaluation.trajectories import summarize_trajectories

                results[eval_set.name] = summarize_trajectories(everything)
            else:
                results[eval_set.name] = summarize(everything, equivalence=eval_set.equivalence)
        if not results:
            return {}
        metrics: dict[str, float] = {}
        for name, result in results.items():
            metrics.update(set_metrics(name, result))
        macro = macro_average(results)
        n = next(iter(results.values()))["samples_per_problem"]
        metrics["eval/accuracy"] = macro[f"avg@{n}"]
        if "length_mean" in macro:
            metrics["eval/length_mean"] = macro["length_mean"]
        return metrics

    def _play(
        self, engine: Any, tokenizer: Any, runner: Any, eval_set: EvalSet, mine: list[int]
    ) -> list[dict]:
        """Trajectory records of problems ``mine`` played in the environment (the environment's stop
        strings end the turns)."""
        from rlvr.evaluation.trajectories import trajectory_records

        sampling = self.settings.sampling((), self.seed)
        trajectories = runner.run(engine, [eval_set.problems[i] for i in mine], sampling) if mine else []
        return trajectory_records(eval_set, mine, trajectories, sampling.n, tokenizer)


class BestModel:
    """Keeps the model with the best ``metric`` in ``run_dir/best`` (module docstring)."""

    def __init__(self, run_dir: str | Path, metric: str, mode: str = "max") -> None:
        self.dir = Path(run_dir) / BEST_DIR
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        info = self.dir / BEST_FILE
        if info.is_file():  # a resumed run competes with the best model it already kept
            self.best = float(json.loads(info.read_text())["value"])

    def is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def update(self, step: int, metrics: dict[str, float], model: Any, tokenizer: Any) -> bool:
        """Save the model when ``metrics`` holds a better value of the metric; True when it did.

        Call it on every rank: the weights of a sharded model are gathered first (a collective).
        """
        from rlvr.training.sharded_state import export_state

        if self.metric not in metrics:
            available = ", ".join(sorted(k for k in metrics if k.startswith("eval/")))
            raise ConfigError(
                f"setting 'eval.best_metric': '{self.metric}' is not an evaluation metric of this run "
                f"(available: {available})"
            )
        value = float(metrics[self.metric])
        if not self.is_better(value):
            return False
        self.best = value
        state_dict = export_state(model)  # None for a replicated model, which saves itself
        if rank() == 0:
            self._save(step, value, model, tokenizer, state_dict)
        return True

    def _save(
        self, step: int, value: float, model: Any, tokenizer: Any, state_dict: dict[str, Any] | None
    ) -> None:
        from rlvr.training.model import save_model_dir

        tmp = self.dir.with_name(f".{BEST_DIR}-tmp-{uuid.uuid4().hex[:8]}")
        save_model_dir(model, tokenizer, tmp, state_dict=state_dict)
        (tmp / BEST_FILE).write_text(json.dumps({"step": step, "metric": self.metric, "value": value}) + "\n")
        old = self.dir.with_name(f".{BEST_DIR}-old-{uuid.uuid4().hex[:8]}")
        if self.dir.exists():
            os.replace(self.dir, old)
        os.replace(tmp, self.dir)
        shutil.rmtree(old, ignore_errors=True)
