"""``rlvr eval``: evaluate a model, a run's checkpoints, or a file of existing completions.

For each model: load it, build the benchmark sets, generate (resuming from the samples already
written), score, summarise, and write ``results.json``, ``report.md``, ``pass_at_k.png`` and
``samples/<benchmark>.jsonl`` into the output directory; print the table. With an ``env`` section
(the eval config's or the training config's), each problem is played as multi-turn trajectories in
the environment instead (:mod:`rlvr.evaluation.trajectories`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlvr.errors import ConfigError
from rlvr.evaluation.config import EvalRunConfig
from rlvr.evaluation.generation import GenerationSettings, SampleStore, batches, generate_records
from rlvr.evaluation.report import format_table, write_outputs
from rlvr.evaluation.sets import EvalSet, FileFields, resolve_set, with_template
from rlvr.evaluation.summary import macro_average, summarize
from rlvr.evaluation.trajectories import (
    env_runner,
    resolve_env_section,
    summarize_trajectories,
    trajectory_records,
)

SETTINGS_FILE = "eval_settings.json"


@dataclass(frozen=True)
class Target:
    """One model to evaluate: its label (final, step-000050, or the model's name), its weights, and the
    run directory it belongs to (None for a plain model)."""

    label: str
    model_path: str
    run_dir: Path | None


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and ((p / "final").is_dir() or (p / "checkpoints").is_dir())


def resolve_targets(model: str, checkpoint: str) -> list[Target]:
    """The models ``model`` and ``checkpoint`` name (see :class:`EvalRunConfig`)."""
    from rlvr.training.checkpoint import checkpoint_name, latest_checkpoint, list_checkpoints

    if not is_run_dir(model):
        if checkpoint != "final":
            raise ConfigError(f"setting 'checkpoint' applies to run directories; {model!r} is not one")
        from rlvr.toy.build import TOYS

        if model not in TOYS and not Path(model).exists() and "/" not in model:
            raise ConfigError(f"model {model!r} is neither a directory nor a hub name (owner/name)")
        return [Target(Path(model).name, model, None)]
    run = Path(model)
    final = Target("final", str(run / "final"), run)
    if checkpoint == "final":
        if not (run / "final").is_dir():
            raise ConfigError(f"run {run} has no final model (was it interrupted?); pass checkpoint=latest")
        return [final]
    if checkpoint == "latest":
        path = latest_checkpoint(run)
        if path is None:
            raise ConfigError(f"run {run} has no checkpoint yet")
        return [Target(path.name, str(path), run)]
    if checkpoint == "all":
        targets = [Target(p.name, str(p), run) for p in list_checkpoints(run)]
        return targets + ([final] if (run / "final").is_dir() else [])
    path = run / "checkpoints" / checkpoint_name(int(checkpoint))
    if not path.is_dir():
        steps = ", ".join(p.name for p in list_checkpoints(run)) or "none"
        raise ConfigError(f"run {run} has no checkpoint at step {checkpoint} (checkpoints: {steps})")
    return [Target(path.name, str(path), run)]


def load_eval_tokenizer(path: str) -> Any:
    """The tokenizer of the model at ``path`` (its pad token set), without the weights."""
    from rlvr.training.model import resolve_model_path, tokenizer_from_pretrained

    try:
        tokenizer = tokenizer_from_pretrained(resolve_model_path(path))
    except OSError as e:
        raise ConfigError(f"cannot load a tokenizer from {path!r} ({e})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_eval_model(path: str, device: torch.device, dtype: str) -> tuple[Any, Any]:
    """Model (in eval mode, a LoRA adapter merged into its base) and tokenizer from ``path``."""
    from transformers import AutoModelForCausalLM

    from rlvr.training.model import resolve_dtype, resolve_model_path

    resolved = resolve_model_path(path)
    torch_dtype = resolve_dtype(dtype, device)
    tokenizer = load_eval_tokenizer(path)
    try:
        if (Path(resolved) / "adapter_config.json").is_file():
            try:
                from peft import AutoPeftModelForCausalLM
            except ImportError:
                raise ConfigError(
                    f"{path} holds a LoRA adapter; loading it needs peft: pip install peft"
                ) from None
            model = AutoPeftModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(resolved, dtype=torch_dtype)
    except OSError as e:
        raise ConfigError(f"cannot load a model from {path!r} ({e})") from None
    return model.to(device).eval(), tokenizer


def build_eval_engine(engine: str, path: str, device: str, dtype: str, max_batch_sequences: int = 256) -> Any:
    """The engine ``rlvr eval`` and ``rlvr sample`` generate with: the builtin engine over the model
    at ``path`` (a LoRA adapter merged into its base), or vLLM loading ``path`` itself."""
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.training.model import resolve_device, resolve_dtype, resolve_model_path

    if engine != "vllm":
        model, tokenizer = load_eval_model(path, resolve_device(device), dtype)
        return HFEngine(model, tokenizer, max_batch_sequences=max_batch_sequences)
    from rlvr.rollout.vllm_engine import VLLMEngine, import_vllm

    import_vllm()  # a missing vLLM is an error naming the extra, before anything loads
    resolved = resolve_model_path(path)
    if (Path(resolved) / "adapter_config.json").is_file():
        raise ConfigError(
            f"{path} holds a LoRA adapter: the vllm engine loads full models; merge it first or use the "
            "builtin engine"
        )
    torch_device = resolve_device(device)
    return VLLMEngine(
        str(resolved),
        load_eval_tokenizer(path),
        dtype=resolve_dtype(dtype, torch_device),
        device=torch_device,
    )


def run_config(run_dir: Path) -> Any:
    """The training config a run directory was made with."""
    from rlvr.config import Config, merge_layers

    path = run_dir / "config.json"
    if not path.is_file():
        raise ConfigError(
            f"{run_dir} has no config.json; benchmark 'task' needs a run directory of rlvr train"
        )
    return merge_layers([(str(path), json.loads(path.read_text()))], Config)


def training_config(config: EvalRunConfig, run_dir: Path | None) -> Any:
    """The training config whose task 'task' evaluates: ``train_config``, else the run's; None if neither."""
    if config.train_config:
        source = Path(config.train_config)
        if source.is_dir():
            return run_config(source)
        from rlvr.config import load_config

        return load_config(source)
    return run_config(run_dir) if run_dir is not None else None


def training_task(config: EvalRunConfig, run_dir: Path | None) -> Any:
    """The training task 'task' evaluates (the ``task`` section's, else ``train_config``'s, else the
    run's), or None."""
    return task_of(config, training_config(config, run_dir))


def task_of(config: EvalRunConfig, train: Any) -> Any:
    """The task of the eval config's ``task`` section, else of the training config ``train``, or None."""
    from rlvr.training.setup import build_task

    if config.task is not None:
        from rlvr.config import Config

        return build_task(Config(task=config.task))
    return build_task(train) if train is not None else None


def default_template(config: EvalRunConfig, tokenizer: Any, task: Any) -> str:
    if config.template:
        return config.template
    if task is not None:
        return task.template
    return "qwen_boxed" if getattr(tokenizer, "chat_template", None) else "r1_zero"


def build_sets(config: EvalRunConfig, template: str, task: Any) -> list[EvalSet]:
    names = config.benchmarks or (["task"] if task is not None else ["math500"])
    fields = FileFields(
        config.question_field,
        config.answer_field,
        config.answer_format,
        config.id_field,
        tuple(config.meta_fields),
    )
    return [
        resolve_set(
            name,
            template,
            task=task,
            task_template=config.template,
            fields=fields,
            num_problems=config.num_problems,
            grade_truncated=config.grade_truncated,
            timeout_s=config.timeout_s,
            skip_bad_rows=config.skip_bad_rows,
        )
        for name in names
    ]


def output_dir_for(config: EvalRunConfig, target: Target, several: bool) -> Path:
    if config.output_dir:
        return Path(config.output_dir) / target.label if several else Path(config.output_dir)
    if target.run_dir is not None:
        return target.run_dir / "eval" / target.label
    return Path("runs") / "eval" / target.label


def settings_record(
    config: EvalRunConfig, target: Target, sets: list[EvalSet], env: Any = None
) -> dict[str, Any]:
    """What the samples already on disk must have been generated with, to be reused (``env``: the
    env section trajectories are played with, None for single-turn)."""
    return {
        "model": target.model_path,
        "benchmarks": {s.name: len(s.problems) for s in sets},
        "rows_left_out": {s.name: len(s.skipped) for s in sets if s.skipped},
        "train_config": config.train_config,
        "task": dataclasses.asdict(config.task) if config.task is not None else None,
        "env": dataclasses.asdict(env) if env is not None else None,
        "template": config.template,
        "templates": {s.name: s.template for s in sets},
        "samples_per_problem": config.samples_per_problem,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "top_k": config.top_k,
        "max_new_tokens": config.max_new_tokens,
        "grade_truncated": config.grade_truncated,
        "seed": config.seed,
        "problems_per_batch": config.problems_per_batch,
        **({"engine": config.engine} if config.engine != "builtin" else {}),
    }


def check_output_dir(out: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix samples of different settings in one directory (unless ``overwrite``)."""
    path = out / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        changed = [k for k in settings if old.get(k) != settings[k]]
        if changed and not overwrite:
            key = changed[0]
            raise ConfigError(
                f"{out} holds an evaluation with other settings ({key}: {old.get(key)!r} there, "
                f"{settings[key]!r} now); choose another output_dir or pass --overwrite"
            )
        if changed:
            for stale in (out / "samples").glob("*.jsonl"):
                stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _progress(log: Any, name: str, done: int, total: int, started: float, resumed: int) -> None:
    elapsed = time.perf_counter() - started
    rate = (done - resumed) / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    log(f"[{name}] {done}/{total} problems  {rate:.2f} problems/s  eta {eta:.0f}s")


def generation_settings(config: EvalRunConfig) -> GenerationSettings:
    """How ``config`` samples: n, temperature, top-p, top-k and the token budgets."""
    return GenerationSettings(
        config.samples_per_problem,
        config.temperature,
        config.top_p,
        config.top_k,
        config.max_new_tokens,
        config.max_prompt_tokens,
        prompt_limit_setting="max_prompt_tokens",
    )


def evaluate_set(
    engine: Any, tokenizer: Any, eval_set: EvalSet, config: EvalRunConfig, out: Path, log: Any
) -> list[dict[str, Any]]:
    """Every record of ``eval_set``, generating only the batches not already in its samples file."""
    from rlvr.rewards.composite import CompositeReward

    settings = generation_settings(config)
    reward = CompositeReward(eval_set.rewards)

    def generate(problems: range) -> list[dict[str, Any]]:
        seed = config.seed + problems.start
        return generate_records(engine, tokenizer, eval_set, reward, problems, settings, seed=seed)

    return evaluate_batches(eval_set, config, out, log, generate)


def evaluate_env_set(
    engine: Any, runner: Any, eval_set: EvalSet, config: EvalRunConfig, out: Path, log: Any
) -> list[dict[str, Any]]:
    """Every trajectory record of ``eval_set`` played by ``runner``, resuming like :func:`evaluate_set`.

    The environment's stop strings end the turns (the set's own are a single-turn template's).
    """
    settings = generation_settings(config)

    def play(problems: range) -> list[dict[str, Any]]:
        sampling = settings.sampling((), seed=config.seed + problems.start)
        trajectories = runner.run(engine, [eval_set.problems[i] for i in problems], sampling)
        return trajectory_records(eval_set, problems, trajectories, sampling.n, engine.tokenizer)

    return evaluate_batches(eval_set, config, out, log, play)


def evaluate_batches(
    eval_set: EvalSet,
    config: EvalRunConfig,
    out: Path,
    log: Any,
    generate: Callable[[range], list[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Every record of ``eval_set``: the complete batches of its samples file, then ``generate`` (the
    records of a range of problems) for each batch not yet there, appended as it comes."""
    n = config.samples_per_problem
    store = SampleStore(
        out / "samples" / f"{eval_set.name}.jsonl",
        num_problems=len(eval_set.problems),
        n=n,
        batch_size=config.problems_per_batch,
    )
    done = store.load()
    total = len(eval_set.problems)
    resumed = sum(len(rs) for rs in done.values()) // n
    if resumed:
        log(f"[{eval_set.name}] resuming: {resumed}/{total} problems already evaluated")
    started = time.perf_counter()
    finished = resumed
    for number, problems in enumerate(batches(total, config.problems_per_batch)):
        if number in done:
            continue
        records = generate(problems)
        store.append(records)
        done[number] = records
        finished += len(problems)
        _progress(log, eval_set.name, finished, total, started, resumed)
    return [r for number in sorted(done) for r in done[number]]


def results_document(
    settings: dict[str, Any], sets: list[EvalSet], records: dict[str, list[dict[str, Any]]], timeout_s: float
) -> dict[str, Any]:
    """The settings, every set's metrics and their macro average (trajectory metrics when the
    settings name an environment)."""
    if settings.get("env") is not None:
        benchmarks = {s.name: summarize_trajectories(records[s.name], breakdown=s.breakdown) for s in sets}
    else:
        benchmarks = {
            s.name: summarize(
                records[s.name], equivalence=s.equivalence, breakdown=s.breakdown, timeout_s=timeout_s
            )
            for s in sets
        }
    return {"settings": settings, "benchmarks": benchmarks, "macro": macro_average(benchmarks)}


def prepare_sets(config: EvalRunConfig, target: Target) -> tuple[list[EvalSet], Any]:
    """The sets to evaluate ``target`` on, with their templates, and the env section trajectories are
    played with (None: single-turn), all read and checked before any weights load."""
    from rlvr.training.setup import tokenize_prompts

    train = training_config(config, target.run_dir)
    task = task_of(config, train)  # the data first: a bad row stops here, before any model
    env = resolve_env_section(config.env, train.env if train is not None else None)
    known = config.template or (task.template if task is not None else None)
    sets = build_sets(config, known or "r1_zero", task)
    tokenizer = load_eval_tokenizer(target.model_path)
    if known is None:  # the model's default template, which its tokenizer decides
        template = default_template(config, tokenizer, task)
        sets = [with_template(s, template) for s in sets]
    if env is None:  # every prompt within max_prompt_tokens (an environment writes its own prompts)
        for s in sets:
            tokenize_prompts(s.problems, s.template, tokenizer, config.max_prompt_tokens, "max_prompt_tokens")
    return sets, env


def evaluate_target(config: EvalRunConfig, target: Target, out: Path, log: Any = print) -> dict[str, Any]:
    """Evaluate one model into ``out``; returns the results document."""
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.training.model import resolve_device

    sets, env = prepare_sets(config, target)
    # the environment's parameters checked before the weights load (the environments make the prompts)
    runners = {s.name: env_runner(env, s, config.max_new_tokens) for s in sets} if env is not None else {}
    settings = settings_record(config, target, sets, env)
    if config.engine == "vllm":  # environments play turn by turn through its generate
        check_output_dir(out, settings, config.overwrite)
        engine = build_eval_engine(config.engine, target.model_path, config.device, config.dtype)
    else:
        model, tokenizer = load_eval_model(target.model_path, resolve_device(config.device), config.dtype)
        check_output_dir(out, settings, config.overwrite)
        engine = HFEngine(model, tokenizer, max_batch_sequences=config.max_batch_sequences)
    tokenizer = engine.tokenizer
    for s in sets:
        if s.skipped:
            log(f"[{s.name}] {len(s.skipped)} bad row(s) left out; first: {s.skipped[0]}")
    plays = "trajectory" if config.samples_per_problem == 1 else "trajectories"
    unit = f"{plays} in environment {env.name}" if env is not None else "sample(s)"
    log(
        f"evaluating {target.model_path} on {', '.join(f'{s.name} ({len(s.problems)})' for s in sets)}: "
        f"{config.samples_per_problem} {unit} per problem, temperature {config.temperature}, into {out}"
    )
    records = {}
    try:
        with torch.no_grad():
            for s in sets:
                if env is not None:
                    records[s.name] = evaluate_env_set(engine, runners[s.name], s, config, out, log)
                else:
                    records[s.name] = evaluate_set(engine, tokenizer, s, config, out, log)
    finally:  # a vLLM engine frees its memory and its process state before the next target's starts
        close = getattr(engine, "close", None)
        if close is not None:
            close()
    results = results_document({**settings, "label": target.label}, sets, records, config.timeout_s)
    write_outputs(results, out)
    return results


def run_evaluation(config: EvalRunConfig, log: Any = print) -> dict[str, dict[str, Any]]:
    """Evaluate every model ``config`` names (or re-score ``config.completions``); results by label."""
    if config.cpu_threads is not None:
        torch.set_num_threads(config.cpu_threads)
    if config.completions:
        from rlvr.evaluation.rescore import rescore_file

        return {"completions": rescore_file(config, log)}
    targets = resolve_targets(config.model, config.checkpoint)
    all_results = {}
    for target in targets:
        out = output_dir_for(config, target, several=len(targets) > 1)
        results = evaluate_target(config, target, out, log)
        log(f"\n{target.label}:\n{format_table(results)}\nresults in {out}")
        all_results[target.label] = results
    if len(targets) > 1:
        log("\n" + checkpoints_table(all_results))
    return all_results


def checkpoints_table(all_results: dict[str, dict[str, Any]]) -> str:
    """The headline accuracy of every benchmark, one line per checkpoint."""
    first = next(iter(all_results.values()))
    names = list(first["benchmarks"])
    n = first["settings"]["samples_per_problem"]
    lines = ["checkpoint  " + "  ".join(f"{name} avg@{n}" for name in names)]
    for label, results in all_results.items():
        cells = [
            f"{100 * results['benchmarks'][name][f'avg@{n}']:.1f}".rjust(len(name) + 5) for name in names
        ]
        lines.append(f"{label:<10}  " + "  ".join(cells))
    return "\n".join(lines)
