"""Reading problems from local JSONL / JSON / Parquet files (and hub datasets where available).

A :class:`FieldMap` says which field holds the question, which the gold answer, and which fields
go into ``Problem.meta`` (level, subject, ...). Field names may be dotted to reach into nested
objects (``reward_model.ground_truth``). Every row is checked as it is read: a missing field, a
value of the wrong type or a gold answer that cannot be graded is a :class:`~rlvr.errors.DataError`
naming the file, the line (JSONL) or row (JSON array, Parquet) and the field, and so is a line
that is not UTF-8 or not JSON. With ``skip_bad_rows=True`` such rows are skipped instead, and
listed in ``LoadResult.skipped``. A UTF-8 byte order mark at the start of a file is allowed.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlvr.errors import DataError
from rlvr.registry import Registry
from rlvr.tasks.base import Problem

AnswerFormat = Literal["plain", "gsm8k", "boxed", "first"]


@dataclass(frozen=True)
class FieldMap:
    """Which fields of a row make a :class:`Problem`.

    ``question`` may name several fields joined with ``+`` (``"Body+Question"``), which are joined
    with a space (SVAMP, ASDiv). ``answer_format`` says how the gold is read from the answer field:

    * ``plain``: the value itself (numbers are written without a trailing ``.0``);
    * ``gsm8k``: the text after ``#### `` (thousands separators removed);
    * ``boxed``: the content of the last ``\\boxed{...}`` (MATH solutions);
    * ``first``: the first element of a list (OlympiadBench's ``final_answer``).
    """

    question: str = "question"
    answer: str = "answer"
    answer_format: AnswerFormat = "plain"
    id: str | None = None
    meta: tuple[str, ...] = ()


@dataclass
class LoadResult:
    problems: list[Problem]
    skipped: list[str] = field(default_factory=list)
    """One message per skipped row (file, line, field, reason)."""


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read at all (bytes that are not UTF-8, a line that is not JSON)."""

    message: str
    """'file:line: why', as an error or a skip report gives it."""


UTF8_BOM = b"\xef\xbb\xbf"
"""Some editors start a UTF-8 file with these bytes; they are not part of the first row."""


def _decode_utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
            "save the file as UTF-8"
        ) from None


# Readers yield (location, row) where location is "file:line" or "file:row N"; a row that cannot be
# decoded at all comes as a BadRow, so that skip_bad_rows can skip it like any other bad row.
_READERS: Registry[Callable[[Path], Iterator[tuple[str, Any]]]] = Registry("data file format")


@_READERS.register(".jsonl")
def _read_jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM) :]
            try:
                line = _decode_utf8(raw, where)
            except DataError as e:
                yield where, BadRow(str(e))
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                at = "the end of the line" if e.pos >= len(line.rstrip()) else f"column {e.colno}"
                yield where, BadRow(f"{where}: not valid JSON ({e.msg} at {at})")


@_READERS.register(".json")
def _read_json(path: Path) -> Iterator[tuple[str, Any]]:
    raw = path.read_bytes()
    if raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM) :]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); save the file as UTF-8"
        ) from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty (expected a JSON array of rows)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):  # {"data": [...]} or {"rows": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of rows (or an object holding one array)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    for i, row in enumerate(data):
        yield f"{path}:row {i}", row


@_READERS.register(".parquet")
def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: cannot read Parquet file ({e})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}:row {i}", row


def iter_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(location, row)`` for every row of a local .jsonl, .json or .parquet file; a row that cannot
    be decoded comes as a :class:`BadRow` (a file that cannot be read at all is a DataError)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in _READERS:
        raise DataError(
            f"{path}: unsupported file type '{suffix}' (supported: {', '.join(_READERS.names())})"
        )
    yield from _READERS.get(suffix)(path)


