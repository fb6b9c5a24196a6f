"""Where training metrics go: a JSONL file, TensorBoard, W&B when asked, and one console line per step.

Only rank 0 writes or prints (:func:`rlvr.distributed.rank`); on other ranks every method returns at
once. Metrics arrive already reduced over ranks.

``metrics.jsonl`` holds one JSON object per line, ``{"step": 12, "time": 1718000000.123, **metrics}``,
where ``time`` is the Unix time of the call in seconds. JSON has no NaN or infinity, so a non-finite
value is written as one of the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (the spellings that
``float()`` reads back); every line stays valid JSON and :func:`read_metrics` turns them back into floats.

On a resumed run, lines with ``step`` greater than the resumed step are dropped first
(:meth:`MetricsLogger.truncate_after`, or ``resume_step=`` at construction), and TensorBoard is told to
discard its later events (``purge_step``), so no step is ever recorded twice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from rlvr.distributed import rank
from rlvr.errors import ConfigError, DataError, ShapeError

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
TENSORBOARD_DIR = "tensorboard"
WANDB_ID_FILE = "wandb_run_id.txt"

_NONFINITE_TO_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}
_TEXT_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


# ---------------------------------------------------------------------------------------------------
# JSON encoding


def _encode_float(value: float) -> float | str:
    if math.isnan(value):
        return "NaN"
    return _NONFINITE_TO_TEXT.get(value, value)


def metric_value(key: str, value: Any) -> float:
    """``value`` as a Python float: numbers, bools, numpy scalars and one-element tensors are accepted."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ShapeError(f"metric {key!r}: expected a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    if isinstance(value, (str, bytes)) or value is None:
        raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {key!r}: expected a number, got {type(value).__name__}") from None


def jsonable(value: Any) -> Any:
    """``value`` made JSON-safe: tensors and numpy values to lists/numbers, non-finite floats to strings.

    Unknown objects become their ``str``. Dict keys become strings.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return _encode_float(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return jsonable(value.tolist())
    return str(value)


def _dump_line(record: Mapping[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All JSON objects of a JSONL file, in order.

    A last line that does not parse (a write cut short by a crash) is skipped; a bad line anywhere
    else raises :class:`DataError` naming the file and line.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, with ``"NaN"``/``"Infinity"``/``"-Infinity"`` as floats."""
    records = read_jsonl(path)
    for record in records:
        for key, value in record.items():
            if isinstance(value, str) and value in _TEXT_TO_NONFINITE:
                record[key] = _TEXT_TO_NONFINITE[value]
    return records


def truncate_jsonl_after(path: str | Path, step: int) -> int:
    """Drop the lines of a JSONL file whose ``step`` is greater than ``step``; returns how many.

    Lines that do not parse or have no integer ``step`` are dropped too. The file is rewritten
    atomically (temporary file, then ``os.replace``), so a crash leaves the old or the new file.
    """
    path = Path(path)
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record_step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            record_step = None
        if isinstance(record_step, int) and record_step <= step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return dropped


def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ConfigError(f"step must be a non-negative int, got {step!r}")
    return step


# ---------------------------------------------------------------------------------------------------
# Metrics logger


