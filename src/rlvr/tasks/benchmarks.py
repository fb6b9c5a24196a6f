"""The evaluation benchmarks shipped with rlvr and how each file's fields map to a Problem.

The files live in ``rlvr/data/benchmarks`` (provenance and licenses in its README). Each layout
differs, and :data:`BENCHMARKS` records, per benchmark, where the question and the gold answer
are: MATH keeps the answer only inside ``solution`` (last ``\\boxed{}``), AMC23 stores it as a
float, OlympiadBench as a one-element list, GSM8K after ``####``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlvr.registry import Registry
from rlvr.tasks.loading import FieldMap, LoadResult, load_problems

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    file: str
    fields: FieldMap
    description: str


BENCHMARKS: Registry[BenchmarkSpec] = Registry("benchmark")
for _spec in (
    BenchmarkSpec(
        "math500",
        "math500.jsonl",
        FieldMap("problem", "answer", "plain", id="unique_id", meta=("level", "subject")),
        "MATH-500 (Lightman et al. 2023), 500 problems of the MATH test set",
    ),
    BenchmarkSpec(
        "math",
        "math.jsonl",
        FieldMap("problem", "solution", "boxed", id="idx", meta=("level", "type")),
        "the full MATH test set (Hendrycks et al. 2021), 5000 problems",
    ),
    BenchmarkSpec(
        "gsm8k",
        "gsm8k.jsonl",
        FieldMap("question", "answer", "gsm8k", id="idx"),
        "GSM8K test (Cobbe et al. 2021), 1319 problems",
    ),
    BenchmarkSpec(
        "aime24",
        "aime24.jsonl",
        FieldMap("problem", "answer", "plain", id="id"),
        "AIME 2024 I and II, 30 problems",
    ),
    BenchmarkSpec(
        "amc23", "amc23.jsonl", FieldMap("problem", "answer", "plain", id="id"), "AMC 2023, 40 problems"
    ),
    BenchmarkSpec(
        "minerva_math",
        "minerva_math.jsonl",
        FieldMap("problem", "solution", "boxed", id="idx", meta=("type",)),
        "Minerva's OCW courses set (Lewkowycz et al. 2022), 272 problems",
    ),
    BenchmarkSpec(
        "olympiadbench",
        "olympiadbench.jsonl",
        FieldMap("question", "final_answer", "first", id="id", meta=("subfield", "answer_type")),
        "OlympiadBench (He et al. 2024), English text-only open-ended math, 675 problems",
    ),
):
    BENCHMARKS.register(_spec.name)(_spec)


def benchmark_path(name: str) -> Path:
    return DATA_DIR / "benchmarks" / BENCHMARKS.get(name).file


def load_benchmark(name: str, *, check_gold=None, skip_bad_rows: bool = False) -> LoadResult:
    """The problems of a shipped benchmark, ids prefixed with the benchmark name."""
    spec = BENCHMARKS.get(name)
    return load_problems(
        benchmark_path(name),
        spec.fields,
        check_gold=check_gold,
        skip_bad_rows=skip_bad_rows,
        id_prefix=f"{name}-",
    )
