"""The ``knights_knaves`` task: Knights-and-Knaves logic puzzles, as trained on in Logic-RL.

Data: the Logic-RL release (arXiv 2502.14768) of the K&K puzzles (Xie et al. 2024, arXiv 2410.23123),
shipped in ``rlvr/data/train/kk/``: for each level of 3 to 7 people, 900 train and 100 test puzzles
(``{N}ppl_{train,test}.parquet``). **The puzzles are licensed CC BY-NC-SA 4.0 (non-commercial)**; see
the README beside them.

Each puzzle becomes a :class:`Problem` with ``answer = {"names": [...], "roles": ["knight" | "knave",
...]}`` and ``meta`` holding ``level`` (= ``difficulty``, the number of people), ``source``
(``"kk/3ppl_train.parquet:row 17"``), the reference ``solution_text`` and the puzzle's logical
``statements``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq

from rlvr.errors import ConfigError, DataError
from rlvr.rewards.knights_knaves import knights_knaves_reward  # noqa: F401  (registers the reward)
from rlvr.tasks.base import TASKS, Problem, RewardSpec, Task
from rlvr.tasks.templates import TEMPLATES

KK_DIR = Path(__file__).resolve().parent.parent / "data" / "train" / "kk"
LEVELS = (3, 4, 5, 6, 7)
_COLUMNS = ("quiz", "names", "solution", "solution_text_format", "statements")

ANSWER_INSTRUCTION = (
    "Think it through inside <think> </think>, then state the identity of every inhabitant inside "
    "<answer> </answer>, one per line, for example <answer> (1) Zoey is a knight\n(2) Oliver is a "
    "knave </answer>."
)


def kk_file(level: int, split: Literal["train", "test"], data_dir: str | Path | None = None) -> Path:
    """The parquet file of one level and split."""
    if level not in LEVELS:
        raise ConfigError(f"knights_knaves level must be one of {LEVELS}, got {level!r}")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    return Path(data_dir or KK_DIR) / f"{level}ppl_{split}.parquet"


def _row_problem(row: dict, level: int, split: str, path: Path, index: int) -> Problem:
    where = f"{path.parent.name}/{path.name}:row {index}"
    names, solution = row["names"], row["solution"]
    if not isinstance(row["quiz"], str) or not row["quiz"].strip():
        raise DataError(f"{where}: field 'quiz' is empty")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise DataError(f"{where}: field 'names' must be a list of names, got {names!r}")
    if not isinstance(solution, list) or not all(isinstance(s, bool) for s in solution):
        raise DataError(f"{where}: field 'solution' must be a list of booleans, got {solution!r}")
    if len(names) != len(solution) or len(names) != level or len(set(names)) != level:
        raise DataError(
            f"{where}: expected {level} distinct names and {level} solution entries, "
            f"got names={names!r}, solution={solution!r}"
        )
    return Problem(
        id=f"kk-{level}ppl-{split}-{index}",
        question=f"{row['quiz']}\n{ANSWER_INSTRUCTION}",
        answer={"names": list(names), "roles": ["knight" if s else "knave" for s in solution]},
        meta={
            "level": level,
            "difficulty": level,
            "source": where,
            "solution_text": row["solution_text_format"],
            "statements": row["statements"],
        },
    )


def load_knights_knaves(
    levels: Sequence[int], split: Literal["train", "test"], *, data_dir: str | Path | None = None
) -> list[Problem]:
    """All puzzles of ``levels`` in ``split``, level by level in file order."""
    problems: list[Problem] = []
    for level in levels:
        path = kk_file(level, split, data_dir)
        if not path.is_file():
            raise DataError(f"knights_knaves data file not found: {path}")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: cannot read parquet file ({exc})") from exc
        missing = [c for c in _COLUMNS if c not in table.column_names]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; has {table.column_names}")
        for index, row in enumerate(table.select(list(_COLUMNS)).to_pylist()):
            problems.append(_row_problem(row, level, split, path, index))
    return problems


def _limit(problems: list[Problem], limit: int | None, seed: int) -> list[Problem]:
    if limit is None or limit >= len(problems):
        return problems
    if limit < 0:
        raise ConfigError(f"num_train / num_test must be >= 0 or None, got {limit}")
    return random.Random(seed).sample(problems, limit)


def _rewards(scoring: str, template: str) -> tuple[RewardSpec, ...]:
    if scoring == "binary":
        return (RewardSpec("knights_knaves"),)
    if scoring != "logic_rl":
        raise ConfigError(f"scoring must be 'logic_rl' or 'binary', got {scoring!r}")
    think_opened = TEMPLATES.get(template).think_opened
    # Logic-RL (arXiv 2502.14768, Sec. 3.2): S = S_format (+1 / -1) + S_answer (2 / -1.5 / -2).
    answer = {
        "correct_score": 2.0,
        "wrong_score": -1.5,
        "no_answer_score": -2.0,
        "require_format": True,
        "think_opened": think_opened,
    }
    return (
        RewardSpec("knights_knaves", 1.0, answer),  # the verifier first (see rlvr.rewards.composite)
        RewardSpec(
            "format_strict", 1.0, {"well_formed": 1.0, "malformed": -1.0, "think_opened": think_opened}
        ),
    )


@TASKS.register("knights_knaves")
def knights_knaves_task(
    *,
    levels: Sequence[int] = LEVELS,
    num_train: int | None = None,
    num_test: int | None = None,
    template: str = "r1_zero",
    scoring: Literal["logic_rl", "binary"] = "logic_rl",
    data_dir: str | None = None,
    seed: int = 0,
) -> Task:
    """K&K puzzles of ``levels`` (number of people, 3 to 7), Logic-RL's train and test files.

    ``scoring="logic_rl"`` reproduces Logic-RL's reward (format +1/-1 plus answer 2/-1.5/-2);
    ``"binary"`` scores 1 for a correct answer and 0 otherwise. ``num_train``/``num_test`` keep a
    seeded random subset.
    """
    levels = tuple(levels)
    if not levels:
        raise ConfigError(f"levels must name at least one of {LEVELS}")
    rewards = _rewards(scoring, template)
    train = load_knights_knaves(levels, "train", data_dir=data_dir)
    test = load_knights_knaves(levels, "test", data_dir=data_dir)
    return Task(
        name="knights_knaves",
        train=_limit(train, num_train, seed),
        test=_limit(test, num_test, seed),
        template=template,
        rewards=rewards,
        stop_strings=("</answer>",),
    )
