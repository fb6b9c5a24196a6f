"""End to end on the shipped toy model: a short run writes its artifacts, and a run killed with
SIGKILL and resumed ends with the same metrics, step for step, as an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.logging import read_metrics
from rlvr.training.checkpoint import list_checkpoints
from rlvr.training.run_dir import config_differences, format_difference, is_safe_to_change, prepare_run_dir
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


# --- the run directory: new runs, --overwrite, --resume ----------------------------------------------

QUICK = [
    *TINY,
    "logging.sample_every=0",
    "logging.tensorboard=false",
    "eval.num_problems=4",
]


def _config(run: Path, *overrides: str):
    return load_config("recipes/quickstart.yaml", [*QUICK, f"logging.output_dir={run}", *overrides])


def _steps_logged(run: Path) -> list[int]:
    return [row["step"] for row in read_metrics(run / "metrics.jsonl") if "optim/lr" in row]


def test_a_new_run_refuses_a_directory_that_holds_a_run_and_overwrite_replaces_it(tmp_path):
    run = tmp_path / "run"
    train(_config(run, "training.steps=2", "checkpoint.every=1", "checkpoint.keep_last=3"), log=_quiet)
    before = (run / "metrics.jsonl").read_text()

    with pytest.raises(ConfigError, match="already holds a run") as err:
        train(_config(run, "training.steps=1"), log=_quiet)
    assert "finished: checkpoint at step 2 of 2" in str(err.value)
    assert "--resume" in str(err.value) and "--overwrite" in str(err.value)
    assert (run / "metrics.jsonl").read_text() == before  # nothing touched

    log: list[str] = []
    train(_config(run, "training.steps=1"), overwrite=True, log=log.append)
    assert any(line.startswith(f"--overwrite: deleted the run that was in {run}") for line in log)
    assert [p.name for p in list_checkpoints(run)] == ["step-000001"]  # the old run's are gone
    assert _steps_logged(run) == [1]
    assert [row["step"] for row in read_metrics(run / "metrics.jsonl")].count(0) == 1


def test_a_directory_with_other_files_is_never_a_run_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for resume, overwrite in [(False, False), (False, True), (True, False)]:
        with pytest.raises(ConfigError, match="not empty and holds no rlvr run"):
            prepare_run_dir(tmp_path, {}, resume=resume, overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ConfigError, match="contradict"):
        prepare_run_dir(tmp_path / "new", {}, resume=True, overwrite=True)
    assert prepare_run_dir(tmp_path / "new", {}, resume=False, overwrite=False) == []
    assert "holds no run to resume" in prepare_run_dir(tmp_path / "new", {}, resume=True, overwrite=False)[0]


def test_resume_without_a_checkpoint_says_so_and_starts_over(tmp_path):
    run = tmp_path / "run"  # a run killed before its first checkpoint, with its logs
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.123}\n{"step": 1, "optim/lr": 1.0}\n')
    (run / "eval_before.json").write_text('{"eval/accuracy": 0.123}\n')
    log: list[str] = []
    result = train(_config(run, "training.steps=1"), resume=True, log=log.append)
    assert (
        f"--resume: {run} has no checkpoint; starting the run over from step 0 (its logs are replaced)" in log
    )
    assert result.steps == 1 and _steps_logged(run) == [1]
    rows = read_metrics(run / "metrics.jsonl")  # the new run's logs only: no row of the old one
    assert [row["step"] for row in rows].count(0) == 1 and rows[0]["eval/accuracy"] != 0.123


def test_config_differences_by_key_and_which_may_change_on_resume():
    saved = {"optim": {"lr": 1e-4, "betas": [0.9, 0.999]}, "training": {"steps": 10}, "task": {"params": {}}}
    new = {
        "optim": {"lr": 3e-4, "betas": [0.9, 0.999]},
        "training": {"steps": 20},
        "task": {"params": {"a": 1}},
    }
    changes = config_differences(saved, new)
    assert [format_difference(*c) for c in changes] == [
        "optim.lr: 0.0001 -> 0.0003",
        "task.params.a: (not set) -> 1",
        "training.steps: 10 -> 20",
    ]
    assert [is_safe_to_change(key) for key, *_ in changes] == [False, False, True]
    assert is_safe_to_change("logging.log_every") and is_safe_to_change("checkpoint.keep_last")
    assert is_safe_to_change("eval.every") and not is_safe_to_change("eval.num_problems")
    assert not is_safe_to_change("training.seed") and not is_safe_to_change("logging")


def test_resume_refuses_a_change_that_alters_the_run_unless_forced(tmp_path):
    run = tmp_path / "run"
    train(_config(run, "training.steps=1", "optim.lr=1e-4"), log=_quiet)

    with pytest.raises(ConfigError, match=r"(?s)--resume: the config differs.*--force-resume") as err:
        train(_config(run, "training.steps=2", "optim.lr=3e-4", "training.seed=5"), resume=True, log=_quiet)
    assert "  optim.lr: 0.0001 -> 0.0003\n  training.seed: 0 -> 5\n" in str(err.value)
    assert "training.steps" not in str(err.value).split("Settings a resumed run may change")[0]
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 1e-4  # not overwritten

    log: list[str] = []  # what may change on resume does, and is logged
    train(
        _config(run, "training.steps=2", "optim.lr=1e-4", "logging.log_every=5"), resume=True, log=log.append
    )
    assert (
        "changed on resume: training.steps: 1 -> 2" in log
        and "changed on resume: logging.log_every: 1 -> 5" in log
    )
    assert _steps_logged(run) == [1, 2]

    log.clear()
    train(_config(run, "training.steps=3", "algorithm.eps_high=0.28"), force_resume=True, log=log.append)
    assert "--force-resume: algorithm.eps_high: 0.2 -> 0.28" in log
    assert json.loads((run / "config.until-step-000002.json").read_text())["algorithm"]["eps_high"] == 0.2
    assert json.loads((run / "config.json").read_text())["algorithm"]["eps_high"] == 0.28
    assert _steps_logged(run) == [1, 2, 3]

    # The optimizer's state would restore the saved learning rate: even --force-resume refuses it.
    with pytest.raises(ConfigError, match=r"(?s)--force-resume cannot change.*optim\.lr: 0\.0001 -> 0\.0003"):
        train(
            _config(run, "training.steps=4", "optim.lr=3e-4", "algorithm.eps_high=0.28"),
            force_resume=True,
            log=_quiet,
        )
    assert _steps_logged(run) == [1, 2, 3]


def test_overwrite_deletes_only_what_rlvr_wrote_and_empty_run_folders_are_no_run(tmp_path):
    project = tmp_path / "project"  # a project's own folders, one of them named like a run's
    (project / "checkpoints").mkdir(parents=True)
    (project / "src").mkdir()
    (project / "src" / "main.py").write_text("print(1)")
    for resume, overwrite in [(False, False), (False, True), (True, False)]:
        with pytest.raises(ConfigError, match="not empty and holds no rlvr run"):
            prepare_run_dir(project, {}, resume=resume, overwrite=overwrite)
    assert (project / "src" / "main.py").read_text() == "print(1)"

    run = tmp_path / "run"
    train(_config(run, "training.steps=1"), log=_quiet)
    (run / "notes.txt").write_text("mine")
    (run / "plots").mkdir()
    train(_config(run, "training.steps=1"), overwrite=True, log=_quiet)
    assert (run / "notes.txt").read_text() == "mine"  # not rlvr's: kept
    assert not (run / "plots").exists() and _steps_logged(run) == [1]


def test_the_saved_config_is_the_one_given_so_resume_compares_like_with_like(tmp_path):
    # Mixed precision loads float32 shards whatever model.dtype says; the saved config keeps what the
    # user wrote, so resuming with the same command line finds no difference.
    run = tmp_path / "run"
    settings = ("training.steps=1", "parallel.strategy=fsdp2", "parallel.mixed_precision=bfloat16")
    train(_config(run, *settings), log=_quiet)
    assert json.loads((run / "config.json").read_text())["model"]["dtype"] == "auto"
    log: list[str] = []
    train(_config(run, *settings[1:], "training.steps=2"), resume=True, log=log.append)
    assert "changed on resume: training.steps: 1 -> 2" in log and _steps_logged(run) == [1, 2]


def test_resume_skips_a_damaged_checkpoint_for_the_previous_one(tmp_path):
    run = tmp_path / "run"
    train(_config(run, "training.steps=2", "checkpoint.every=1"), log=_quiet)
    (run / "checkpoints" / "step-000002" / "rng.pt").write_bytes(b"not a torch file")
    log: list[str] = []
    result = train(_config(run, "training.steps=2", "checkpoint.every=1"), resume=True, log=log.append)
    damaged = run / "checkpoints" / "step-000002" / "rng.pt"
    assert any(f"{damaged}: cannot be read" in line and "falling back" in line for line in log)
    assert f"resumed from {run / 'checkpoints' / 'step-000001'} at step 1" in log
    assert result.steps == 2 and _steps_logged(run) == [1, 2]  # step 2 trained again, logged once
    assert torch.load(damaged, weights_only=True)["world_size"] == 1  # rewritten by the new step 2


def test_ctrl_c_during_the_final_evaluation_keeps_the_trained_steps(tmp_path):
    """A real SIGINT while the final evaluation runs: the steps since the last checkpoint are saved
    first, the run stops at once, and --resume only evaluates and writes the final model."""
    from rlvr.training.trainer import Trainer

    run = tmp_path / "run"
    config = _config(run, "training.steps=2", "checkpoint.every=0")
    trainer = Trainer(config, log=_quiet)
    evaluate, calls = trainer.evaluate, []

    def evaluate_then_ctrl_c() -> dict:
        calls.append(trainer.step)
        if len(calls) == 2:  # the final evaluation
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate()

    trainer.evaluate = evaluate_then_ctrl_c

    class ReachedTheCallersHandler(Exception):
        pass

    def callers_handler(signum, frame):
        raise ReachedTheCallersHandler

    previous = signal.signal(signal.SIGINT, callers_handler)
    try:
        result = trainer.run()
    finally:
        restored = signal.signal(signal.SIGINT, previous)
    assert restored is callers_handler  # the run put the caller's handler back
    assert calls == [0, 2] and result.interrupted and result.eval_after == {}
    assert [p.name for p in list_checkpoints(run)] == ["step-000002"] and not (run / "final").exists()

    log: list[str] = []
    result = train(config, resume=True, log=log.append)
    assert f"resumed from {run / 'checkpoints' / 'step-000002'} at step 2" in log
    assert not result.interrupted and "eval/accuracy" in result.eval_after
    assert (run / "final" / "model.safetensors").is_file() and _steps_logged(run) == [1, 2]


def _quiet(*args, **kwargs) -> None:
    pass
