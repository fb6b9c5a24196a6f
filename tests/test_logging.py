"""MetricsLogger (JSONL + TensorBoard), resume truncation, ConsoleProgress and the summary table."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from rlvr.errors import ConfigError, DataError, ShapeError
from rlvr.logging import (
    ConsoleProgress,
    MetricsLogger,
    format_duration,
    format_metrics_table,
    read_jsonl,
    read_metrics,
    truncate_jsonl_after,
)


def _tensorboard_scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event TensorBoard itself would show, read back with its own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_log_writes_one_valid_json_line_per_step_and_tensorboard_scalars(tmp_path):
    with MetricsLogger(tmp_path, config={"lr": 1e-6}) as logger:
        logger.log(1, {"reward/total": 0.5, "kl/mean": torch.tensor(0.25), "count": 3})
        logger.log(2, {"reward/total": float("nan"), "kl/mean": float("inf"), "count": -math.inf})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    strict = [json.loads(line, parse_constant=pytest.fail) for line in lines]  # no bare NaN/Infinity
    assert strict[0]["step"] == 1 and strict[0]["reward/total"] == 0.5 and strict[0]["kl/mean"] == 0.25
    assert strict[0]["count"] == 3.0 and isinstance(strict[0]["time"], float)
    assert strict[1] == {**strict[1], "reward/total": "NaN", "kl/mean": "Infinity", "count": "-Infinity"}
    decoded = read_metrics(tmp_path / "metrics.jsonl")
    assert math.isnan(decoded[1]["reward/total"]) and decoded[1]["kl/mean"] == math.inf
    assert decoded[1]["count"] == -math.inf

    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    assert scalars["reward/total"][0] == (1, 0.5)
    assert scalars["kl/mean"] == [(1, 0.25), (2, math.inf)]


def test_log_rejects_bad_metrics(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(ShapeError, match="'v'"):
            logger.log(1, {"v": torch.ones(2)})
        with pytest.raises(TypeError, match="'name'"):
            logger.log(1, {"name": "abc"})
        with pytest.raises(ConfigError, match="reserved"):
            logger.log(1, {"step": 1.0})
        with pytest.raises(ConfigError, match="step"):
            logger.log(-1, {"v": 1.0})
    assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_log_samples_jsonl_and_tensorboard_text(tmp_path):
    samples = [
        {"prompt": "1+1=", "completion": "<answer>2</answer>", "reward": 1.0, "correct": True},
        {
            "prompt": "2+2=",
            "completion": "5",
            "reward": float("nan"),
            "correct": False,
            "ids": torch.tensor([1, 2]),
        },
    ]
    with MetricsLogger(tmp_path) as logger:
        logger.log_samples(3, samples)
    rows = read_jsonl(tmp_path / "samples.jsonl")
    assert rows[0] == {"step": 3, **samples[0]}
    assert rows[1]["reward"] == "NaN" and rows[1]["ids"] == [1, 2] and rows[1]["correct"] is False

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [e for tag in acc.Tags()["tensors"] if tag.startswith("samples") for e in acc.Tensors(tag)]
    assert [e.step for e in texts] == [3]
    text = texts[0].tensor_proto.string_val[0].decode()
    assert "<answer>2</answer>" in text and "**correct** True" in text


def test_truncate_after_drops_later_steps_and_purges_tensorboard(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 6):
            logger.log(step, {"loss": float(step)})
        logger.log_samples(4, [{"prompt": "p", "completion": "c"}])
    # A crash mid-write leaves a cut line at the end; resume from the checkpoint of step 3.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')
    with MetricsLogger(tmp_path, resume_step=3) as logger:
        logger.log(4, {"loss": 40.0})
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]
    assert [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")][-1] == 40.0
    assert read_jsonl(tmp_path / "samples.jsonl") == []
    # TensorBoard discards the events of steps >= 4 written before the resume.
    assert _tensorboard_scalars(tmp_path / "tensorboard")["loss"] == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]

    # The method form, on an open logger.
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        assert logger.truncate_after(2) == 2
        logger.log(3, {"loss": 30.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]


def test_truncate_jsonl_after_missing_file_and_bad_middle_line(tmp_path):
    assert truncate_jsonl_after(tmp_path / "absent.jsonl", 3) == 0
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"m.jsonl:2"):
        read_jsonl(path)
    assert truncate_jsonl_after(path, 5) == 1  # the bad line goes; steps 1 and 2 stay
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_wandb_requested_but_missing_is_a_clear_error(tmp_path):
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install wandb"):
            MetricsLogger(tmp_path, wandb_project="demo")
        assert not (tmp_path / "metrics.jsonl").exists()
    else:
        pytest.skip("wandb is installed")


def test_console_progress_line(monkeypatch):
    clock = iter([100.0, 141.0])  # constructed at t=100 s, step 12 printed at t=141 s
    monkeypatch.setattr("rlvr.logging.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = ConsoleProgress(100, stream=stream)
    metrics = {"reward/total": 0.4249, "reward/accuracy": 0.4, "response/length_mean": 23.14}
    progress.update(12, metrics, {"time/generate": 1.24, "time/reward": 0.1, "time/update": 0.9})
    # elapsed 41 s over 12 steps -> 41 / 12 * 88 = 300.67 s left -> 0:05:01
    assert stream.getvalue() == (
        "step  12/100 | 0:00:41 < 0:05:01 | reward 0.42 acc 0.40 len 23.1 | gen 1.2s rew 0.1s upd 0.9s\n"
    )


def test_console_progress_skips_missing_keys_every_and_resume(monkeypatch):
    clock = iter([0.0, 30.0, 60.0])
    monkeypatch.setattr("rlvr.logging.time.monotonic", lambda: next(clock))
    stream = io.StringIO()
    progress = ConsoleProgress(10, start_step=4, every=2, stream=stream)
    progress.update(5, {"reward/total": 1.0})  # not a multiple of every: silent, clock not read
    progress.update(6, {"time/update": 2.0, "other": 1.0})
    # resumed at 4: 30 s for 2 steps -> 15 s/step x 4 left = 60 s
    progress.update(10, {})  # the last step always prints
    lines = stream.getvalue().splitlines()
    assert lines == ["step  6/10 | 0:00:30 < 0:01:00 | upd 2.0s", "step 10/10 | 0:01:00 < 0:00:00"]


def test_console_progress_bad_arguments():
    with pytest.raises(ConfigError, match="total_steps"):
        ConsoleProgress(0)
    with pytest.raises(ConfigError, match="every"):
        ConsoleProgress(10, every=0)
    with pytest.raises(ConfigError, match="start_step"):
        ConsoleProgress(10, start_step=11)


def test_format_duration_and_metrics_table():
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(90_000) == "25:00:00"
    assert format_duration(float("nan")) == "-:--:--"
    table = format_metrics_table({"reward/total": 0.123456, "eval/accuracy": 0.5, "name": "x"}, title="final")
    assert table.splitlines() == ["final", "eval/accuracy  0.5", "name           x", "reward/total   0.1235"]


def test_non_zero_rank_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("rlvr.logging.rank", lambda: 1)
    stream = io.StringIO()
    with MetricsLogger(tmp_path / "run") as logger:
        logger.log(1, {"x": 1.0})
        logger.log_samples(1, [{"prompt": "p"}])
        logger.truncate_after(0)
    ConsoleProgress(5, stream=stream).update(5, {"reward/total": 1.0})
    assert not (tmp_path / "run").exists() and stream.getvalue() == ""
