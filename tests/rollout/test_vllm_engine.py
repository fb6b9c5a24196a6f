"""rollout.engine 'vllm' on the toy model (head size 32), with vLLM's CPU build.

Marked ``vllm``: not in the default run; ``python -m pytest -m vllm`` in an environment with vLLM
(docs/rollout.md). Skipped when vLLM is not importable.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

from vllm_cases import PARITY, rollout_and_trainer_logprobs  # noqa: E402

from rlvr.config import load_config  # noqa: E402
from rlvr.rollout.hf_engine import HFEngine  # noqa: E402
from rlvr.rollout.types import SamplingParams  # noqa: E402
from rlvr.rollout.vllm_engine import VLLMEngine, WeightSyncError  # noqa: E402
from rlvr.training.model import resolve_model_path  # noqa: E402


@pytest.fixture(scope="module")
def toy():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path("toy")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return path, tokenizer, model


@pytest.fixture(scope="module")
def engine(toy):
    path, tokenizer, model = toy
    return VLLMEngine.for_policy(model, tokenizer, str(path), eager=True)


def _prompts(tokenizer):
    return [
        tokenizer.encode("A conversation. User: 12+34= Assistant: <think>"),
        tokenizer.encode("User: 7+8="),
        tokenizer.encode("3+4"),
    ]


def test_n_samples_grouped_by_prompt_with_logprobs(engine, toy):
    _, tokenizer, _ = toy
    prompts = _prompts(tokenizer)
    out = engine.generate(prompts, SamplingParams(n=4, max_new_tokens=24, temperature=1.0, seed=3))
    assert len(out) == 12
    for i, c in enumerate(out):
        assert c.prompt_index == i // 4 and c.prompt_ids == prompts[i // 4]
        assert 1 <= len(c.token_ids) <= 24 and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0 for lp in c.logprobs)
        assert c.finish_reason in ("stop", "length")
        if c.finish_reason == "length":
            assert len(c.token_ids) == 24
        else:
            assert c.token_ids[-1] in engine.eos_ids  # no stop strings: it stopped on end-of-sequence
        assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True)
        assert c.weight_version == engine.weight_version
    assert len({tuple(c.token_ids) for c in out[:4]}) > 1  # the n samples of a prompt differ


def test_seeds_reproduce_and_differ(engine, toy):
    prompts = _prompts(toy[1])
    sampling = SamplingParams(n=3, max_new_tokens=20, temperature=1.0, seed=11)
    a = engine.generate(prompts, sampling)
    b = engine.generate(prompts, sampling)
    c = engine.generate(prompts, dataclasses.replace(sampling, seed=12))
    assert [x.token_ids for x in a] == [x.token_ids for x in b]
    assert [x.logprobs for x in a] == [x.logprobs for x in b]
    assert [x.token_ids for x in a] != [x.token_ids for x in c]
    # a prompt's samples do not depend on the other prompts of the call
    alone = engine.generate(prompts[1:2], dataclasses.replace(sampling, seed=11 + 3))
    assert [x.token_ids for x in alone] == [x.token_ids for x in a[3:6]]


def test_stop_strings_end_the_completion_and_stay_in_it(engine, toy):
    tokenizer = toy[1]
    prompt = [tokenizer.encode("A conversation. User: 12+34= Assistant: <think>")]
    free = engine.generate(prompt, SamplingParams(n=8, max_new_tokens=48, temperature=1.0, seed=0))
    assert any("</think>" in c.text and not c.text.endswith("</think>") for c in free)
    stopped = engine.generate(
        prompt, SamplingParams(n=8, max_new_tokens=48, temperature=1.0, seed=0, stop_strings=("</think>",))
    )
    hits = [c for c in stopped if "</think>" in c.text]
    assert hits
    for c in hits:
        assert c.finish_reason == "stop" and c.text.endswith("</think>")
        assert tokenizer.decode(c.token_ids).endswith("</think>")  # the completing token is kept
        assert not tokenizer.decode(c.token_ids[:-1]).endswith("</think>")


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_match_the_trainers_recomputation(engine, toy, temperature):
    _, tokenizer, model = toy
    out = engine.generate(
        _prompts(tokenizer), SamplingParams(n=4, max_new_tokens=32, temperature=temperature, seed=5)
    )
    served, trainer = rollout_and_trainer_logprobs(model, out, temperature)
    assert (served - trainer).abs().max().item() < PARITY


def test_greedy_matches_the_builtin_engine(engine, toy):
    _, tokenizer, model = toy
    sampling = SamplingParams(n=1, max_new_tokens=32, temperature=0.0)
    ours = engine.generate(_prompts(tokenizer), sampling)
    builtin = HFEngine(model, tokenizer).generate(_prompts(tokenizer), sampling)
    for a, b in zip(ours, builtin, strict=True):
        assert a.token_ids == b.token_ids and a.finish_reason == b.finish_reason
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < PARITY


def test_weight_push_changes_samples_keeps_parity_and_resets_the_prefix_cache(toy):
    path, tokenizer, base = toy
    model = copy.deepcopy(base)
    engine = VLLMEngine.for_policy(model, tokenizer, str(path), eager=True)
    prompts = _prompts(tokenizer)
    sampling = SamplingParams(n=4, max_new_tokens=24, temperature=1.0, seed=9)
    before = engine.generate(prompts, sampling)  # the prompts' KV now sits in the prefix cache
    engine.check_weights(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(WeightSyncError, match="not the trainer's"):
        engine.check_weights(model)  # not pushed yet
    assert engine.load_weights(model) == 1
    engine.check_weights(model)
    after = engine.generate(prompts, sampling)
    assert all(c.weight_version == 1 for c in after)
    assert [c.token_ids for c in after] != [c.token_ids for c in before]
    served, trainer = rollout_and_trainer_logprobs(
        model, after, 1.0
    )  # the new weights, with no stale prefix KV
    assert (served - trainer).abs().max().item() < PARITY


def test_pushing_named_parameters_only_is_caught(toy):
    """With tied embeddings, named_parameters() leaves vLLM's output layer as it was."""
    path, tokenizer, base = toy
    model = copy.deepcopy(base)
    engine = VLLMEngine.for_policy(model, tokenizer, str(path), eager=True)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    engine.llm.collective_rpc(
        "reload_weights", kwargs={"weights_iterator": iter(dict(model.named_parameters()).items())}
    )
    with pytest.raises(WeightSyncError):
        engine.check_weights(model)


