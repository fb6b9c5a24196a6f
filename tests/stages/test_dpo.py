"""``rlvr dpo``: settings, the loss of a step against hand-computed DPO (mask), micro-batching, learning
(chosen up, rejected down), LoRA's reference, the data checked first, resume after SIGKILL, the command
line, and 1 rank = 2 ranks (slow)."""

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
import torch.nn.functional as F

from rlvr.cli import main
from rlvr.errors import ConfigError, DataError
from rlvr.logging import read_metrics
from rlvr.stages.dpo import DPORun, PairBatchSettings, accumulate_gradients, load_dpo_config

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "dpo_toy.yaml"


def _rows(n: int = 16) -> list[dict[str, str]]:
    """Sums without spaces (the toy tokenizer loaded through AutoTokenizer drops them); the rejected
    answer echoes the question instead of answering it."""
    return [
        {"prompt": f"{20 + i}+{i + 3}=", "chosen": str(23 + 2 * i), "rejected": f"{20 + i}+{i + 3}"}
        for i in range(n)
    ]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    return _write(tmp_path / "pairs.jsonl", _rows())


def _config(data: Path, out: Path, *more: str):
    return load_dpo_config(
        None,
        [
            f"data.train={data}",
            f"logging.output_dir={out}",
            "logging.tensorboard=false",
            "training.pairs_per_step=4",
            "training.micro_batch_tokens=64",
            "training.steps=4",
            "training.device=cpu",
            "optim.lr=1e-3",
            "checkpoint.every=0",
            *more,
        ],
    )


def _quiet(*args, **kwargs) -> None:
    pass


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown setting 'training.pair_per_step'.*pairs_per_step"):
        load_dpo_config(None, ["data.train=x.jsonl", "training.pair_per_step=4"])
    with pytest.raises(ConfigError, match="'loss.beta' must be positive"):
        load_dpo_config(None, ["data.train=x.jsonl", "loss.beta=0"])
    with pytest.raises(ConfigError, match="setting 'loss.name'.*dpo"):
        load_dpo_config(None, ["data.train=x.jsonl", "loss.name=dop"])
    with pytest.raises(ConfigError, match="'loss.ipo_tau' is not a hyperparameter of loss 'dpo'"):
        load_dpo_config(None, ["data.train=x.jsonl", "loss.ipo_tau=0.5"])
    with pytest.raises(ConfigError, match="'data.train' is required"):
        load_dpo_config(None, [])
    assert (
        load_dpo_config(None, ["data.train=x", "loss.name=simpo", "loss.simpo_gamma=0.5"]).loss.simpo_gamma
        == 0.5
    )


# --- the loss of a step -----------------------------------------------------------------------------


def _run_parts(data: Path, tmp_path: Path, *more: str) -> DPORun:
    run = DPORun(_config(data, tmp_path / "run", *more), log=_quiet)
    run.model.double()
    if run.reference is not None and not run.reference.shares_policy:
        run.reference.model.double()
    return run


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _completion_logprob(model, ex) -> torch.Tensor:
    """Sum of log pi over the completion (and EOS) tokens of one side, one sequence alone."""
    logprobs = model(torch.tensor([ex.input_ids])).logits[0].log_softmax(-1)
    return sum(logprobs[t, ex.input_ids[t + 1]] for t in range(ex.length - 1) if ex.target_mask[t + 1])


def test_the_first_step_loss_is_dpo_of_the_completion_logprobs(data, tmp_path):
    """Against DPO eq. 7 by hand, in float64, on a policy moved away from the reference: prompt
    tokens do not count (the completion log-probs are summed over the completion alone)."""
    run = _run_parts(data, tmp_path, "loss.beta=0.5")
    with torch.no_grad():
        for p in run.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    rows = [0, 3, 5]
    metrics = accumulate_gradients(run.model, run.reference, run.train, rows, run.loss, run.batching)
    got = _grads(run.model)
    total = torch.zeros((), dtype=torch.float64)
    for r in rows:
        pair = run.train[r]
        assert sum(pair.chosen.target_mask) < pair.chosen.length - 1  # the prompt is not scored
        with torch.no_grad():
            ref = [_completion_logprob(run.reference.model, ex) for ex in (pair.chosen, pair.rejected)]
        pol = [_completion_logprob(run.model, ex) for ex in (pair.chosen, pair.rejected)]
        total = total - F.logsigmoid(0.5 * ((pol[0] - ref[0]) - (pol[1] - ref[1])))
    (total / len(rows)).backward()
    assert metrics["preference/loss"] == pytest.approx((total / len(rows)).item(), rel=1e-10)
    assert metrics["preference/pairs"] == 3
    for g, want in zip(got, _grads(run.model), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-12)


