"""``rlvr sample``: rejection sampling and distillation data from a teacher model.

The stage, top to bottom::

    problems    a training task's split (its train split by default) or a local problems file,
                read and checked before any model loads
    generate    n completions per problem by the teacher, batch by batch into
                OUT/samples/<set>.jsonl (rlvr eval's SampleStore: an interrupted run resumes from the
                batches already written, and settings that differ from theirs are refused)
    grade       the task's rewards (the CompositeReward the trainer uses); correct = the verifier's
                outcome
    select      a rule over each problem's graded samples (:mod:`rlvr.stages.selection`), re-run from
                every stored sample at the end, so a new rule costs no generation
    write       OUT/sft.jsonl (prompt, completion) or OUT/pairs.jsonl (prompt, chosen, rejected),
                and OUT/summary.json, each written atomically

The prompt of a row is the text the teacher was prompted with, as its template rendered it, so that
``rlvr sft`` with its default settings (template ``plain``, which passes the prompt through) trains
on the very prompt the completion answers. Each row also carries the raw ``question``: train a model
with another template with ``data.prompt=question`` and that template.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlvr.config import AT_LEAST_1, check_ranges
from rlvr.errors import ConfigError
from rlvr.evaluation.config import EVAL_SETTING_RANGES
from rlvr.stages.selection import PAIR_RULES, SFT_RULES, Graded, PairRule, SelectRule, select

SFT_FILE = "sft.jsonl"
PAIRS_FILE = "pairs.jsonl"
SUMMARY_FILE = "summary.json"


# --- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleConfig:
    """Settings of ``rlvr sample``: from a YAML file, ``key=value`` items and flags (flags win)."""

    model: str = "toy"
    """The teacher: a model directory, hub name or 'toy', or the run directory of an `rlvr train` run."""
    checkpoint: str = "final"
    """Run directories only: 'final', 'latest' or a step number."""
    train_config: str | None = None
    """The training config (YAML) or run directory whose task gives the problems and rewards (None: the
    teacher's run directory)."""
    split: Literal["train", "test"] | None = None
    """Which split of the task: train or test (None: train). Tasks only."""
    problems: str | None = None
    """A local .jsonl/.json/.parquet file of problems instead of a task, graded by the math reward."""
    question_field: str = "question"
    """Problems file: the field holding the question ('a+b' joins two fields)."""
    answer_field: str = "answer"
    """Problems file: the field holding the gold answer."""
    answer_format: Literal["plain", "gsm8k", "boxed", "first"] = "plain"
    """Problems file: how the gold is read from the answer field (see docs/tasks.md)."""
    id_field: str | None = None
    """Problems file: a field with a problem id (None: the row number)."""
    skip_bad_rows: bool = False
    """Problems file: leave out rows that cannot be used, counted in the summary, instead of stopping."""
    num_problems: int | None = None
    """Sample the first N problems (None: all)."""
    template: str | None = None
    """Prompt template (None: the task's; for a problems file, qwen_boxed when the tokenizer has a chat
    template and r1_zero when not)."""
    n: int = 8
    """Samples per problem; temperature 0 (greedy) always takes 1."""
    temperature: float = 1.0
    """Sampling temperature; 0 decodes greedily."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 disables)."""
    top_k: int = 0
    """Keep the k most likely tokens (0 disables)."""
    max_new_tokens: int = 1024
    """Generation budget per completion, in tokens."""
    max_prompt_tokens: int = 2048
    """Longest prompt accepted, in tokens; a longer one is an error naming the problem."""
    grade_truncated: bool = True
    """Problems file: grade completions cut at max_new_tokens; false counts them wrong."""
    timeout_s: float = 5.0
    """Problems file: wall-clock limit of one answer check by math-verify."""
    seed: int = 0
    """Sampling seed; a batch of problems uses seed + the index of its first problem."""
    problems_per_batch: int = 32
    """Problems generated together; samples are written (and resume) batch by batch."""
    max_batch_sequences: int = 256
    """Most sequences decoded at once."""
    engine: Literal["builtin", "vllm"] = "builtin"
    """The rollout engine (docs/rollout.md): builtin, or vllm (needs the vllm extra; full models only)."""
    select: SelectRule = "correct"
    """What is kept of a problem's samples: correct (every correct one), first_correct, shortest_correct,
    best (highest reward, ties to the shortest), or pairs (preference pairs, see 'pairs')."""
    pairs: PairRule = "shortest_vs_longest_correct"
    """select=pairs: shortest_vs_longest_correct (chosen the shortest correct sample, rejected the longest
    correct one) or correct_vs_wrong (the i-th correct sample against the i-th wrong one)."""
    max_per_problem: int | None = None
    """Most rows kept per problem (None: no limit)."""
    output_dir: str | None = None
    """Where the data goes. None: RUN_DIR/sample/<checkpoint> for a run, runs/sample/<model name> otherwise."""
    overwrite: bool = False
    """Start over in an output directory that holds samples of other generation settings."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto: CUDA when available."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: bfloat16 on a GPU that supports it, float32 on CPU."""
    cpu_threads: int | None = None
    """Intra-op CPU threads (None keeps torch's default)."""


SAMPLE_SETTING_RANGES = {**EVAL_SETTING_RANGES, "max_per_problem": AT_LEAST_1}
"""The range of every numeric setting of ``rlvr sample`` (None passes where a setting allows it)."""


def _choice(key: str, value: str, valid: Sequence[str]) -> None:
    from rlvr.registry import nearest_name_hint

    if value not in valid:
        raise ConfigError(
            f"setting '{key}': unknown value {value!r}{nearest_name_hint(value, list(valid))} "
            f"(valid: {', '.join(valid)})"
        )


def validate_sample_config(c: SampleConfig) -> None:
    """Refuse settings that cannot sample, naming the setting."""
    check_ranges(c, SAMPLE_SETTING_RANGES)
    _choice("select", c.select, [*SFT_RULES, "pairs"])
    _choice("pairs", c.pairs, list(PAIR_RULES))
    if c.problems is not None and c.train_config is not None:
        raise ConfigError("settings 'problems' and 'train_config' both name the problems; give one")
    if c.problems is not None and c.split is not None:
        raise ConfigError("setting 'split' chooses a task's split; a problems file has none (drop 'split')")
    if c.problems is not None and Path(c.problems).suffix.lower() not in (".jsonl", ".json", ".parquet"):
        raise ConfigError(f"setting 'problems': {c.problems!r} is not a .jsonl, .json or .parquet file")
    if c.template is not None:
        from rlvr.tasks.templates import TEMPLATES

        try:
            TEMPLATES.get(c.template)
        except Exception as e:
            raise ConfigError(f"setting 'template': {e}") from None
    if c.checkpoint not in ("final", "latest") and not c.checkpoint.isdigit():
        raise ConfigError(
            f"setting 'checkpoint' must be final, latest or a step number, got {c.checkpoint!r}"
        )


def load_sample_config(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    flags: dict[str, Any] | None = None,
) -> SampleConfig:
    """The validated settings from defaults, a YAML file, ``key=value`` items, then flags."""
    from rlvr.config import merge_layers, parse_overrides, read_yaml

    layers: list[tuple[str, dict[str, Any]]] = []
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    if overrides:
        layers.append(("command line", parse_overrides(list(overrides))))
    if flags:
        layers.append(("command-line flags", {k: v for k, v in flags.items() if v is not None}))
    config: SampleConfig = merge_layers(layers, SampleConfig)
    validate_sample_config(config)
    return config


def generation_config(c: SampleConfig) -> Any:
    """The ``rlvr eval`` settings that generate and store the samples exactly as ``c`` asks."""
    from rlvr.evaluation.config import EvalRunConfig

    return EvalRunConfig(
        model=c.model,
        checkpoint=c.checkpoint,
        train_config=c.train_config,
        num_problems=c.num_problems,
        n=c.n,
        temperature=c.temperature,
        top_p=c.top_p,
        top_k=c.top_k,
        template=c.template,
        max_new_tokens=c.max_new_tokens,
        max_prompt_tokens=c.max_prompt_tokens,
        grade_truncated=c.grade_truncated,
        timeout_s=c.timeout_s,
        seed=c.seed,
        problems_per_batch=c.problems_per_batch,
        max_batch_sequences=c.max_batch_sequences,
        engine=c.engine,
        question_field=c.question_field,
        answer_field=c.answer_field,
        answer_format=c.answer_format,
        id_field=c.id_field,
        skip_bad_rows=c.skip_bad_rows,
        device=c.device,
        dtype=c.dtype,
    )


# --- the problems ---------------------------------------------------------------------------------


def teacher(c: SampleConfig) -> Any:
    """The teacher model ``c.model`` names (a :class:`rlvr.evaluation.run.Target`)."""
    from rlvr.evaluation.run import resolve_targets

    (target,) = resolve_targets(c.model, c.checkpoint)
    return target


def problem_set(c: SampleConfig, run_dir: Path | None) -> Any:
    """The problems to sample as an :class:`~rlvr.evaluation.sets.EvalSet`: a task's split graded by
    its rewards, or a problems file graded by math (with r1_zero until the tokenizer's default
    template replaces it, when no ``template`` is set)."""
    from rlvr.evaluation.run import training_task
    from rlvr.evaluation.sets import EvalSet, FileFields, file_set, task_set
    from rlvr.tasks.templates import stop_strings_for

    if c.problems is not None:
        fields = FileFields(c.question_field, c.answer_field, c.answer_format, c.id_field)
        return file_set(
            c.problems,
            c.template or "r1_zero",
            fields,
            num_problems=c.num_problems,
            grade_truncated=c.grade_truncated,
            timeout_s=c.timeout_s,
            skip_bad_rows=c.skip_bad_rows,
        )
    task = training_task(generation_config(c), run_dir)
    if task is None:
        raise ConfigError(
            f"{c.model!r} is not a run directory, so name the problems: setting 'train_config' (a training "
            "config or run directory, whose task is sampled) or 'problems' (a problems file)"
        )
    if c.split == "test":
        return task_set(task, template=c.template, num_problems=c.num_problems)
    template = c.template or task.template
    return EvalSet(
        name=task.name,
        problems=task.train[: c.num_problems] if c.num_problems else task.train,
        template=template,
        rewards=task.rewards,
        stop_strings=task.stop_strings if template == task.template else stop_strings_for(template),
        skipped=task.skipped_rows,
    )


def output_dir_for(c: SampleConfig, target: Any) -> Path:
    if c.output_dir:
        return Path(c.output_dir)
    if target.run_dir is not None:
        return target.run_dir / "sample" / target.label
    return Path("runs") / "sample" / target.label


def settings_record(c: SampleConfig, target: Any, problem_set: Any) -> dict[str, Any]:
    """What the samples on disk must have been generated with to be reused: rlvr eval's record, plus the
    source of the problems. The selection settings are not in it: they re-run on the stored samples."""
    from rlvr.evaluation.run import settings_record as eval_settings_record

    record = eval_settings_record(generation_config(c), target, [problem_set])
    record.update(stage="sample", split=None if c.problems else (c.split or "train"), problems=c.problems)
    return record


# --- selection and rows ---------------------------------------------------------------------------


def graded_by_problem(records: Sequence[dict[str, Any]]) -> dict[int, list[Graded]]:
    """The stored sample records as :class:`Graded` samples, by problem index, in sample order."""
    out: dict[int, list[Graded]] = {}
    for r in sorted(records, key=lambda r: (r["index"], r["sample"])):
        out.setdefault(r["index"], []).append(
            Graded(
                r["completion"], float(r["reward"]), bool(r["correct"]), int(r["length"]), int(r["sample"])
            )
        )
    return out


def _common(problem: Any, prompt: str, gold: Any) -> dict[str, Any]:
    return {"prompt": prompt, "id": problem.id, "question": problem.question, "gold": gold}


def sft_row(problem: Any, prompt: str, gold: Any, s: Graded) -> dict[str, Any]:
    """One SFT row: prompt and completion, and where they come from."""
    return {
        **_common(problem, prompt, gold),
        "completion": s.text,
        "reward": s.reward,
        "correct": s.correct,
        "length": s.length,
        "sample": s.sample,
    }


def pair_row(problem: Any, prompt: str, gold: Any, chosen: Graded, rejected: Graded) -> dict[str, Any]:
    """One preference row: prompt, chosen and rejected, and where they come from."""
    row = {**_common(problem, prompt, gold), "chosen": chosen.text, "rejected": rejected.text}
    for name, s in (("chosen", chosen), ("rejected", rejected)):
        row.update({f"{name}_reward": s.reward, f"{name}_correct": s.correct, f"{name}_length": s.length})
        row[f"{name}_sample"] = s.sample
    return row


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def build_rows(
    c: SampleConfig, problem_set: Any, records: Sequence[dict[str, Any]], prompts: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows ``c.select`` keeps of every problem's stored samples, and the summary's counts."""
    graded = graded_by_problem(records)
    golds = {r["index"]: r["gold"] for r in records}
    rows: list[dict[str, Any]] = []
    kept_lengths: list[int] = []
    empty = 0
    for index, samples in graded.items():
        problem = problem_set.problems[index]
        kept = select(samples, c.select, pairs=c.pairs, max_per_problem=c.max_per_problem)
        empty += not kept
        for item in kept:
            if isinstance(item, tuple):
                rows.append(pair_row(problem, prompts[index], golds[index], *item))
                kept_lengths += [item[0].length, item[1].length]
            else:
                rows.append(sft_row(problem, prompts[index], golds[index], item))
                kept_lengths.append(item.length)
    all_samples = [s for samples in graded.values() for s in samples]
    counts = {
        "problems": len(graded),
        "samples": len(all_samples),
        "pass_rate": _mean([float(s.correct) for s in all_samples]),
        "problems_with_a_correct_sample": sum(any(s.correct for s in ss) for ss in graded.values()),
        "truncated": _mean([float(r["truncated"]) for r in records]),
        "mean_length": _mean([s.length for s in all_samples]),
        "mean_length_kept": _mean(kept_lengths),
        "rows": len(rows),
        "problems_without_rows": empty,
    }
    if c.select == "pairs":
        counts["mean_length_chosen"] = _mean([r["chosen_length"] for r in rows])
        counts["mean_length_rejected"] = _mean([r["rejected_length"] for r in rows])
    return rows, counts


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Replace ``path`` with ``document`` atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def format_summary(s: dict[str, Any]) -> str:
    def number(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    lines = [
        f"{s['problems']} problems x {s['samples_per_problem']} samples = {s['samples']} samples: "
        f"pass rate {number(s['pass_rate'], '.1%')}, {s['problems_with_a_correct_sample']} problems with a "
        f"correct sample, mean length {number(s['mean_length'], '.1f')} tokens",
        f"select={s['select']}"
        + (f" ({s['pairs']})" if s["select"] == "pairs" else "")
        + f": {s['rows']} rows kept, mean length {number(s['mean_length_kept'], '.1f')} tokens; "
        f"{s['problems_without_rows']} problems with nothing kept",
        f"wrote {s['output']} and {SUMMARY_FILE}",
    ]
    return "\n".join(lines)


# --- the stage ------------------------------------------------------------------------------------


def run_sample(c: SampleConfig, log: Any = print) -> dict[str, Any]:
    """Generate, grade, select and write (module docstring); returns the summary."""
    import torch

    from rlvr.evaluation.generation import write_records
    from rlvr.evaluation.run import (
        build_eval_engine,
        check_output_dir,
        default_template,
        evaluate_set,
        load_eval_tokenizer,
    )
    from rlvr.evaluation.sets import with_template
    from rlvr.tasks.templates import render_prompt
    from rlvr.training.setup import tokenize_prompts

    if c.cpu_threads is not None:
        torch.set_num_threads(c.cpu_threads)
    target = teacher(c)
    pset = problem_set(c, target.run_dir)  # the data first: a bad row stops here, before any model
    tokenizer = load_eval_tokenizer(target.model_path)
    if c.problems is not None and c.template is None:  # the model's default template
        pset = with_template(pset, default_template(generation_config(c), tokenizer, None))
    # every prompt within max_prompt_tokens, before the weights load
    tokenize_prompts(pset.problems, pset.template, tokenizer, c.max_prompt_tokens, "max_prompt_tokens")
    out = output_dir_for(c, target)
    settings = settings_record(c, target, pset)
    check_output_dir(out, settings, c.overwrite)
    engine = build_eval_engine(c.engine, target.model_path, c.device, c.dtype, c.max_batch_sequences)
    tokenizer = engine.tokenizer
    gen = generation_config(c)
    if pset.skipped:
        log(f"[{pset.name}] {len(pset.skipped)} bad row(s) left out; first: {pset.skipped[0]}")
    log(
        f"sampling {target.model_path} on {pset.name} ({len(pset.problems)} problems): "
        f"{gen.samples_per_problem} sample(s) per problem, temperature {c.temperature}, into {out}"
    )
    with torch.no_grad():
        records = evaluate_set(engine, tokenizer, pset, gen, out, log)
    prompts = [render_prompt(pset.template, p.question, tokenizer) for p in pset.problems]
    rows, counts = build_rows(c, pset, records, prompts)
    data = out / (PAIRS_FILE if c.select == "pairs" else SFT_FILE)
    write_records(data, rows)
    summary = {
        "model": target.model_path,
        "set": pset.name,
        "samples_per_problem": gen.samples_per_problem,
        "select": c.select,
        "pairs": c.pairs if c.select == "pairs" else None,
        "max_per_problem": c.max_per_problem,
        **counts,
        "rows_left_out": len(pset.skipped),
        "output": str(data),
        "samples_file": str(out / "samples" / f"{pset.name}.jsonl"),
    }
    write_json(out / SUMMARY_FILE, summary)
    log(format_summary(summary))
    return summary
