"""PNG curves of a run's metrics, read from its ``metrics.jsonl``.

One image per panel (reward and accuracy, held-out evaluation, response length, KL, entropy, clip
fractions, gradient norm, learning rate, time per step) plus ``overview.png`` with every panel; a panel
whose metrics the run did not log is skipped. Drawn with matplotlib's Agg canvas directly, so no
pyplot state or display is involved.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlvr.distributed import rank
from rlvr.errors import DataError
from rlvr.logging import METRICS_FILE, read_metrics

#: (file name, title, pattern of the metric names drawn in it). A metric may appear in several panels.
PANELS: tuple[tuple[str, str, str], ...] = (
    ("reward", "Reward and accuracy", r"^(reward/(mean|total|accuracy|correct)|reward|accuracy)$"),
    ("eval", "Held-out evaluation", r"^eval/(accuracy$|.*/(avg|pass|maj)@\d+$)"),
    ("response_length", "Response length (tokens)", r"^response/length|^eval/(.*/)?length_mean$"),
    ("kl", "KL divergence", r"^kl/|(^|/)approx_kl$"),
    ("entropy", "Entropy", r"^entropy/"),
    ("clip_fraction", "Clip fractions", r"clipfrac|clip_cov_frac|kl_cov_frac"),
    ("grad_norm", "Gradient norm", r"grad_norm"),
    ("learning_rate", "Learning rate", r"(^|/)(lr|learning_rate)$"),
    ("time", "Time per step (s)", r"^time/"),
)

_SMOOTH_ABOVE = 50  # points; longer series are drawn faint with a trailing moving average on top
_NOT_SMOOTHED = {"learning_rate"}  # schedules are smooth already


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    steps, values = [], []
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(record["step"]))
            values.append(float(value))
    return steps, values


def _wall_time_per_step(records: Sequence[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Seconds per step from the ``time`` stamps of consecutive records (when no ``time/*`` is logged)."""
    steps, seconds = [], []
    for previous, record in zip(records[:-1], records[1:], strict=True):
        dt, ds = record.get("time"), record["step"] - previous["step"]
        if isinstance(dt, (int, float)) and isinstance(previous.get("time"), (int, float)) and ds > 0:
            steps.append(float(record["step"]))
            seconds.append((dt - previous["time"]) / ds)
    return steps, seconds


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _collect(records: Sequence[dict[str, Any]]) -> list[tuple[str, str, dict[str, tuple[list, list]]]]:
    """The panels that have data: (file name, title, {metric: (steps, values)})."""
    keys = list(dict.fromkeys(k for record in records for k in record if k not in ("step", "time")))
    panels = []
    for name, title, pattern in PANELS:
        lines = {}
        for key in keys:
            if re.search(pattern, key):
                steps, values = _series(records, key)
                if steps:
                    lines[key] = (steps, values)
        if name == "time" and not lines:
            steps, values = _wall_time_per_step(records)
            if steps:
                lines["wall clock per step"] = (steps, values)
        if lines:
            panels.append((name, title, lines))
    return panels


def _draw(ax: Any, title: str, lines: dict[str, tuple[list, list]], *, smooth: bool = True) -> None:
    for key, (steps, values) in lines.items():
        if smooth and len(steps) > _SMOOTH_ABOVE:
            (raw,) = ax.plot(steps, values, alpha=0.25, linewidth=0.8)
            averaged = _moving_average(values, max(len(values) // 25, 2))
            ax.plot(steps, averaged, color=raw.get_color(), linewidth=1.6, label=key)
        else:
            marker = "o" if len(steps) <= _SMOOTH_ABOVE else None
            ax.plot(steps, values, marker=marker, markersize=3, linewidth=1.2, label=key)
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")


def _save(figure: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=100)
    return path


def plot_run(run_dir: str | Path, *, output: str | Path | None = None) -> list[Path]:
    """Write PNG curves of ``run_dir/metrics.jsonl`` into ``output`` (default ``run_dir/plots``).

    Returns the paths written: one ``<panel>.png`` per panel with data, then ``overview.png``.
    Raises :class:`DataError` when the metrics file is missing, empty, or has nothing to draw.
    Only rank 0 draws; other ranks return an empty list.
    """
    from matplotlib.figure import Figure

    run_dir = Path(run_dir)
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{path}: no metrics file (is {run_dir} a run directory?)")
    records = [r for r in read_metrics(path) if isinstance(r.get("step"), int)]
    if not records:
        raise DataError(f"{path}: no metrics recorded yet")
    panels = _collect(records)
    if not panels:
        found = sorted({k for r in records for k in r} - {"step", "time"})
        raise DataError(f"{path}: none of the plotted metrics is present; found {found[:20]}")
    if rank() != 0:
        return []
    out_dir = Path(output) if output is not None else run_dir / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)

    written = []
    for name, title, lines in panels:
        figure = Figure(figsize=(7, 4))
        figure.subplots_adjust(left=0.11, right=0.97, bottom=0.12, top=0.92)  # cheaper than a layout engine
        _draw(figure.add_subplot(), title, lines, smooth=name not in _NOT_SMOOTHED)
        written.append(_save(figure, out_dir / f"{name}.png"))

    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3.4 * rows), layout="constrained")
    figure.suptitle(str(run_dir.name))
    for index, (name, title, lines) in enumerate(panels, start=1):
        _draw(figure.add_subplot(rows, columns, index), title, lines, smooth=name not in _NOT_SMOOTHED)
    written.append(_save(figure, out_dir / "overview.png"))
    return written
