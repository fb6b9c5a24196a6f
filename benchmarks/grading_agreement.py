"""Grading agreement: rlvr's ``math`` grader against the verdicts shipped with real model outputs.

* **Qwen2.5-Math, MATH** (``tests/data/qwen25_math_cot_100.jsonl``, shipped): 800 completions graded
  against the raw MATH golds, compared with the Qwen2.5-Math evaluator's per-sample ``score``, raw and
  with its 9 documented false negatives corrected (tests/data/README.md).
* **GPT-3, GSM8K** (``gsm8k_gpt3_example_model_solutions.jsonl``, 4 models x 1319): compared with
  OpenAI's ``is_correct``. The solutions end "A: n" and mark no answer, so they are graded with the
  evaluation-only ``last_number`` fallback (and, for reference, without it).
* **ToRA, GSM8K** (``tora-70b-v1.0_gsm8k.jsonl``, ``tora-code-34b-v1.0_gsm8k.jsonl``): no per-sample
  verdicts; rlvr's accuracy against the authors' published mean (their ``.metrics`` file).

The last two are not shipped with rlvr: ``--outputs`` names a folder holding those files (copies of
openai/grade-school-math and microsoft/ToRA outputs); without it, or where a file is absent, their
rows are skipped.

    python benchmarks/grading_agreement.py [--outputs /path/to/outputs] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

from rlvr.rewards.math import grade_completions, new_math_pool

ROOT = Path(__file__).resolve().parents[1]
QWEN = ROOT / "tests" / "data" / "qwen25_math_cot_100.jsonl"
# The Qwen2.5-Math evaluator's known false negatives, (idx, sample): tests/data/README.md.
QWEN_FALSE_NEGATIVES = {(3, s) for s in range(8)} | {(72, 7)}
GPT3_MODELS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def correct(completions: list[str], golds: list[str], pool, fallback: str = "none") -> list[bool]:
    grades = grade_completions(completions, golds, pool=pool, grade_truncated=True, fallback=fallback)
    return [o == "correct" for o in grades.outcomes]


def agreement(ours: list[bool], theirs: list[bool]) -> str:
    return f"{sum(a == b for a, b in zip(ours, theirs, strict=True))} / {len(ours)}"


def qwen_rows(pool) -> list[tuple[str, str, str]]:
    rows = read_jsonl(QWEN)
    keys = [(r["idx"], s) for r in rows for s in range(len(r["response"]))]
    completions = [c for r in rows for c in r["response"]]
    golds = [r["answer"] for r in rows for _ in r["response"]]
    verdicts = [v for r in rows for v in r["score"]]
    corrected = [v or k in QWEN_FALSE_NEGATIVES for k, v in zip(keys, verdicts, strict=True)]
    ours = correct(completions, golds, pool)
    return [
        ("Qwen2.5-Math, MATH (800)", "Qwen2.5-Math evaluator, raw", agreement(ours, verdicts)),
        ("Qwen2.5-Math, MATH (800)", "same, 9 known false negatives corrected", agreement(ours, corrected)),
    ]


def gpt3_rows(outputs: Path, pool) -> list[tuple[str, str, str]]:
    path = outputs / "gsm8k_gpt3_example_model_solutions.jsonl"
    if not path.is_file():
        return []
    rows = read_jsonl(path)
    golds = [r["ground_truth"].rsplit("A:", 1)[1].strip() for r in rows]
    out = []
    for fallback in ("last_number", "none"):
        agree, total = 0, 0
        for model in GPT3_MODELS:
            ours = correct([r[model]["solution"] for r in rows], golds, pool, fallback)
            theirs = [r[model]["is_correct"] for r in rows]
            agree += sum(a == b for a, b in zip(ours, theirs, strict=True))
            total += len(rows)
        out.append(
            ("GPT-3, GSM8K (4 x 1319)", f"OpenAI's is_correct, extraction {fallback}", f"{agree} / {total}")
        )
    return out


def tora_rows(outputs: Path, pool) -> list[tuple[str, str, str]]:
    out = []
    for name in ("tora-70b-v1.0", "tora-code-34b-v1.0"):
        path, metrics = outputs / f"{name}_gsm8k.jsonl", outputs / f"{name}_gsm8k.metrics"
        if not path.is_file() or not metrics.is_file():
            continue
        published = re.search(r"Mean score: \[([\d.]+)\]", metrics.read_text()).group(1)  # type: ignore[union-attr]
        rows = read_jsonl(path)
        completions, golds = [r["code"][0] for r in rows], [r["gt"] for r in rows]
        for fallback in ("none", "last_number"):
            accuracy = 100 * sum(correct(completions, golds, pool, fallback)) / len(rows)
            out.append(
                (
                    f"{name}, GSM8K (1319)",
                    f"published {published}%; extraction {fallback}",
                    f"{accuracy:.1f}%",
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--outputs", type=Path, default=None, help="folder with the GSM8K outputs")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    with new_math_pool(num_workers=args.workers) as pool:
        rows = qwen_rows(pool)
        if args.outputs is not None:
            rows += gpt3_rows(args.outputs, pool) + tora_rows(args.outputs, pool)
    print("| outputs | against | rlvr |\n|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
