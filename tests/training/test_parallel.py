"""Training on N ranks: the pieces in one process, then real torchrun groups of 2 CPU processes (gloo).

The slow tests start torchrun; tests/training/parallel_worker.py is the training side of the
equivalence and dynamic-sampling tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlvr.algorithms.presets import PRESETS
from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.training.batch import aligned_micro_batches, global_row_positions, make_batch, micro_batches
from rlvr.training.parallel import Parallel, decoder_layers
from rlvr.training.update import WeightedMetrics

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
WORKER = HERE / "parallel_worker.py"
CRITIC_FREE_PRESETS = sorted(p for p in PRESETS if p not in ("ppo", "vapo"))


# --- one process ----------------------------------------------------------------------------------


def test_without_a_process_group_every_strategy_is_a_no_op():
    from transformers import AutoModelForCausalLM

    from rlvr.training.model import resolve_model_path

    model = AutoModelForCausalLM.from_pretrained(resolve_model_path("toy"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for strategy in ("none", "ddp", "fsdp2"):
        parallel = Parallel(load_config(None, [f"parallel.strategy={strategy}"]).parallel)
        assert parallel.strategy == "none" and not parallel.sharded and parallel.describe() == "one process"
        assert parallel.prepare(model) is model
        with parallel.gathered(model):
            pass
        model(torch.tensor([[1, 2, 3]])).logits.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        parallel.reduce_gradients(list(model.parameters()))
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, model.parameters(), strict=True))
        model.zero_grad()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert len(decoder_layers(model)) == model.config.num_hidden_layers  # what fsdp2 shards one by one


def test_without_torchrun_there_is_no_process_group():
    from rlvr.distributed import broadcast_object, init_from_environment, is_distributed, restart_count

    assert not init_from_environment(timeout_s=5, use_cuda=False) and not is_distributed()
    assert broadcast_object({"a": 1}) == {"a": 1} and restart_count() == 0


def test_settings_that_need_fsdp2_are_refused_with_the_key():
    with pytest.raises(ConfigError, match="parallel.cpu_offload"):
        load_config(None, ["parallel.cpu_offload=true"])
    with pytest.raises(ConfigError, match="parallel.mixed_precision"):
        load_config(None, ["parallel.strategy=ddp", "parallel.mixed_precision=bfloat16"])
    with pytest.raises(ConfigError, match="parallel.timeout_s"):
        load_config(None, ["parallel.timeout_s=0"])
    load_config(
        None, ["parallel.strategy=fsdp2", "parallel.mixed_precision=bfloat16", "parallel.cpu_offload=true"]
    )


def test_row_positions_follow_the_keys_and_micro_batches_are_not_padded_in_one_process():
    from training_fixtures import random_completions

    completions = random_completions(81, num_prompts=3, n=2, seed=0)
    keys = [(7, 1), (7, 0), (2, 0), (2, 1), (5, 0), (5, 1)]
    batch = make_batch(completions, [0.0] * 6, [False] * 6, [0, 0, 1, 1, 2, 2], 0, row_keys=keys)
    assert global_row_positions(batch.row_keys) == ([5, 4, 0, 1, 2, 3], 6)
    with pytest.raises(ValueError, match="not unique"):
        global_row_positions([(1, 0), (1, 0)])
    assert [mb.rows.tolist() for mb in aligned_micro_batches(batch, range(6), 40)] == [
        mb.rows.tolist() for mb in micro_batches(batch, range(6), 40)
    ]
    empty = make_batch([], [], [], [], 0)  # a rank whose share of the step is empty
    assert empty.size == 0 and aligned_micro_batches(empty, [], 40) == []


def test_weighted_metrics_average_by_tokens_and_keep_extremes():
    metrics = WeightedMetrics()
    metrics.add({"policy/ratio_mean": 1.0, "policy/ratio_max": 1.5, "policy/ratio_min": 0.9}, tokens=3)
    metrics.add({"policy/ratio_mean": 2.0, "policy/ratio_max": 1.2, "policy/ratio_min": 0.5}, tokens=1)
    metrics.add({"policy/ratio_mean": 9.0, "policy/ratio_max": 9.0, "policy/ratio_min": 0.0}, tokens=0)
    out = metrics.result()
    assert out["policy/ratio_mean"] == pytest.approx((3 * 1.0 + 1 * 2.0) / 4)  # 1.25
    assert out["policy/ratio_max"] == 1.5 and out["policy/ratio_min"] == 0.5  # no-token calls ignored


# --- torchrun groups --------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE))
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    return env


def _torchrun(*args: str, nproc: int = 2, restarts: int = 0) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        f"--max-restarts={restarts}",
        *args,
    ]


def _run(cmd: list[str], timeout: int = 600) -> str:
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rollouts(tmp_path_factory) -> Path:
    """Real completions of the toy model, fed to every run so that sampling noise does not enter."""
    path = tmp_path_factory.mktemp("rollouts") / "groups.pkl"
    _run([sys.executable, str(WORKER), "make", str(path)])
    return path


def _compare(one: Path, two: Path, preset: str) -> float:
    a, b = torch.load(one / f"{preset}.pt"), torch.load(two / f"{preset}.pt")
    assert a["weights"].keys() == b["weights"].keys()
    diff = max((a["weights"][k] - b["weights"][k]).abs().max().item() for k in a["weights"])
    for key, value in a["metrics"].items():  # every logged metric is reduced over the ranks
        if key.startswith(("time/", "throughput/", "memory/")):
            continue
        assert b["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (preset, key)
    return diff


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_one_step_on_two_ranks_equals_the_same_batch_on_one(rollouts, tmp_path, strategy):
    presets = [*CRITIC_FREE_PRESETS, "ppo", "vapo"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(WORKER), "learn", str(rollouts), str(one), "none", "alternate", *presets])
    _run(_torchrun(str(WORKER), "learn", str(rollouts), str(two), strategy, "alternate", *presets))
    initial = _initial_weights()
    for preset in presets:
        diff = _compare(one, two, preset)
        assert diff <= 1e-5, (preset, diff)
        weights = torch.load(one / f"{preset}.pt")["weights"]
        moved = max((weights[k] - initial[k]).abs().max().item() for k in initial)
        assert moved > 1e-4, (preset, moved)  # the step did change the weights, by far more than 1e-5


AGENT_PRESETS = ["grpo", "dapo", "gspo", "ppo+turn_rewards", "vapo", "reinforce_pp+turn_rewards"]
"""Env mode: group estimators, token-level aggregation, a critic (GAE skips the observation tokens)
and per-turn rewards."""


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory) -> Path:
    """Real multi-turn trajectories of the toy model with the calculator tool (observation tokens
    are holes of their masks), fed to every run."""
    path = tmp_path_factory.mktemp("trajectories") / "groups.pkl"
    _run([sys.executable, str(WORKER), "make-agent", str(path)])
    return path


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_one_multi_turn_step_on_two_ranks_equals_the_same_batch_on_one(trajectories, tmp_path, strategy):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [str(WORKER), "learn-agent", str(trajectories)]
    _run([sys.executable, *args, str(one), "none", "alternate", *AGENT_PRESETS])
    _run(_torchrun(*args, str(two), strategy, "alternate", *AGENT_PRESETS))
    initial = _initial_weights()
    for preset in AGENT_PRESETS:
        diff = _compare(one, two, preset)
        assert diff <= 1e-5, (preset, diff)
        weights = torch.load(one / f"{preset}.pt")["weights"]
        moved = max((weights[k] - initial[k]).abs().max().item() for k in initial)
        assert moved > 1e-4, (preset, moved)


@pytest.mark.slow
def test_trajectories_split_into_turns_on_two_ranks_equal_the_same_batch_on_one(trajectories, tmp_path):
    """One row per turn (a chat template that rewrites earlier turns): a trajectory's rows stay on
    its rank, and the estimators see it whole on either side."""
    one, two = tmp_path / "one", tmp_path / "two"
    args = [str(WORKER), "learn-agent-turns", str(trajectories)]
    _run([sys.executable, *args, str(one), "none", "alternate", *AGENT_PRESETS])
    _run(_torchrun(*args, str(two), "ddp", "alternate", *AGENT_PRESETS))
    for preset in AGENT_PRESETS:
        assert _compare(one, two, preset) <= 1e-5, preset


@pytest.mark.slow
def test_env_metrics_of_a_multi_turn_step_count_the_trajectories_of_every_rank(tmp_path):
    from rlvr.rollout.multi_turn import trajectory_metrics, trajectory_sums

    _run(_torchrun(str(WORKER), "agent-step", str(tmp_path), "ddp"), timeout=300)
    reports = [torch.load(tmp_path / f"agent-rank{r}.pt", weights_only=False) for r in range(2)]
    assert all(len(r["trajectories"]) == 8 for r in reports)  # 2 of the 4 prompts each, 4 samples
    sums = [trajectory_sums(r["trajectories"]) for r in reports]
    expected = trajectory_metrics({k: sums[0][k] + sums[1][k] for k in sums[0]})
    for report in reports:
        for key, value in expected.items():
            assert report["metrics"][key] == pytest.approx(value), key
    a, b = (r["metrics"] for r in reports)
    for key, value in a.items():  # every logged metric is the same on both ranks
        if not key.startswith(("time/", "throughput/", "memory/")):
            assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


@pytest.mark.slow
def test_activation_checkpointing_under_fsdp2_changes_no_update(rollouts, tmp_path):
    presets = ["grpo", "ppo"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(WORKER), "learn", str(rollouts), str(one), "none", "alternate", *presets])
    _run(
        _torchrun(str(WORKER), "learn", str(rollouts), str(two), "fsdp2+checkpointing", "alternate", *presets)
    )
    for preset in presets:
        assert _compare(one, two, preset) <= 1e-5, preset


@pytest.mark.slow
def test_a_rank_with_no_groups_takes_part_in_every_collective(rollouts, tmp_path):
    presets = ["grpo", "dapo", "ppo"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, str(WORKER), "learn", str(rollouts), str(one), "none", "first", *presets])
    _run(_torchrun(str(WORKER), "learn", str(rollouts), str(two), "fsdp2", "first", *presets))
    for preset in presets:
        assert _compare(one, two, preset) <= 1e-5, preset


@pytest.mark.slow
def test_dynamic_sampling_refills_when_every_group_of_one_rank_is_filtered(tmp_path):
    _run(_torchrun(str(WORKER), "filtered", str(tmp_path), "fsdp2"), timeout=300)
    metrics = torch.load(tmp_path / "filtered.pt")["metrics"]
    # Round 1: rank 0 keeps its 2 groups, rank 1 none (all its rewards are 0); round 2 fills the step.
    assert metrics["filter/rounds"] == 2 and metrics["filter/prompts_drawn"] == 8
    assert metrics["filter/dynamic_sampling/dropped_all_wrong"] == 4
    assert metrics["filter/groups_used"] == 4 and metrics["optim/updates"] == 2
    assert metrics["time/generate_spread"] >= 1.0


@pytest.mark.slow
def test_generate_ahead_copies_the_gathered_weights_under_fsdp2(tmp_path):
    _run(_torchrun(str(WORKER), "ahead", str(tmp_path), "fsdp2"), timeout=300)
    reports = [torch.load(tmp_path / f"ahead-rank{r}.pt") for r in range(2)]
    for report in reports:
        assert [s["pending"] for s in report] == [1, 2, None]  # training.steps is 3 here
        # The round of step t + 1 was generated from the weights with which step t began.
        assert all(s["copy_differs"] == 0.0 for s in report[:2]), report
    assert [s["accuracy"] for s in reports[0]] == [s["accuracy"] for s in reports[1]]  # reduced over ranks


def _initial_weights() -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    from rlvr.training.model import resolve_model_path

    return AutoModelForCausalLM.from_pretrained(resolve_model_path("toy")).state_dict()


TRAIN = [
    "-m",
    "rlvr",
    "train",
    "recipes/quickstart.yaml",
    "eval.num_problems=8",
    "rollout.prompts_per_step=4",
    "logging.sample_every=0",
    "logging.tensorboard=false",
    "checkpoint.every=1",
]


def _steps_logged(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "optim/lr" in json.loads(line)]


@pytest.mark.slow
@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_resume_with_another_number_of_ranks(tmp_path, first, second):
    run = tmp_path / "run"

    def launch(nproc: int, steps: int, *extra: str) -> str:
        args = [
            *TRAIN,
            f"training.steps={steps}",
            f"logging.output_dir={run}",
            "parallel.strategy=fsdp2",
            *extra,
        ]
        if nproc == 1:
            return _run([sys.executable, *args])
        return _run(_torchrun(*args, nproc=nproc))

    launch(first, 2)
    saved = _hf_weights(run / "checkpoints" / "step-000002")
    out = launch(second, 3, "--resume")
    assert "resumed from" in out and "at step 2" in out
    assert _steps_logged(run) == [1, 2, 3]
    assert (run / "final" / "model.safetensors").is_file()
    moved = _hf_weights(run / "checkpoints" / "step-000003")
    assert max((moved[k] - saved[k]).abs().max().item() for k in saved) > 0  # it trained on


def _hf_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def _pid_of_rank(rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        first_attempt = b"TORCHELASTIC_RESTART_COUNT=0" in env
        if f"RANK={rank}".encode() in env and first_attempt and b"rlvr" in cmd and b"train" in cmd:
            return int(entry.name)
    return None


def _start_and_kill_rank_1(run: Path, restarts: int) -> tuple[int, str, float]:
    """Start a 2-rank run, SIGKILL rank 1 once the first checkpoint exists; return the exit code,
    the log and the seconds from the kill to the end of the job."""
    args = [*TRAIN, "training.steps=5", f"logging.output_dir={run}", "parallel.timeout_s=60"]
    proc = subprocess.Popen(
        _torchrun(*args, restarts=restarts),
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "step-000001").is_dir():
        assert proc.poll() is None and time.monotonic() < deadline, (
            "the run did not reach its first checkpoint"
        )
        time.sleep(0.2)
    pid = _pid_of_rank(1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    out, _ = proc.communicate(timeout=600)
    return proc.returncode, out, time.monotonic() - killed


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process through /proc")
def test_a_killed_rank_ends_the_job_with_errors_naming_ranks(tmp_path):
    code, out, seconds = _start_and_kill_rank_1(tmp_path / "run", restarts=0)
    assert code != 0 and seconds < 50  # ended, well before parallel.timeout_s (60 s): no hang
    assert "local_rank: 1" in out and "exitcode: -9" in out  # torchrun names the rank that died
    # Rank 0 either hit a collective first and says why it stopped, or torchrun stopped it first.
    ours = "rank 0 of 2: training stopped because a collective with the other ranks failed" in out
    assert ours or "Sending process" in out, out[-4000:]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the rank's process through /proc")
def test_a_killed_rank_restarts_the_group_which_resumes_and_finishes(tmp_path):
    run = tmp_path / "run"
    code, out, _ = _start_and_kill_rank_1(run, restarts=1)
    assert code == 0, out[-6000:]
    assert "local_rank: 1" in out and "exitcode: -9" in out
    assert "resumed from" in out  # the restarted group continued from a checkpoint
    assert (run / "final" / "model.safetensors").is_file()
    assert _steps_logged(run) == [1, 2, 3, 4, 5]  # the steps after the checkpoint are logged once
