"""Generating and scoring an evaluation set's samples, and the file that makes it resumable.

:func:`generate_records` samples n completions for some of a set's problems with the rollout
engine and scores them (:mod:`rlvr.evaluation.scoring`). :class:`SampleStore` keeps the records of
one benchmark in ``samples/<benchmark>.jsonl``, appended one batch of problems at a time (each
batch written, flushed and fsync'd whole). An evaluation interrupted halfway reads the file back,
keeps every complete batch, drops a batch cut short by the interruption (and a half-written last
line), and generates only the rest. Each batch samples with its own seed (``seed`` + index of its
first problem), so a resumed evaluation writes exactly what an uninterrupted one would have.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlvr.errors import DataError
from rlvr.evaluation.scoring import Generated, score_records
from rlvr.evaluation.sets import EvalSet
from rlvr.rewards.composite import CompositeReward
from rlvr.rollout.types import SamplingParams


@dataclass(frozen=True)
class GenerationSettings:
    n: int = 1
    """Samples per problem (1 when temperature is 0)."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 1024
    max_prompt_tokens: int = 2048
    prompt_limit_setting: str = "rollout.max_prompt_tokens"
    """The setting a too-long prompt's error names (``max_prompt_tokens`` for ``rlvr eval``)."""

    def sampling(self, stop_strings: tuple[str, ...], seed: int) -> SamplingParams:
        greedy = self.temperature == 0
        return SamplingParams(
            n=1 if greedy else self.n,
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=0 if greedy else self.top_k,
            stop_strings=stop_strings,
            seed=seed,
        )


def generate_records(
    engine: Any,
    tokenizer: Any,
    eval_set: EvalSet,
    reward: CompositeReward,
    indices: Sequence[int],
    settings: GenerationSettings,
    seed: int,
) -> list[dict[str, Any]]:
    """Generate and score the samples of problems ``indices`` of ``eval_set``."""
    from rlvr.training.setup import tokenize_prompts

    problems = [eval_set.problems[i] for i in indices]
    prompt_ids = tokenize_prompts(
        problems, eval_set.template, tokenizer, settings.max_prompt_tokens, settings.prompt_limit_setting
    )
    sampling = settings.sampling(eval_set.stop_strings, seed)
    completions = engine.generate(prompt_ids, sampling) if problems else []
    generated = [Generated(c.text, len(c.token_ids), c.finish_reason == "length") for c in completions]
    prompts = [tokenizer.decode(ids, skip_special_tokens=False) for ids in prompt_ids]
    return score_records(
        eval_set,
        reward,
        list(indices),
        generated,
        sampling.n,
        prompts=prompts,
        max_response_length=settings.max_new_tokens,
    )


def batches(num_problems: int, size: int) -> list[range]:
    return [range(start, min(start + size, num_problems)) for start in range(0, num_problems, size)]


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    """Replace ``path`` with ``records``, one JSON object per line (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SampleStore:
    """The per-sample records of one benchmark, written batch by batch (module docstring)."""

    def __init__(self, path: str | Path, *, num_problems: int, n: int, batch_size: int) -> None:
        self.path = Path(path)
        self.n, self.batch_size = n, batch_size
        self.expected = {b.start // batch_size: len(b) * n for b in batches(num_problems, batch_size)}

    def load(self) -> dict[int, list[dict[str, Any]]]:
        """The records of every complete batch already written, by batch number; the file is
        rewritten without the incomplete ones."""
        if not self.path.is_file():
            return {}
        by_batch: dict[int, list[dict[str, Any]]] = {}
        raw = self.path.read_text(encoding="utf-8")
        lines = raw.split("\n")
        complete_lines = lines[:-1]  # the text after the last newline is a half-written line
        for number, line in enumerate(complete_lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                batch = int(record["index"]) // self.batch_size
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                raise DataError(
                    f"{self.path}:{number}: not a sample record; delete the file or evaluate into another "
                    "output directory"
                ) from None
            by_batch.setdefault(batch, []).append(record)
        kept = {b: rs for b, rs in by_batch.items() if len(rs) == self.expected.get(b, -1)}
        if len(kept) != len(by_batch) or lines[-1]:
            write_records(self.path, [r for b in sorted(kept) for r in kept[b]])
        return kept

    def append(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            f.flush()
            os.fsync(f.fileno())