class MetricsLogger:
    """Writes per-step metrics to ``metrics.jsonl``, TensorBoard and (optionally) W&B; samples to JSONL.

    Args:
        output_dir: the run directory; ``metrics.jsonl``, ``samples.jsonl`` and ``tensorboard/`` go there.
        tensorboard: write TensorBoard event files with ``torch.utils.tensorboard.SummaryWriter``.
        wandb_project: a W&B project name to log to as well (needs ``pip install wandb``); the run id is
            kept in ``output_dir/wandb_run_id.txt`` so that a resumed run continues the same W&B run.
        wandb_run_name: the W&B display name of a new run.
        config: the resolved run configuration, sent to W&B and shown once as TensorBoard text.
        resume_step: on a resumed run, the step of the checkpoint resumed from; records after it are
            dropped before anything is written (see :meth:`truncate_after`).

    Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        output_dir: str | Path,
        *,
        tensorboard: bool = True,
        wandb_project: str | None = None,
        wandb_run_name: str | None = None,
        config: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.enabled = rank() == 0
        self._use_tensorboard = tensorboard
        self._metrics_file: TextIO | None = None
        self._samples_file: TextIO | None = None
        self._tensorboard: Any = None
        self._wandb_run: Any = None
        if not self.enabled:
            return
        wandb = _import_wandb() if wandb_project else None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_files(_check_step(resume_step))
        self._open_files()
        if tensorboard:
            self._open_tensorboard(purge_step=None if resume_step is None else resume_step + 1)
            if config:
                text = json.dumps(jsonable(config), indent=2, sort_keys=True)
                self._tensorboard.add_text("config", f"```\n{text}\n```", 0)
        if wandb is not None:
            self._wandb_run = _start_wandb(
                wandb, self.output_dir, wandb_project, wandb_run_name, config, resume=resume_step is not None
            )

    # -- files -------------------------------------------------------------------------------------

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / METRICS_FILE

    @property
    def samples_path(self) -> Path:
        return self.output_dir / SAMPLES_FILE

    def _open_files(self) -> None:
        self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")
        self._samples_file = open(self.samples_path, "a", encoding="utf-8")

    def _close_files(self) -> None:
        for f in (self._metrics_file, self._samples_file):
            if f is not None:
                f.close()
        self._metrics_file = self._samples_file = None

    def _open_tensorboard(self, purge_step: int | None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "TensorBoard logging needs the tensorboard package: pip install tensorboard, "
                "or pass tensorboard=False"
            ) from None

        self._tensorboard = SummaryWriter(
            log_dir=str(self.output_dir / TENSORBOARD_DIR), purge_step=purge_step, flush_secs=30
        )

    def _truncate_files(self, step: int) -> int:
        dropped = truncate_jsonl_after(self.metrics_path, step)
        truncate_jsonl_after(self.samples_path, step)
        return dropped

    def truncate_after(self, step: int) -> int:
        """Forget everything logged after ``step`` (call on resume); returns the metric lines dropped.

        Rewrites ``metrics.jsonl`` and ``samples.jsonl`` without records of later steps, and reopens
        TensorBoard with ``purge_step=step + 1`` so that TensorBoard hides its later events.
        """
        if not self.enabled:
            return 0
        _check_step(step)
        self._close_files()
        dropped = self._truncate_files(step)
        self._open_files()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._open_tensorboard(purge_step=step + 1)
        return dropped

    # -- logging -----------------------------------------------------------------------------------

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record the (already reduced) ``metrics`` of ``step``: one JSONL line, TensorBoard scalars, W&B."""
        if not self.enabled:
            return
        _check_step(step)
        values: dict[str, float] = {}
        for key, value in metrics.items():
            if not isinstance(key, str):
                raise TypeError(f"metric names must be strings, got {key!r}")
            if key in ("step", "time"):
                raise ConfigError(f"metric name {key!r} is reserved in {METRICS_FILE}; rename the metric")
            values[key] = metric_value(key, value)
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({key: _encode_float(value) for key, value in values.items()})
        if self._metrics_file is None:
            raise ValueError("MetricsLogger.log called after close()")
        self._metrics_file.write(_dump_line(record))
        self._metrics_file.flush()
        if self._tensorboard is not None:
            for key, value in values.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb_run is not None:
            self._wandb_run.log(values, step=step)

    def log_samples(self, step: int, samples: Sequence[Mapping[str, Any]], *, show: int = 4) -> None:
        """Append ``samples`` (dicts with prompt, completion, reward, correct, ...) to ``samples.jsonl``.

        The first ``show`` samples also go to TensorBoard as text (and to W&B as a table).
        """
        if not self.enabled or not samples:
            return
        _check_step(step)
        if self._samples_file is None:
            raise ValueError("MetricsLogger.log_samples called after close()")
        for index, sample in enumerate(samples):
            if not isinstance(sample, Mapping):
                raise TypeError(f"samples[{index}]: expected a dict, got {type(sample).__name__}")
            self._samples_file.write(_dump_line({"step": step, **jsonable(sample)}))
        self._samples_file.flush()
        if self._tensorboard is not None:
            self._tensorboard.add_text("samples", samples_markdown(samples[:show]), step)
        if self._wandb_run is not None:
            self._wandb_run.log({"samples": _wandb_table(samples[:show])}, step=step)

    def close(self) -> None:
        """Flush and close every sink; safe to call twice."""
        self._close_files()
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… [{len(text) - limit} more characters]"


def samples_markdown(samples: Iterable[Mapping[str, Any]], *, max_chars: int = 1500) -> str:
    """A short Markdown rendering of samples: the scalar fields on one line, then prompt and completion."""
    parts = []
    for index, sample in enumerate(samples):
        fields = [
            f"**{key}** {value:.4g}" if isinstance(value, float) else f"**{key}** {value}"
            for key, value in sample.items()
            if key not in ("prompt", "completion") and isinstance(value, (bool, int, float, str))
        ]
        parts.append(f"#### sample {index}\n\n" + " · ".join(fields))
        for key in ("prompt", "completion"):
            if key in sample:
                parts.append(f"{key}:\n\n```\n{_shorten(str(sample[key]), max_chars)}\n```")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------
# W&B (optional)


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "logging to W&B was requested (wandb_project is set) but wandb is not installed: "
            "pip install wandb, or leave wandb_project unset"
        ) from None
    return wandb


def _start_wandb(
    wandb: Any,
    output_dir: Path,
    project: str,
    name: str | None,
    config: Mapping[str, Any] | None,
    *,
    resume: bool,
) -> Any:
    id_file = output_dir / WANDB_ID_FILE
    if resume and id_file.exists():
        run_id = id_file.read_text(encoding="utf-8").strip()
    else:
        run_id = wandb.util.generate_id()
        id_file.write_text(run_id + "\n", encoding="utf-8")
    return wandb.init(
        project=project,
        name=name,
        id=run_id,
        resume="allow",
        dir=str(output_dir),
        config=jsonable(dict(config)) if config else None,
    )


