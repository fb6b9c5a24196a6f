"""``rlvr sft``: settings, the loss the stage computes (mask, padding = packing), learning, the run
directory, Ctrl-C, resume after SIGKILL, the command line, and 1 rank = 2 ranks (slow)."""

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

from rlvr.cli import main
from rlvr.errors import ConfigError, DataError
from rlvr.logging import read_metrics
from rlvr.stages.sft import (
    BatchSettings,
    SFTRun,
    accumulate_gradients,
    load_sft_config,
    read_data,
    step_rows,
    train_sft,
)

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sft_toy.yaml"


def _rows(n: int = 16) -> list[dict[str, str]]:
    """Subtractions without spaces (the toy tokenizer loaded through AutoTokenizer drops them)."""
    return [{"prompt": f"{50 + i}-{i + 3}=", "completion": str(47)} for i in range(n)]


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    return _write(tmp_path / "sft.jsonl", _rows())


def _config(data: Path, out: Path, *more: str):
    return load_sft_config(
        None,
        [
            f"data.train={data}",
            f"logging.output_dir={out}",
            "logging.tensorboard=false",
            "training.examples_per_step=4",
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


# --- settings -------------------------------------------------------------------------------------


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match="unknown setting 'training.example_per_step'.*examples_per_step"):
        load_sft_config(None, ["data.train=x.jsonl", "training.example_per_step=4"])
    with pytest.raises(ConfigError, match="'training.micro_batch_tokens' must be >= 1"):
        load_sft_config(None, ["data.train=x.jsonl", "training.micro_batch_tokens=0"])
    with pytest.raises(ConfigError, match="'data.held_out_fraction'"):
        load_sft_config(None, ["data.train=x.jsonl", "data.held_out_fraction=1.0"])
    with pytest.raises(ConfigError, match="'optim.lr' must be positive"):
        load_sft_config(None, ["data.train=x.jsonl", "optim.lr=0"])
    with pytest.raises(ConfigError, match="'data.train' is required"):
        load_sft_config(None, [])
    with pytest.raises(ConfigError, match="'training.steps' and 'training.epochs'"):
        load_sft_config(None, ["data.train=x.jsonl", "training.steps=3", "training.epochs=2"])
    with pytest.raises(ConfigError, match="setting 'data.template'"):
        load_sft_config(None, ["data.train=x.jsonl", "data.template=nope"])


def test_the_data_section_carries_every_data_setting_with_its_default():
    from dataclasses import fields

    from rlvr.stages.sft import SFTDataConfig
    from rlvr.training.sft_data import SFTDataSettings

    assert SFTDataConfig().settings() == SFTDataSettings()
    config = load_sft_config(None, ["data.train=x.jsonl", "data.max_tokens=7", "data.too_long=drop"])
    assert config.data.settings() == SFTDataSettings(max_tokens=7, too_long="drop")
    assert {f.name for f in fields(SFTDataSettings)} < {f.name for f in fields(SFTDataConfig)}


def test_steps_cover_each_epoch_once_in_a_seeded_order():
    epoch = [step_rows(s, 10, 4, seed=3) for s in range(3)]
    assert sorted(r for rows in epoch for r in rows) == list(range(10))
    assert [len(rows) for rows in epoch] == [4, 4, 2]
    assert step_rows(3, 10, 4, seed=3) != epoch[0]  # the next epoch draws a new order
    assert step_rows(1, 10, 4, seed=3) == epoch[1]


def test_held_out_fraction_splits_the_rows(data):
    config = _config(data, Path("unused"), "data.held_out_fraction=0.25")
    train, held, _ = read_data(config.data, seed=0)
    assert len(train) == 12 and len(held) == 4
    assert not {e.where for e in train} & {e.where for e in held}


# --- the loss of a step -----------------------------------------------------------------------------


def _run_parts(data: Path, tmp_path: Path, *more: str) -> SFTRun:
    run = SFTRun(_config(data, tmp_path / "run", *more), log=_quiet)
    run.model.double()
    return run


def _grads(model) -> list[torch.Tensor]:
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def test_the_step_loss_is_the_completion_tokens_nll_only(data, tmp_path):
    """The gradient of a step is that of the mean NLL of the completion (and EOS) tokens, computed by
    hand here: prompt tokens are not trained."""
    run = _run_parts(data, tmp_path)
    examples, rows = run.train.examples, [0, 3, 5]
    loss, tokens = accumulate_gradients(run.model, examples, rows, run.batching)
    got = _grads(run.model)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for r in rows:
        ex = examples[r]
        logprobs = run.model(torch.tensor([ex.input_ids])).logits[0].log_softmax(-1)
        for t in range(ex.length - 1):
            if ex.target_mask[t + 1]:
                total = total - logprobs[t, ex.input_ids[t + 1]]
                count += 1
    assert count == tokens and count < sum(examples[r].length - 1 for r in rows)  # prompts left out
    (total / count).backward()
    assert loss == pytest.approx((total / count).item(), rel=1e-10)
    for g, want in zip(got, _grads(run.model), strict=True):
        torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-12)