def _trainer_config(tmp_path, *extra):
    return load_config(
        "recipes/quickstart.yaml",
        [
            "task.params.num_train=32",
            "task.params.num_test=4",
            "rollout.prompts_per_step=4",
            "rollout.samples_per_prompt=4",
            "rollout.max_new_tokens=32",
            "rollout.engine=vllm",
            "rollout.vllm_eager=true",
            "optim.warmup_steps=0",
            "optim.lr=1e-3",
            "eval.num_problems=4",
            "logging.tensorboard=false",
            "logging.sample_every=0",
            "checkpoint.every=0",
            f"logging.output_dir={tmp_path}",
            *extra,
        ],
    )


def test_grpo_steps_with_vllm_push_verify_and_log_the_mismatch(tmp_path):
    from rlvr.training.trainer import Trainer

    trainer = Trainer(_trainer_config(tmp_path), log=lambda *a: None)
    updated = 0
    for step in range(4):
        metrics = trainer.train_step(step)
        trainer.step = step + 1
        assert metrics["mismatch/k3_kl"] < 1e-6  # the same weights: rounding only
        assert metrics["mismatch/abs_log_ratio_max"] < PARITY
        if "vllm/weight_version" in metrics:
            updated += 1
            assert metrics["vllm/weight_version"] == updated == trainer.engine.weight_version
            assert metrics["vllm/probe_abs_diff"] < 1e-4
    assert updated >= 1


def test_a_skipped_push_is_caught(tmp_path, monkeypatch):
    from rlvr.training.trainer import Trainer

    trainer = Trainer(_trainer_config(tmp_path, "rollout.vllm_check_every=0"), log=lambda *a: None)
    monkeypatch.setattr(trainer.engine, "load_weights", lambda model: trainer.engine.weight_version)
    with pytest.raises(WeightSyncError, match="skipped"):
        for step in range(6):  # the first step with an update skips its push; the next rollout is stale
            trainer.train_step(step)


def test_a_push_that_does_not_take_is_caught(tmp_path, monkeypatch):
    from rlvr.training.trainer import Trainer

    trainer = Trainer(_trainer_config(tmp_path), log=lambda *a: None)

    def version_only(model):  # counts a push but loads nothing
        trainer.engine.weight_version += 1
        return trainer.engine.weight_version

    monkeypatch.setattr(trainer.engine, "load_weights", version_only)
    with pytest.raises(WeightSyncError, match="not the trainer's"):
        for step in range(6):
            trainer.train_step(step)


def test_a_large_mismatch_at_the_first_update_is_an_error(tmp_path):
    from rlvr.training.trainer import Trainer

    trainer = Trainer(_trainer_config(tmp_path), log=lambda *a: None)
    with torch.no_grad():  # the trainer's weights move, the engine's do not, and no push says so
        for p in trainer.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    with pytest.raises(WeightSyncError, match="first update"):
        trainer.train_step(0)


