"""Env mode end to end: a multi-turn run killed with SIGKILL after a checkpoint and resumed ends with
the same metrics, step for step, and the same weights as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlvr.logging import read_metrics

ROOT = Path(__file__).parent.parent.parent

SETTINGS = [
    "task.params.num_train=32",
    "task.params.num_test=8",
    "rollout.prompts_per_step=2",
    "rollout.samples_per_prompt=8",  # groups with a right and a wrong answer at steps 1 and 3
    "env.max_turn_tokens=12",
    "env.max_context_tokens=160",
    "eval.num_problems=4",
    "training.steps=4",
    "checkpoint.every=2",
    "logging.sample_every=0",
    "logging.tensorboard=false",
]


def _metrics(run: Path) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for row in read_metrics(run / "metrics.jsonl"):
        out.setdefault(row["step"], {}).update(row)
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [[], ["env.turn_rewards=true", "preset=ppo"]], ids=["grpo", "ppo_turn_rewards"]
)
def test_a_multi_turn_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path, extra):
    # Every run is a subprocess with the same thread count, so float reductions agree bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(run: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rlvr",
            "train",
            "recipes/agent_toy.yaml",
            *SETTINGS,
            *extra,
            f"logging.output_dir={run}",
            "--no-plot",
        ]

    straight = tmp_path / "straight"
    done = subprocess.run(command(straight), cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        command(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000002").is_dir():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()  # killed mid-run, not after it finished
    resumed = subprocess.run(
        [*command(killed), "--resume"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    a, b = _metrics(straight), _metrics(killed)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4]
    assert all("env/turns" in a[step] for step in (1, 2, 3, 4))  # the steps were multi-turn
    for step in a:
        assert sorted(a[step]) == sorted(b[step]), step
        for key, value in a[step].items():
            if key.startswith(("time/", "throughput/", "memory/")) or key == "time":
                continue
            assert b[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (step, key)
    w_a, w_b = _weights(straight / "final"), _weights(killed / "final")
    assert w_a.keys() == w_b.keys()
    assert max((w_a[k] - w_b[k]).abs().max().item() for k in w_a) <= 1e-6
    first = _weights(killed / "checkpoints" / "step-000002")
    assert max((w_a[k] - first[k]).abs().max().item() for k in w_a) > 0  # steps 3 and 4 trained
