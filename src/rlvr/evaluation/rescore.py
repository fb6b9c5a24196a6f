"""``rlvr eval --completions FILE``: score existing completions without generating.

Two layouts are read:

* **rlvr's own samples** (``samples/<benchmark>.jsonl`` of an earlier evaluation: one record per
  completion with ``index``, ``sample``, ``completion`` and ``gold``), for re-grading after a
  grader change. Every benchmark in the file is scored separately.
* **Any other JSONL / JSON / Parquet file** with one row per problem: the question
  (``question_field``), the gold (``answer_field`` read with ``answer_format``) and the completions
  (``completion_field``: a list of the problem's n completions, or one completion; a dotted name
  such as ``175b_verification.solution`` reaches into nested objects). Every row must have the same
  number of completions.

Completions from a file carry no token counts, so lengths are in characters and no completion is
known to be truncated. ``formatted`` is read against the template (qwen_boxed, i.e. ``\\boxed{}``,
unless ``template`` is set). ``extraction=last_number`` grades the last number of a completion that
marks no final answer, as the Qwen2.5-Math evaluation harness does.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rlvr.errors import DataError
from rlvr.evaluation.config import EvalRunConfig
from rlvr.evaluation.generation import write_records
from rlvr.evaluation.report import format_table, write_outputs
from rlvr.evaluation.scoring import Generated, score_records
from rlvr.evaluation.sets import EvalSet, math_rewards
from rlvr.evaluation.summary import macro_average, summarize
from rlvr.rewards.composite import CompositeReward
from rlvr.tasks.base import Problem
from rlvr.tasks.loading import FieldMap, get_field, load_problems, read_rows

OWN_FIELDS = {"index", "sample", "completion", "gold"}


def _own_sets(rows: list[tuple[str, Any]], template: str, rewards: Any) -> list[tuple[EvalSet, list]]:
    """Sets and their (indices, completions) from rlvr sample records."""
    by_set: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for where, row in rows:
        missing = OWN_FIELDS - set(row)
        if missing:
            raise DataError(f"{where}: a sample record needs the fields {', '.join(sorted(missing))}")
        by_set.setdefault(str(row.get("benchmark", "completions")), {}).setdefault(
            int(row["index"]), []
        ).append(row)
    out = []
    for name, problems in by_set.items():
        ordered = [sorted(problems[i], key=lambda r: r["sample"]) for i in sorted(problems)]
        eval_set = EvalSet(
            name,
            [
                Problem(s[0].get("id", str(i)), s[0].get("prompt", ""), s[0]["gold"], s[0].get("meta", {}))
                for i, s in enumerate(ordered)
            ],
            template,
            rewards,
            equivalence="math",
            breakdown=tuple(sorted({k for s in ordered for k in s[0].get("meta", {})})),
        )
        completions = [[r["completion"] for r in s] for s in ordered]
        out.append((eval_set, completions))
    return out


def _file_set(path: Path, rows: list[tuple[str, Any]], config: EvalRunConfig, template: str, rewards: Any):
    from rlvr.rewards.math import check_gold

    fields = FieldMap(
        config.question_field,
        config.answer_field,
        config.answer_format,
        id=config.id_field,
        meta=tuple(config.meta_fields),
    )
    problems = load_problems(path, fields, check_gold=check_gold).problems
    completions = []
    for where, row in rows:
        value = get_field(row, config.completion_field, where)
        samples = value if isinstance(value, list) else [value]
        if not samples or not all(isinstance(s, str) for s in samples):
            raise DataError(
                f"{where}: field '{config.completion_field}' must be a string or a list of strings"
            )
        completions.append(samples)
    eval_set = EvalSet(
        path.stem, problems, template, rewards, equivalence="math", breakdown=tuple(config.meta_fields)
    )
    return [(eval_set, completions)]


def rescore_file(config: EvalRunConfig, log: Any = print) -> dict[str, Any]:
    """Score the completions of ``config.completions``; write and return the results document."""
    assert config.completions is not None
    path = Path(config.completions)
    rows = list(read_rows(path))
    if not rows:
        raise DataError(f"{path}: no rows")
    template = config.template or "qwen_boxed"
    rewards = math_rewards(grade_truncated=True, timeout_s=config.timeout_s)
    if config.extraction == "last_number":
        rewards = tuple(
            replace(spec, params={**spec.params, "fallback": "last_number"}) if spec.name == "math" else spec
            for spec in rewards
        )
    own = isinstance(rows[0][1], dict) and OWN_FIELDS <= set(rows[0][1])
    sets = _own_sets(rows, template, rewards) if own else _file_set(path, rows, config, template, rewards)
    out = Path(config.output_dir) if config.output_dir else Path("runs") / "eval" / path.stem
    benchmarks = {}
    n = None
    for eval_set, completions in sets:
        sizes = {len(c) for c in completions}
        if len(sizes) != 1:
            raise DataError(
                f"{path}: problems have different numbers of completions ({sorted(sizes)}); every problem needs the same n"
            )
        n = sizes.pop()
        generated = [Generated(t, len(t), False) for c in completions for t in c]
        records = score_records(
            eval_set,
            CompositeReward(eval_set.rewards),
            list(range(len(completions))),
            generated,
            n,
            prompts=[p.question for p in eval_set.problems],
        )
        write_records(out / "samples" / f"{eval_set.name}.jsonl", records)
        benchmarks[eval_set.name] = summarize(
            records,
            equivalence=eval_set.equivalence,
            breakdown=eval_set.breakdown,
            timeout_s=config.timeout_s,
        )
        log(f"[{eval_set.name}] scored {len(records)} completions of {len(completions)} problems")
    results = {
        "settings": {
            "model": str(path),
            "completions": str(path),
            "samples_per_problem": n,
            "temperature": None,
            "top_p": None,
            "template": template,
            "max_new_tokens": None,
            "seed": None,
            "length_unit": "characters",
            "extraction": config.extraction,
        },
        "benchmarks": benchmarks,
        "macro": macro_average(benchmarks),
    }
    write_outputs(results, out)
    log(f"\n{format_table(results)}\nresults in {out}")
    return results