def _wandb_table(samples: Sequence[Mapping[str, Any]]) -> Any:
    import wandb

    columns = list(dict.fromkeys(key for sample in samples for key in sample))
    rows = [[jsonable(sample.get(key)) for key in columns] for sample in samples]
    rows = [[v if isinstance(v, (bool, int, float, str)) or v is None else str(v) for v in r] for r in rows]
    return wandb.Table(columns=columns, data=rows)


# ---------------------------------------------------------------------------------------------------
# Console


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (hours may exceed 24); ``-:--:--`` for an unknown or non-finite duration."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-:--:--"
    total = int(round(seconds))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


#: (label, metric keys tried in order, format) of the console line's metrics section.
PROGRESS_FIELDS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("reward", ("reward/mean", "reward/total", "reward"), "{:.2f}"),
    ("acc", ("reward/accuracy", "accuracy"), "{:.2f}"),
    ("len", ("response/length_mean", "response/length"), "{:.1f}"),
)
#: (label, timing key) of the console line's time split.
PROGRESS_TIMINGS: tuple[tuple[str, str], ...] = (
    ("gen", "time/generate"),
    ("rew", "time/reward"),
    ("upd", "time/update"),
)


class ConsoleProgress:
    """One compact console line per step (rank 0 only), for example::

        step  12/100 | 0:00:41 < 0:04:58 | reward 0.42 acc 0.40 len 23.1 | gen 1.2s rew 0.1s upd 0.9s

    ``step`` counts completed steps; elapsed time runs from construction, and the ETA extrapolates the
    mean time of the steps done since ``start_step`` (the resumed step, so a resume does not distort it).
    A missing metric or timing is left out of the line. ``fields`` and ``timings`` change what is shown
    (see :data:`PROGRESS_FIELDS`, :data:`PROGRESS_TIMINGS`).
    """

    def __init__(
        self,
        total_steps: int,
        *,
        start_step: int = 0,
        every: int = 1,
        stream: TextIO | None = None,
        fields: Sequence[tuple[str, Sequence[str], str]] = PROGRESS_FIELDS,
        timings: Sequence[tuple[str, str]] = PROGRESS_TIMINGS,
    ) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ConfigError(f"total_steps must be a positive int, got {total_steps!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be a positive int, got {every!r}")
        if not 0 <= start_step <= total_steps:
            raise ConfigError(f"start_step must be in [0, total_steps={total_steps}], got {start_step!r}")
        self.total_steps = total_steps
        self.start_step = start_step
        self.every = every
        self.stream = stream
        self.fields = fields
        self.timings = timings
        self.enabled = rank() == 0
        self._start = time.monotonic()

    def format_line(
        self, step: int, metrics: Mapping[str, Any], timings: Mapping[str, float] | None = None
    ) -> str:
        """The line :meth:`update` prints, without printing it."""
        elapsed = time.monotonic() - self._start
        done = step - self.start_step
        eta = elapsed / done * (self.total_steps - step) if done > 0 else math.nan
        width = len(str(self.total_steps))
        sections = [
            f"step {step:>{width}}/{self.total_steps}",
            f"{format_duration(elapsed)} < {format_duration(eta)}",
        ]
        shown = []
        for label, keys, fmt in self.fields:
            key = next((k for k in keys if k in metrics), None)
            if key is not None:
                shown.append(f"{label} {fmt.format(metric_value(key, metrics[key]))}")
        if shown:
            sections.append(" ".join(shown))
        timings = timings or {}
        split = []
        for label, key in self.timings:
            value = timings[key] if key in timings else metrics.get(key)
            if value is not None:
                split.append(f"{label} {metric_value(key, value):.1f}s")
        if split:
            sections.append(" ".join(split))
        return " | ".join(sections)

    def update(
        self, step: int, metrics: Mapping[str, Any], timings: Mapping[str, float] | None = None
    ) -> None:
        """Print the line of ``step`` when it is a multiple of ``every`` or the last step.

        Timings (seconds, keys ``time/generate``, ``time/reward``, ``time/update``) are read from
        ``timings`` first, then from ``metrics``.
        """
        if not self.enabled or (step % self.every != 0 and step != self.total_steps):
            return
        self.write(self.format_line(step, metrics, timings))

    def write(self, text: str) -> None:
        """Print ``text`` on rank 0 (other ranks stay silent)."""
        if self.enabled:
            stream = self.stream if self.stream is not None else sys.stderr
            print(text, file=stream, flush=True)


def format_metrics_table(metrics: Mapping[str, Any], *, title: str | None = None) -> str:
    """An aligned two-column table of ``metrics`` sorted by name, for end-of-run summaries.

    Numbers print with 4 significant digits; other values as they are.
    """
    rows = []
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, (int, float, torch.Tensor)) and not isinstance(value, bool):
            text = f"{metric_value(key, value):.4g}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max((len(key) for key, _ in rows), default=0)
    lines = [title] if title else []
    lines += [f"{key:<{width}}  {text}" for key, text in rows]
    return "\n".join(lines)