def test_micro_batches_give_the_gradient_of_one_batch(data, tmp_path):
    run = _run_parts(data, tmp_path)
    rows = list(range(8))
    results = []
    for budget in (16, 4096):  # one pair per micro-batch, then every pair in one
        settings = PairBatchSettings(budget, run.batching.pad_id, run.batching.device)
        metrics = accumulate_gradients(run.model, run.reference, run.train, rows, run.loss, settings)
        results.append((metrics, _grads(run.model)))
    (small, g_small), (big, g_big) = results
    assert small["preference/loss"] == pytest.approx(big["preference/loss"], rel=1e-10)
    for a, b in zip(g_small, g_big, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_chosen_goes_up_and_rejected_down(data, tmp_path):
    run = DPORun(
        _config(data, tmp_path / "run", "training.steps=6", "optim.lr=1e-4", "loss.beta=0.5"), log=_quiet
    )
    pairs = run.train

    def logprobs() -> tuple[float, float]:
        with torch.no_grad():
            sides = [
                [_completion_logprob(run.model, getattr(p, s)) for p in pairs] for s in ("chosen", "rejected")
            ]
        return float(sum(sides[0])), float(sum(sides[1]))

    chosen0, rejected0 = logprobs()
    result = run.run()
    chosen1, rejected1 = logprobs()
    assert result.steps == 6
    assert chosen1 > chosen0 and rejected1 < rejected0
    metrics = [m for m in read_metrics(tmp_path / "run" / "metrics.jsonl") if "preference/loss" in m]
    assert (
        metrics[-1]["preference/reward_margin"] > 0
        and metrics[-1]["preference/loss"] < metrics[0]["preference/loss"]
    )


def test_simpo_needs_no_reference(data, tmp_path):
    run = DPORun(_config(data, tmp_path / "run", "loss.name=simpo"), log=_quiet)
    assert run.reference is None
    assert run.run().steps == 4


def test_with_lora_the_reference_is_the_policy_with_its_adapter_off(data, tmp_path):
    pytest.importorskip("peft")
    run = DPORun(_config(data, tmp_path / "run", "model.lora_rank=4"), log=_quiet)
    assert run.reference.shares_policy and run.reference.model is run.model
    with torch.no_grad():
        for name, p in run.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.1)  # the adapter now changes the output
    ids = torch.tensor([run.train[0].chosen.input_ids])
    with run.reference.active() as ref:
        off = ref(ids).logits
    with run.model.disable_adapter(), torch.no_grad():
        base = run.model(ids).logits
    torch.testing.assert_close(off, base)
    assert not torch.allclose(run.model(ids).logits, off)


def test_a_bad_row_is_reported_before_the_model_loads(tmp_path, monkeypatch):
    import rlvr.training.model as model_module

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer or model loaded before the data was checked")

    monkeypatch.setattr(model_module, "load_policy", refuse)
    monkeypatch.setattr(model_module, "load_tokenizer", refuse)
    bad = _write(tmp_path / "bad.jsonl", [_rows(1)[0], {"prompt": "1+1=", "chosen": "2"}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'rejected'.*data.skip_bad_rows"):
        DPORun(_config(bad, tmp_path / "run"), log=_quiet)


def test_the_command_line_runs_the_recipe(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["dpo", str(RECIPE), f"logging.output_dir={out}", "training.device=cpu"]) == 0
    assert "final model in" in capsys.readouterr().out
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[-1]["step"] == 15 and "eval/accuracy" in metrics[-1]
    assert (out / "final" / "model.safetensors").is_file()
    args = ["dpo", str(RECIPE), f"logging.output_dir={out}"]
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err


# --- subprocesses ------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    return env


def _dpo_command(data: Path, out: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlvr",
        "dpo",
        f"data.train={data}",
        f"logging.output_dir={out}",
        "logging.tensorboard=false",
        "training.device=cpu",
        "training.cpu_threads=1",
        "training.pairs_per_step=4",
        "training.micro_batch_tokens=64",
        "data.held_out_fraction=0.25",
        "eval.every=10",
        "optim.lr=1e-3",
        *more,
    ]


def _by_step(out: Path) -> dict[int, dict]:
    steps: dict[int, dict] = {}
    for m in read_metrics(out / "metrics.jsonl"):
        steps.setdefault(m["step"], {}).update(m)
    return steps


def _same_metrics(a: dict[int, dict], b: dict[int, dict], rel: float, abs_: float) -> None:
    assert sorted(a) == sorted(b)
    for step in a:
        for key, value in a[step].items():
            if not key.startswith(("time/", "throughput/")) and key != "time":
                assert b[step][key] == pytest.approx(value, rel=rel, abs=abs_), (step, key)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    common = ("training.steps=100", "checkpoint.every=20")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_dpo_command(data, straight, *common), capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    proc = subprocess.Popen(
        _dpo_command(data, killed, *common), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000020").is_dir():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [*_dpo_command(data, killed, *common), "--resume"], capture_output=True, text=True, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a, b = _by_step(straight), _by_step(killed)
    assert sorted(a) == list(range(101))
    _same_metrics(a, b, rel=1e-6, abs_=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_give_the_update_of_one(data, tmp_path, strategy):
    """The same global steps on 1 process and on 2 torchrun ranks: the same metrics and weights."""
    from safetensors.torch import load_file

    common = ("training.steps=3", "checkpoint.every=0", f"parallel.strategy={strategy}", "optim.lr=1e-4")
    one, two = tmp_path / "one", tmp_path / "two"
    for out, prefix in (
        (one, []),
        (two, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]),
    ):
        command = _dpo_command(data, out, *common)
        command = [*prefix, "-m", *command[2:]] if prefix else command
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    _same_metrics(_by_step(one), _by_step(two), rel=1e-4, abs_=1e-6)
    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:  # Adam moves a weight up to lr per step, even on a near-zero gradient whose float32
        # summation order differs between 1 and 2 ranks: allow a tenth of the 3 steps' reach
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=3e-5)
