"""End to end on the shipped toy model: a short run writes its artifacts, and a run killed with
SIGKILL and resumed ends with the same metrics, step for step, as an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlvr.config import load_config
from rlvr.logging import read_metrics
from rlvr.training.trainer import train

TINY = [
    "task.params.num_train=64",
    "task.params.num_test=8",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=24",
    "eval.num_problems=8",
    "logging.sample_every=2",
    "logging.tensorboard=true",
]


def _metrics(run: Path) -> dict[int, dict]:
    """Step -> metrics, read back by the logger's own reader (non-finite values are written as strings)."""
    out: dict[int, dict] = {}
    for row in read_metrics(run / "metrics.jsonl"):
        out.setdefault(row["step"], {}).update(row)
    return out


def test_short_run_writes_metrics_tensorboard_samples_checkpoints_and_final_model(tmp_path):
    config = load_config(
        "recipes/quickstart.yaml",
        [*TINY, "training.steps=2", "checkpoint.every=1", f"logging.output_dir={tmp_path}"],
    )
    result = train(config, log=lambda *a: None)
    assert result.steps == 2 and not result.interrupted
    assert 0 <= result.eval_before["eval/accuracy"] <= 1 and "eval/accuracy" in result.eval_after
    metrics = _metrics(tmp_path)
    for key in (
        "reward/accuracy",
        "loss/policy",
        "entropy/mean",
        "optim/lr",
        "optim/grad_norm",
        "response/length_mean",
        "time/generate",
        "throughput/tokens_per_s",
        "policy/clipfrac_high",
    ):
        assert key in metrics[1], key
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "samples.jsonl").read_text().strip()
    assert (tmp_path / "final" / "model.safetensors").is_file()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path / "final")


@pytest.mark.slow
@pytest.mark.parametrize("generate_ahead", [False, True])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, generate_ahead):
    common = [
        *TINY,
        f"rollout.generate_ahead={str(generate_ahead).lower()}",
        "training.steps=4",
        "checkpoint.every=2",
        "logging.tensorboard=false",
        "logging.sample_every=0",
    ]
    # Every run is a subprocess with the same thread count, so float reductions agree bit for bit.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def command(run: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "rlvr",
            "train",
            "recipes/quickstart.yaml",
            *common,
            f"logging.output_dir={run}",
            "--no-plot",
        ]

    straight = tmp_path / "straight"
    done = subprocess.run(command(straight), capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000002").is_dir():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [*command(killed), "--resume"], capture_output=True, text=True, timeout=600, env=env
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a, b = _metrics(straight), _metrics(killed)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3, 4]
    for step in a:
        for key, value in a[step].items():
            if key.startswith(("time/", "throughput/", "memory/")) or key == "time":
                continue
            assert b[step][key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), (step, key)


def test_rollout_logprobs_match_the_trainer_so_the_first_ratio_is_one(tmp_path):
    """The engine's logprobs are those the update recomputes: before the first update the
    importance ratio is 1 on every token (float32), or the clipped loss would be off from step 0."""
    from rlvr.training.trainer import Trainer

    config = load_config(
        "recipes/quickstart.yaml", [*TINY, "training.steps=1", f"logging.output_dir={tmp_path}"]
    )
    metrics = Trainer(config, log=lambda *a: None).train_step(0)
    assert metrics["policy/ratio_max"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["policy/ratio_min"] == pytest.approx(1.0, abs=1e-4)
    assert metrics["policy/clipfrac_low"] == 0.0 and metrics["policy/clipfrac_high"] == 0.0