def read_rows(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Like :func:`iter_rows`, but a row that cannot be decoded is a DataError naming file and line."""
    for where, row in iter_rows(path):
        if isinstance(row, BadRow):
            raise DataError(row.message)
        yield where, row


def get_field(row: Any, name: str, where: str) -> Any:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with fields, got {type(row).__name__}")
    value: Any = row
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            keys = ", ".join(sorted(map(str, value))) if isinstance(value, dict) else type(value).__name__
            raise DataError(f"{where}: field '{name}' is missing (fields: {keys})")
        value = value[part]
    return value


def _format_number(value: float | int) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value}")
        if value.is_integer():
            return str(int(value))
    return str(value)


_GSM8K_ANSWER = re.compile(r"####\s*(.+?)\s*$", re.S)


def read_gold(value: Any, answer_format: AnswerFormat) -> str:
    """The gold answer string from a row's answer field; ValueError says why it cannot be read."""
    if answer_format == "first":
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty list, got {value!r:.80}")
        value = value[0]
    if isinstance(value, bool):
        raise ValueError(f"expected a string or number, got {value!r}")
    if isinstance(value, (int, float)):
        return _format_number(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a string or number, got {type(value).__name__}")
    if answer_format == "gsm8k":
        m = _GSM8K_ANSWER.search(value)
        if not m:
            raise ValueError("no '#### <answer>' line")
        value = m.group(1).replace(",", "")
    elif answer_format == "boxed":
        from rlvr.rewards.extraction import last_boxed

        boxed = last_boxed(value)
        if boxed is None:
            raise ValueError("no \\boxed{...} answer in the text")
        value = boxed
    value = value.strip()
    if not value or value == "None":
        raise ValueError("the answer is empty")
    return value


def _problem_from_row(
    row: Any,
    where: str,
    index: int,
    fields: FieldMap,
    check_gold: Callable[[str], None] | None,
    id_prefix: str,
) -> Problem:
    parts = [get_field(row, name, where) for name in fields.question.split("+")]
    for name, part in zip(fields.question.split("+"), parts, strict=True):
        if not isinstance(part, str) or not part.strip():
            raise DataError(f"{where}: field '{name}' must be a non-empty string, got {part!r:.80}")
    question = " ".join(p.strip() for p in parts)
    raw_answer = get_field(row, fields.answer, where)
    try:
        gold = read_gold(raw_answer, fields.answer_format)
        if check_gold is not None:
            check_gold(gold)
    except (ValueError, DataError) as e:
        raise DataError(f"{where}: field '{fields.answer}': {e}") from None
    pid = str(get_field(row, fields.id, where)) if fields.id else f"{id_prefix}{index}"
    meta = {name: get_field(row, name, where) for name in fields.meta}
    meta["source"] = where
    return Problem(id=pid, question=question, answer=gold, meta=meta)


def load_problems(
    path: str | Path,
    fields: FieldMap = FieldMap(),
    *,
    skip_bad_rows: bool = False,
    check_gold: Callable[[str], None] | None = None,
    keep: Callable[[Problem], bool] | None = None,
    id_prefix: str | None = None,
    skip_setting: str = "skip_bad_rows",
) -> LoadResult:
    """Read every row of ``path`` into a :class:`Problem`.

    ``check_gold`` is called on each gold answer (the math task passes the grader's gold check, so
    an answer the grader cannot parse is reported here, at load time, never scored as right).
    ``keep`` filters problems after they are read (for example by level). A bad row (bytes that are
    not UTF-8, a line that is not JSON, a missing or unusable field) is a DataError naming the file,
    line and field, whose hint names ``skip_setting``, the setting that skips such rows instead.
    A file with no rows, or with none left, is a DataError naming it.
    """
    path = Path(path)
    prefix = f"{path.stem}-" if id_prefix is None else id_prefix
    problems: list[Problem] = []
    skipped: list[str] = []
    rows = 0
    for index, (where, row) in enumerate(iter_rows(path)):
        rows += 1
        try:
            if isinstance(row, BadRow):
                raise DataError(row.message)
            problem = _problem_from_row(row, where, index, fields, check_gold, prefix)
        except DataError as e:
            if not skip_bad_rows:
                raise DataError(f"{e} (set {skip_setting}=true to skip such rows)") from None
            skipped.append(str(e))
            continue
        if keep is None or keep(problem):
            problems.append(problem)
    if rows == 0:
        raise DataError(f"{path}: the file holds no rows")
    if not problems:
        why = [f"{len(skipped)} skipped as bad"] if skipped else []
        if rows > len(skipped):
            why.append(f"{rows - len(skipped)} left out by the selection (levels or other filters)")
        first = f"; first skipped: {skipped[0]}" if skipped else ""
        raise DataError(f"{path}: no problems left of its {rows} rows ({', '.join(why)}){first}")
    return LoadResult(problems, skipped)


def load_hub_problems(name: str, split: str, fields: FieldMap = FieldMap(), **kwargs: Any) -> LoadResult:
    """Load a Hugging Face hub dataset by name (needs the ``datasets`` package and network access).

    Rows are written to a local JSONL cache first so that every row is checked exactly as a local
    file would be, with locations that name the cached file and line.
    """
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"dataset '{name}' is not a local file, and loading hub datasets needs the 'datasets' "
            "package: pip install datasets (or pass a local .jsonl/.json/.parquet path)"
        ) from None
    import tempfile

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # network errors, unknown names, missing splits
        raise DataError(f"cannot load hub dataset '{name}' split '{split}': {e}") from None
    cache = Path(tempfile.mkdtemp(prefix="rlvr-hub-")) / f"{name.replace('/', '__')}-{split}.jsonl"
    with cache.open("w", encoding="utf-8") as f:
        for row in ds:
            f.write(json.dumps(row, default=str) + "\n")
    return load_problems(cache, fields, **kwargs)


def load_any(
    source: str | Path, fields: FieldMap = FieldMap(), *, split: str = "train", **kwargs: Any
) -> LoadResult:
    """A local file when ``source`` exists on disk, else a hub dataset name."""
    if Path(source).exists() or Path(source).suffix.lower() in (".jsonl", ".json", ".parquet"):
        return load_problems(source, fields, **kwargs)
    return load_hub_problems(str(source), split, fields, **kwargs)