def test_padded_and_packed_give_the_same_loss_and_gradient(data, tmp_path):
    run = _run_parts(data, tmp_path)
    rows = step_rows(0, len(run.train.examples), 8, seed=0)
    results = []
    for packing in (False, True):
        settings = BatchSettings(64, packing, run.batching.pad_id, run.batching.device)
        loss, _ = accumulate_gradients(run.model, run.train.examples, rows, settings)
        results.append((loss, _grads(run.model)))
    (padded, g_padded), (packed, g_packed) = results
    assert packed == pytest.approx(padded, rel=1e-10)
    for a, b in zip(g_padded, g_packed, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# --- runs ------------------------------------------------------------------------------------------


def test_the_loss_falls_on_a_memorisable_set_and_the_final_model_loads(data, tmp_path):
    out = tmp_path / "run"
    config = _config(data, out, "training.steps=12", "data.held_out_fraction=0.25")
    result = train_sft(config, log=_quiet)
    assert result.steps == 12 and not result.interrupted
    metrics = read_metrics(out / "metrics.jsonl")
    losses = [m["sft/loss"] for m in metrics if "sft/loss" in m]
    held = [m["eval/loss"] for m in metrics if "eval/loss" in m]
    assert len(losses) == 12 and losses[-1] < 0.3 * losses[0]
    assert len(held) == 2 and held[-1] < held[0]  # before training and after the last step
    assert all(m["optim/skipped_updates"] == 0 for m in metrics if "sft/loss" in m)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out / "final")
    assert (out / "checkpoints" / "step-000012").is_dir()


def test_a_bad_row_is_reported_before_the_model_loads(tmp_path, monkeypatch):
    import rlvr.training.model as model_module

    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer or model loaded before the data was checked")

    monkeypatch.setattr(model_module, "load_policy", refuse)
    monkeypatch.setattr(model_module, "load_tokenizer", refuse)
    bad = _write(tmp_path / "bad.jsonl", [_rows(1)[0], {"prompt": "1+1="}])
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'completion'.*data.skip_bad_rows"):
        SFTRun(_config(bad, tmp_path / "run"), log=_quiet)
    held = _write(tmp_path / "held.jsonl", ["not json"])
    with pytest.raises(DataError, match="held.jsonl:1"):
        SFTRun(_config(bad, tmp_path / "run", "data.skip_bad_rows=true", f"data.held_out={held}"), log=_quiet)


def test_a_used_run_directory_is_refused_and_overwrite_replaces_it(data, tmp_path, capsys):
    out = tmp_path / "run"
    train_sft(_config(data, out, "training.steps=1"), log=_quiet)
    with pytest.raises(ConfigError, match="already holds a run.*--resume.*--overwrite"):
        train_sft(_config(data, out, "training.steps=1"), log=_quiet)
    args = ["sft", f"data.train={data}", f"logging.output_dir={out}", "training.steps=1"]
    assert main(args) == 2 and "already holds a run" in capsys.readouterr().err
    assert main([*args, "training.device=cpu", "--overwrite"]) == 0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no rlvr run"):
        train_sft(_config(data, tmp_path / "other"), log=_quiet)


