"""Math grading throughput: rlvr's isolated, time-limited grader against plain math-verify.

Both grade the same 800 real completions (tests/data/qwen25_math_cot_100.jsonl: 100 MATH test
problems x 8 Qwen2.5-Math samples) against the raw MATH gold answers:

* plain: math-verify called in this process, ``verify(parse("$gold$"), parse(completion))``, with
  its own (signal-based) timeouts: no isolation, one core.
* isolated: ``rlvr.rewards.math.grade_completions``: answer extraction and the exact fast path in
  this process, everything else in a pool of worker processes (one per available core) with a hard
  wall-clock limit per item.
* pool only: every extracted answer sent to the worker pool (no fast path in this process; the
  workers apply the same exact number rules before math-verify, so both stages give one verdict),
  to show what isolation and the round trip to a worker cost and gain.

The pool is started once and reused, as in training (its start-up is reported, not timed). Both
graders are first warmed up on other data (100 MATH-500 reference solutions); then each
repetition times plain, isolated and pool-only on the 800 completions. The first repetition
sees these golds for the first time; the median over repetitions is reported, with every run.

    python benchmarks/grading_throughput.py [--repeats 3] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import rlvr
from rlvr.rewards.extraction import extract_answer
from rlvr.rewards.grading_pool import available_cores
from rlvr.rewards.math import gold_text, grade_completions, new_math_pool

ROOT = Path(__file__).resolve().parents[1]
COMPLETIONS = ROOT / "tests" / "data" / "qwen25_math_cot_100.jsonl"
WARM_UP = Path(rlvr.__file__).parent / "data" / "benchmarks" / "math500.jsonl"


def load() -> tuple[list[str], list[str], list[str], list[str]]:
    completions, golds = [], []
    for line in COMPLETIONS.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        completions += row["response"]
        golds += [row["answer"]] * len(row["response"])
    warm = [json.loads(line) for line in WARM_UP.read_text(encoding="utf-8").splitlines()[:100]]
    return completions, golds, [r["solution"] for r in warm], [r["answer"] for r in warm]


def plain_math_verify(completions: list[str], golds: list[str]) -> list[bool]:
    from math_verify import parse, verify

    return [verify(parse(f"${g}$"), parse(c)) for c, g in zip(completions, golds, strict=True)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="pool size (default: available cores)")
    parser.add_argument("--timeout-s", type=float, default=5.0)
    args = parser.parse_args()
    logging.getLogger("math_verify").setLevel(logging.ERROR)

    completions, golds, warm_completions, warm_golds = load()
    n = len(completions)
    workers = args.workers or available_cores()
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores ({available_cores()} available), no GPU used")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{n} completions, {workers} grading workers, limit {args.timeout_s:g} s per item\n")

    start = time.perf_counter()
    pool = new_math_pool(workers)  # started once and reused, as in training
    grade_completions(warm_completions, warm_golds, pool=pool, timeout_s=args.timeout_s)
    startup = time.perf_counter() - start
    plain_math_verify(warm_completions, warm_golds)

    plain_rates, isolated_rates, pool_only_rates = [], [], []
    plain_verdicts: list[bool] = []
    isolated_verdicts: list[bool] = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        plain_verdicts = plain_math_verify(completions, golds)
        plain_rates.append(n / (time.perf_counter() - start))

        start = time.perf_counter()
        grades = grade_completions(completions, golds, pool=pool, timeout_s=args.timeout_s)
        isolated_rates.append(n / (time.perf_counter() - start))
        isolated_verdicts = [o == "correct" for o in grades.outcomes]

        start = time.perf_counter()
        found = [(extract_answer(c), gold_text(g)) for c, g in zip(completions, golds, strict=True)]
        pool.map([(e.text, g) for e, g in found if e is not None], timeout_s=args.timeout_s)
        pool_only_rates.append(n / (time.perf_counter() - start))
    pool.close()

    plain, isolated, pool_only = (
        statistics.median(r) for r in (plain_rates, isolated_rates, pool_only_rates)
    )
    agree = sum(a == b for a, b in zip(plain_verdicts, isolated_verdicts, strict=True))
    print(f"{'grader':<44}{'completions/s':>14}")
    print(f"{'plain math-verify, one process':<44}{plain:>14.0f}")
    print(f"{'isolated + time-limited (rlvr)':<44}{isolated:>14.0f}")
    print(f"{'  pool only (no fast path in this process)':<44}{pool_only:>14.0f}")
    print(
        f"\nratio isolated / plain: {isolated / plain:.2f}x   (pool only / plain: {pool_only / plain:.2f}x)"
    )
    runs = lambda rates: ", ".join(f"{r:.0f}" for r in rates)  # noqa: E731
    print(
        f"runs (completions/s): plain {runs(plain_rates)}; isolated {runs(isolated_rates)}; pool only {runs(pool_only_rates)}"
    )
    print(
        f"fast path decided {grades.fast_path} of {n}; pool start-up and warm-up {startup:.2f} s (not timed)"
    )
    print(f"verdicts agree on {agree} / {n}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
