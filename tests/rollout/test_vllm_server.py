"""rollout.engine 'vllm' with rollout.server: a vLLM server started by the test, on the toy model.

Marked ``vllm`` (``python -m pytest -m vllm``); skipped when vLLM is not importable. The last test
stops the server and checks that the next call is an error naming it, not a hang.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

from vllm_cases import PARITY, rollout_and_trainer_logprobs  # noqa: E402

from rlvr.config import load_config  # noqa: E402
from rlvr.rollout.hf_engine import _eos_ids  # noqa: E402
from rlvr.rollout.types import SamplingParams  # noqa: E402
from rlvr.rollout.vllm_engine import WeightSyncError  # noqa: E402
from rlvr.rollout.vllm_server import VLLMServerEngine, VLLMServerError  # noqa: E402
from rlvr.training.model import resolve_model_path  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": "1"}
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w")  # noqa: SIM115
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(resolve_model_path("toy")),
        "--dtype",
        "float32",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--logprobs-mode",
        "processed_logprobs",
        "--max-logprobs",
        "1",
        "--enforce-eager",
        "--gpu-memory-utilization",
        "0.1",
    ]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the vLLM server exited with {process.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            time.sleep(1)
    else:
        process.kill()
        pytest.fail(f"the vLLM server did not start in 240 s; see {log.name}")
    yield url, process
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=60)
    log.close()


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("toy")
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32
    )


def _engine(url, tokenizer, model, tmp_path, **kwargs):
    return VLLMServerEngine(
        url,
        tokenizer,
        weights_dir=tmp_path / "weights",
        vocab_size=model.get_input_embeddings().weight.shape[0],
        eos_ids=_eos_ids(model, tokenizer),
        **kwargs,
    )


def _prompts(tokenizer):
    return [
        tokenizer.encode("User: 12+34= Assistant: <think>"),
        tokenizer.encode("7+8="),
        tokenizer.encode("3"),
    ]


def _max_diff(model, completions, temperature):
    served, trainer = rollout_and_trainer_logprobs(model, completions, temperature)
    return (served - trainer).abs().max().item()


def test_server_generation_seeds_stop_strings_and_parity(server, toy, tmp_path):
    tokenizer, model = toy
    engine = _engine(server[0], tokenizer, model, tmp_path)
    sampling = SamplingParams(n=4, max_new_tokens=24, temperature=0.7, seed=2, stop_strings=("</think>",))
    out = engine.generate(_prompts(tokenizer), sampling)
    assert len(out) == 12 and [c.prompt_index for c in out] == [i // 4 for i in range(12)]
    for c in out:
        assert len(c.logprobs) == len(c.token_ids) >= 1 and c.weight_version == 0
        if "</think>" in c.text:
            assert c.finish_reason == "stop" and c.text.endswith("</think>")
    assert [c.token_ids for c in engine.generate(_prompts(tokenizer), sampling)] == [c.token_ids for c in out]
    assert _max_diff(model, out, 0.7) < PARITY
    engine.check_weights(model)


def test_environments_play_turn_by_turn_against_the_server(server, toy, tmp_path):
    """Before any push (the server still serves the toy's weights): greedy calculator trajectories
    through the server equal the built-in engine's KV-cache ones, observations included."""
    from rlvr.rollout.hf_engine import HFEngine
    from rlvr.training.trainer import Trainer

    tokenizer, model = toy
    overrides = [
        "task.params.num_train=16",
        "task.params.num_test=2",
        "env.name=calculator",
        "env.max_turns=3",
        "env.max_turn_tokens=12",
        "env.max_context_tokens=160",
        f"logging.output_dir={tmp_path / 'run'}",
    ]
    trainer = Trainer(load_config("recipes/quickstart.yaml", overrides), log=lambda *a: None)
    problems = list(trainer.task.train)[:6]
    greedy = SamplingParams(n=1, temperature=0.0, seed=0)
    builtin = trainer.episodes.run(HFEngine(model, tokenizer), problems, greedy)
    served = trainer.episodes.run(_engine(server[0], tokenizer, model, tmp_path), problems, greedy)
    assert any(0 in t.mask for t in builtin)
    for a, b in zip(builtin, served, strict=True):
        assert (a.token_ids, a.mask, a.turns, a.truncation) == (b.token_ids, b.mask, b.turns, b.truncation)
        assert b.weight_version == 0 and b.error is None


def test_server_weight_push_changes_samples_and_is_verified(server, toy, tmp_path):
    tokenizer, base = toy
    model = copy.deepcopy(base)
    engine = _engine(server[0], tokenizer, model, tmp_path)
    sampling = SamplingParams(n=4, max_new_tokens=24, temperature=1.0, seed=4)
    before = engine.generate(_prompts(tokenizer), sampling)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(WeightSyncError):
        engine.check_weights(model)  # not pushed yet
    assert engine.load_weights(model) == 1
    engine.check_weights(model)
    after = engine.generate(_prompts(tokenizer), sampling)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    assert _max_diff(model, after, 1.0) < PARITY
    engine.load_weights(base)  # the server back on the toy weights for the next tests
    engine.check_weights(base)


def test_grpo_steps_against_the_server(server, tmp_path):
    from rlvr.training.trainer import Trainer

    config = load_config(
        "recipes/quickstart.yaml",
        [
            "task.params.num_train=32",
            "task.params.num_test=4",
            "rollout.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=32",
            "rollout.engine=vllm",
            f"rollout.server={server[0]}",
            "optim.warmup_steps=0",
            "optim.lr=1e-3",
            "logging.tensorboard=false",
            "logging.sample_every=0",
            "checkpoint.every=0",
            f"logging.output_dir={tmp_path}",
        ],
    )
    trainer = Trainer(config, log=lambda *a: None)
    pushed = 0
    for step in range(3):
        metrics = trainer.train_step(step)
        trainer.step = step + 1
        assert metrics["mismatch/k3_kl"] < 1e-6
        if "vllm/weight_version" in metrics:
            pushed += 1
            assert metrics["vllm/probe_abs_diff"] < 1e-4
    assert pushed >= 1


def test_a_lora_policy_is_served_merged(server, toy, tmp_path):
    pytest.importorskip("peft")
    from rlvr.config import ModelConfig
    from rlvr.training.model import with_lora

    tokenizer, base = toy
    model = with_lora(copy.deepcopy(base), ModelConfig(lora_rank=4), 4, "model.lora_rank", "CAUSAL_LM")
    torch.manual_seed(5)
    with torch.no_grad():  # peft starts B at zero: make the adapter change the outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = _engine(server[0], tokenizer, model, tmp_path)
    with pytest.raises(WeightSyncError):
        engine.check_weights(model)  # the server still holds the base weights
    assert engine.load_weights(model) == 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    engine.check_weights(model)
    out = engine.generate(
        _prompts(tokenizer), SamplingParams(n=4, max_new_tokens=24, temperature=1.0, seed=4)
    )
    assert _max_diff(model, out, 1.0) < PARITY
    engine.load_weights(base)  # the server back on the toy weights for the next tests
    engine.check_weights(base)


def test_a_dead_server_is_an_error_naming_it(server, toy, tmp_path):
    url, process = server
    tokenizer, model = toy
    engine = _engine(url, tokenizer, model, tmp_path, timeout_s=10)
    process.terminate()
    process.wait(timeout=60)
    t0 = time.monotonic()
    with pytest.raises(VLLMServerError, match=url.replace(".", r"\.")):
        engine.generate(_prompts(tokenizer), SamplingParams(n=2, max_new_tokens=8))
    assert time.monotonic() - t0 < 15
    with pytest.raises(VLLMServerError, match="is it running"):
        _engine(url, tokenizer, model, tmp_path, timeout_s=5)