def test_resume_refuses_a_changed_setting_that_alters_training(data, tmp_path):
    out = tmp_path / "run"
    train_sft(_config(data, out, "training.steps=2"), log=_quiet)
    with pytest.raises(ConfigError, match="training.packing: false -> true"):
        train_sft(_config(data, out, "training.steps=2", "training.packing=true"), resume=True, log=_quiet)
    result = train_sft(_config(data, out, "training.steps=3"), resume=True, log=_quiet)  # steps may change
    assert result.steps == 3 and [m["step"] for m in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_ctrl_c_saves_and_stops_after_the_step(data, tmp_path, monkeypatch):
    run = SFTRun(_config(data, tmp_path / "run", "training.steps=6"), log=_quiet)
    step = run.train_step

    def interrupted_at_2(i: int):
        if i == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return step(i)

    monkeypatch.setattr(run, "train_step", interrupted_at_2)
    result = run.run()
    assert result.interrupted and result.steps == 2
    assert (tmp_path / "run" / "checkpoints" / "step-000002").is_dir()
    assert not (tmp_path / "run" / "final").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_command_line_runs_the_recipe(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["sft", str(RECIPE), f"logging.output_dir={out}", "training.epochs=2", "training.device=cpu"])
        == 0
    )
    assert "final model in" in capsys.readouterr().out
    saved = json.loads((out / "config.json").read_text())
    assert saved["training"]["examples_per_step"] == 12 and saved["data"]["held_out_fraction"] == 0.25
    metrics = read_metrics(out / "metrics.jsonl")
    assert metrics[-1]["step"] == 6 and "eval/loss" in metrics[-1]
    assert (out / "final" / "model.safetensors").is_file()


def test_lora_writes_an_adapter_that_loads(data, tmp_path):
    pytest.importorskip("peft")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from rlvr.training.model import resolve_model_path

    out = tmp_path / "run"
    train_sft(_config(data, out, "training.steps=2", "model.lora_rank=4"), log=_quiet)
    assert (out / "final" / "adapter_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("toy"))
    PeftModel.from_pretrained(base, out / "final")


# --- subprocesses ------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TORCHELASTIC_RESTART_COUNT", None)
    return env


def _sft_command(data: Path, out: Path, *more: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "rlvr",
        "sft",
        f"data.train={data}",
        f"logging.output_dir={out}",
        "logging.tensorboard=false",
        "training.device=cpu",
        "training.cpu_threads=1",
        "training.examples_per_step=4",
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


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(data, tmp_path):
    common = ("training.steps=150", "checkpoint.every=30")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_sft_command(data, straight, *common), capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(
        _sft_command(data, killed, *common), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env()
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000030").is_dir():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(
        [*_sft_command(data, killed, *common), "--resume"], capture_output=True, text=True, env=_env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr

    a, b = _by_step(straight), _by_step(killed)
    assert sorted(a) == sorted(b) == list(range(151))
    for step in a:
        for key, value in a[step].items():
            if key.startswith(("time/", "throughput/")) or key == "time":
                continue
            assert b[step][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, key)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_give_the_update_of_one(data, tmp_path, strategy):
    """The same global steps on 1 process and on 2 torchrun ranks: the same metrics and weights."""
    from safetensors.torch import load_file

    common = ("training.steps=3", "checkpoint.every=0", f"parallel.strategy={strategy}")
    one, two = tmp_path / "one", tmp_path / "two"
    for out, prefix in (
        (one, []),
        (two, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]),
    ):
        command = _sft_command(data, out, *common)
        command = [*prefix, "-m", *command[2:]] if prefix else command
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=_env(), timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    a, b = _by_step(one), _by_step(two)
    assert sorted(a) == sorted(b) == [0, 1, 2, 3]
    for step in a:
        for key, value in a[step].items():
            if not key.startswith(("time/", "throughput/")) and key != "time":
                assert b[step][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)
    wa, wb = load_file(one / "final" / "model.safetensors"), load_file(two / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-5)