TASK_YAML = """\
task:
  name: arithmetic
  params: {num_train: 40, num_test: 10, digits: 2, ops: ["+"], seed: 1000}
"""


def test_eval_with_vllm_matches_the_builtin_engine_greedy(tmp_path):
    from rlvr.evaluation.config import load_eval_config
    from rlvr.evaluation.run import run_evaluation

    task = tmp_path / "task.yaml"
    task.write_text(TASK_YAML)
    results = {}
    for engine in ("builtin", "vllm"):
        flags = {
            "model": "toy",
            "benchmarks": ["task"],
            "train_config": str(task),
            "num_problems": 6,
            "max_new_tokens": 40,
            "engine": engine,
            "output_dir": str(tmp_path / engine),
        }
        results[engine] = run_evaluation(load_eval_config(flags=flags), log=lambda *a, **k: None)["toy"]
    builtin, vllm = (results[e]["benchmarks"]["arithmetic"] for e in ("builtin", "vllm"))
    assert vllm == builtin  # greedy: the same completions, the same scores
    assert results["vllm"]["settings"]["engine"] == "vllm"


def test_sample_with_vllm(tmp_path):
    from rlvr.stages.sample import load_sample_config, run_sample

    task = tmp_path / "task.yaml"
    task.write_text(TASK_YAML)
    flags = {
        "model": "toy",
        "train_config": str(task),
        "num_problems": 4,
        "n": 4,
        "max_new_tokens": 32,
        "engine": "vllm",
        "output_dir": str(tmp_path / "out"),
    }
    summary = run_sample(load_sample_config(flags=flags), log=lambda *a, **k: None)
    assert summary["samples"] == 16


def test_resume_pushes_the_checkpoints_weights(tmp_path):
    from rlvr.training.trainer import Trainer

    first = Trainer(_trainer_config(tmp_path), log=lambda *a: None)
    for step in range(2):
        first.train_step(step)
        first.step = step + 1
    first.save()
    resumed = Trainer(_trainer_config(tmp_path), log=lambda *a: None)
    assert resumed.resume()
    assert resumed.engine.weight_version == resumed.vllm_sync.policy_version == 1
    resumed.engine.check_weights(first.model)  # serves the checkpoint's weights, not model.path's
    metrics = resumed.train_step(resumed.step)
    assert metrics["mismatch/k3_kl"] < 1e-6


# --- LoRA: the merged weights are pushed, the trainer's model is left as it was ---------------------


def _lora_policy(base, rank=4):
    """The toy model with rlvr's LoRA adapters (model.lora_*), after one optimizer step on a
    log-likelihood loss (peft starts B at zero: the step makes the adapter change the outputs)."""
    pytest.importorskip("peft")
    from rlvr.config import ModelConfig
    from rlvr.training.model import with_lora

    model = with_lora(copy.deepcopy(base), ModelConfig(lora_rank=rank), rank, "model.lora_rank", "CAUSAL_LM")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    ids = torch.tensor([[(i * 31 + 5) % base.config.vocab_size for i in range(24)]])
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    return model


def test_lora_push_serves_the_merged_weights_and_leaves_the_trainers_model_as_it_was(toy):
    path, tokenizer, base = toy
    model = _lora_policy(base)
    from peft.tuners.lora import LoraLayer

    from rlvr.rollout.vllm_engine import served_state_dict

    state = served_state_dict(model)
    assert list(state) == list(base.state_dict())  # the base model's names, the tied output layer too
    assert "lm_head.weight" in state
    merged = copy.deepcopy(model).merge_and_unload().state_dict()  # peft's own merge, on a copy
    for name, tensor in state.items():
        assert tensor.dtype == merged[name].dtype
        torch.testing.assert_close(tensor, merged[name], rtol=0, atol=1e-6)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(state[q], base.state_dict()[q])  # the trained adapter is in it

    before = {k: v.clone() for k, v in model.state_dict().items()}
    engine = VLLMEngine.for_policy(model, tokenizer, str(path), eager=True)
    with pytest.raises(WeightSyncError, match="not the trainer's"):
        engine.check_weights(model)  # vLLM serves the base model until the push
    assert engine.load_weights(model) == 1
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) and after[k].dtype == before[k].dtype for k in before)
    assert not any(m.merged for m in model.modules() if isinstance(m, LoraLayer))

    assert engine.check_weights(model) < 1e-4
    for temperature in (1.0, 0.7):
        out = engine.generate(
            _prompts(tokenizer), SamplingParams(n=4, max_new_tokens=32, temperature=temperature, seed=5)
        )
        assert all(c.weight_version == 1 for c in out)
        served, trainer = rollout_and_trainer_logprobs(
            model, out, temperature
        )  # the LoRA model's own forward
        assert (served - trainer).abs().max().item() < PARITY


