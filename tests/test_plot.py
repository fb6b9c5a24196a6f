"""plot_run: PNG curves from a run's metrics.jsonl; absent metrics skipped; clear errors."""

from __future__ import annotations

import json
import math

import pytest

from rlvr.errors import DataError
from rlvr.logging import MetricsLogger
from rlvr.plot import plot_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _write_run(run_dir, steps: int = 60) -> None:
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step in range(1, steps + 1):
            metrics = {
                "reward/total": 1 - math.exp(-step / 20),
                "reward/accuracy": 0.9 * (1 - math.exp(-step / 25)),
                "response/length_mean": 40 + step / 2,
                "kl/mean": 1e-3 * step,
                "entropy/mean": 1.5 * math.exp(-step / 40),
                "policy/clipfrac_low": 0.01,
                "policy/clipfrac_high": 0.02 + 0.001 * step,
                "optim/grad_norm": float("nan") if step == 7 else 1.0 / step,
                "optim/lr": 1e-6 * min(step / 10, 1.0),
                "time/generate": 1.2,
                "time/reward": 0.1,
                "time/update": 0.9,
            }
            if step % 20 == 0:
                metrics["eval/accuracy"] = step / 100
            logger.log(step, metrics)


def test_plot_run_writes_valid_pngs_and_skips_absent_metrics(tmp_path):
    _write_run(tmp_path)
    paths = plot_run(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "reward.png",
            "eval.png",
            "response_length.png",
            "kl.png",
            "entropy.png",
            "clip_fraction.png",
            "grad_norm.png",
            "learning_rate.png",
            "time.png",
            "overview.png",
        ]
    )
    for path in paths:
        assert path.parent == tmp_path / "plots"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, path
        assert len(data) > 5_000, path  # a drawn figure, not an empty canvas


def test_plot_run_only_present_panels_and_wall_time_fallback(tmp_path):
    # Only reward and wall-clock stamps: the reward panel plus a time panel derived from "time".
    lines = [{"step": s, "time": 1000.0 + 3.0 * s, "reward/total": s / 10} for s in range(1, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "figures"
    paths = plot_run(tmp_path, output=out)
    assert [p.name for p in paths] == ["reward.png", "time.png", "overview.png"]
    assert all(p.parent == out and p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def test_plot_run_missing_or_empty_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no metrics file"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(DataError, match="no metrics recorded"):
        plot_run(tmp_path)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "custom/thing": 2.0}) + "\n")
    with pytest.raises(DataError, match="custom/thing"):
        plot_run(tmp_path)