def test_grpo_steps_with_lora_and_vllm(tmp_path, toy):
    pytest.importorskip("peft")
    from rlvr.training.trainer import Trainer

    base = toy[2].state_dict()
    trainer = Trainer(_trainer_config(tmp_path, "model.lora_rank=8", "optim.lr=5e-3"), log=lambda *a: None)
    assert hasattr(trainer.model, "peft_config")
    updated = 0
    for step in range(3):
        metrics = trainer.train_step(step)
        trainer.step = step + 1
        assert metrics["mismatch/k3_kl"] < 1e-6
        assert metrics["mismatch/abs_log_ratio_max"] < PARITY
        if "vllm/weight_version" in metrics:
            updated += 1
            assert metrics["vllm/weight_version"] == updated == trainer.engine.weight_version
            assert metrics["vllm/probe_abs_diff"] < 1e-4
    assert updated >= 1
    # the adapter trained, the frozen base weights did not move (pushes merge into new tensors)
    lora_b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in lora_b)
    for name, tensor in trainer.model.get_base_model().state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, base[name.replace(".base_layer", "")]), name


CALCULATOR = [
    "env.name=calculator",
    "env.params={max_tool_calls: 2}",
    "env.max_turns=3",
    "env.max_turn_tokens=12",
    "env.max_context_tokens=160",
]


def test_environments_play_turn_by_turn_through_vllm_as_on_the_kv_cache(tmp_path, toy):
    """Multi-turn rollouts through vLLM: one generate call per turn on the token stream so far; the
    same greedy trajectories as the built-in engine's KV cache, and the trainer's logprobs."""
    import gc

    from rlvr.training.trainer import Trainer

    path, tokenizer, model = toy
    # vLLM's parallel state is one per process: the engines of earlier tests are shut down first
    # (their finalisers would tear it down under a newer engine)
    gc.collect()
    engine = VLLMEngine.for_policy(model, tokenizer, str(path), eager=True)
    trainer = Trainer(_trainer_config(tmp_path, *CALCULATOR, "rollout.engine=builtin"), log=lambda *a: None)
    problems = list(trainer.task.train)[:8]
    greedy = SamplingParams(n=1, temperature=0.0, seed=0)
    builtin = trainer.episodes.run(HFEngine(model, tokenizer), problems, greedy)
    served = trainer.episodes.run(engine, problems, greedy)
    assert any(0 in t.mask for t in builtin)  # the calculator answered: observations inside the stream
    for a, b in zip(builtin, served, strict=True):
        assert (a.token_ids, a.mask, a.turns, a.truncation) == (b.token_ids, b.mask, b.turns, b.truncation)
        assert b.weight_version == engine.weight_version
    sampled = trainer.episodes.run(engine, problems, SamplingParams(n=2, temperature=1.0, seed=5))
    served, trainer = rollout_and_trainer_logprobs(model, sampled, 1.0)  # observation tokens left out
    assert (served - trainer).abs().max() < PARITY
    engine.close()


def test_grpo_steps_in_an_environment_with_vllm(tmp_path):
    from rlvr.training.trainer import Trainer

    trainer = Trainer(_trainer_config(tmp_path, *CALCULATOR), log=lambda *a: None)
    updated = 0
    for step in range(3):
        metrics = trainer.train_step(step)
        trainer.step = step + 1
        assert metrics["env/turns"] >= 1 and metrics["env/errors"] == 0
        assert metrics["mismatch/abs_log_ratio_max"] < PARITY
        updated += "vllm/weight_version" in metrics
    assert updated >= 1


@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_two_ranks_each_with_its_engine(tmp_path, strategy):
    """torchrun with two ranks, one in-process engine each: the pushes (gathered whole from the
    shards under fsdp2) pass the probe check at every push, the rollout's logprobs are the
    trainer's, and the run leaves its process group cleanly (vLLM's groups are built on it)."""
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "rlvr",
        "train",
        "recipes/quickstart.yaml",
        "rollout.engine=vllm",
        "rollout.vllm_eager=true",
        "rollout.vllm_check_every=1",
        f"parallel.strategy={strategy}",
        "training.steps=3",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "eval.num_problems=8",
        "checkpoint.every=0",
        "logging.sample_every=0",
        "logging.tensorboard=false",
        f"logging.output_dir={out}",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=540, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    probes = [r["vllm/probe_abs_diff"] for r in rows if "vllm/probe_abs_diff" in r]
    assert probes and max(probes) < 1e-4
    assert all(r["mismatch/k3_kl"] < 1e-6 for r in rows if "mismatch/k3_kl" in r)
    assert (out / "final").is_dir()
