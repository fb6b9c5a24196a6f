"""Mixed precision (model.autocast): float32 weights, forward passes under torch.autocast in bfloat16.

On CPU, torch.autocast runs bfloat16 as well, so the mechanics are tested here; the GPU test
repeats the training run on CUDA where one is available."""

import pytest
import torch

from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.rollout.hf_engine import HFEngine
from rlvr.rollout.types import SamplingParams
from rlvr.training.batch import micro_batches
from rlvr.training.model import load_policy, load_tokenizer, weights_dtype
from rlvr.training.trainer import Trainer
from rlvr.training.update import response_logits

TINY = [
    "task.params.num_train=32",
    "task.params.num_test=4",
    "rollout.prompts_per_step=8",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=48",
    "optim.warmup_steps=0",
    "logging.tensorboard=false",
    "logging.sample_every=0",
    "checkpoint.every=0",
]


def _trainer(tmp_path, *extra):
    config = load_config(
        "recipes/quickstart.yaml",
        [*TINY, "model.autocast=bfloat16", f"logging.output_dir={tmp_path}", *extra],
    )
    return Trainer(config, log=lambda *a: None)


def _step_checks(trainer):
    for step in range(8):  # until a step has a group with a reward spread, i.e. a gradient
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        metrics = trainer.train_step(step)
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # weights stay float32
        assert metrics["optim/skipped_updates"] == 0.0
        assert torch.isfinite(torch.tensor(metrics["loss/policy"]))
        if metrics["advantage/zero_std_groups"] < metrics["advantage/groups"]:
            moved = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
            assert moved  # the update went through
            assert trainer._needs_recompute()  # bfloat16 forwards: old logprobs are recomputed
            return
    pytest.fail("no step had a group with different rewards")


def test_autocast_training_step_on_cpu(tmp_path):
    _step_checks(_trainer(tmp_path))


def test_autocast_logits_are_float32_and_close_to_full_precision(tmp_path):
    trainer = _trainer(tmp_path)
    rollouts = trainer.collector.collect(0)
    batch = trainer._make_batch(rollouts.groups)
    mb = next(micro_batches(batch, range(batch.size), 4096))
    with torch.no_grad():
        half = response_logits(trainer.model, mb, torch.bfloat16)
        full = response_logits(trainer.model, mb, None)
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)  # computed in bfloat16
    assert torch.allclose(half, full, atol=0.1, rtol=0.05)


def test_autocast_engine_samples_valid_completions(tmp_path):
    trainer = _trainer(tmp_path)
    assert trainer.engine.autocast_dtype == torch.bfloat16
    prompts = [trainer.train_prompts[0], trainer.train_prompts[1]]
    completions = trainer.engine.generate(
        prompts, SamplingParams(n=3, max_new_tokens=12, temperature=1.0, seed=0)
    )
    assert len(completions) == 6
    for c in completions:
        assert 1 <= len(c.token_ids) <= 12 and len(c.logprobs) == len(c.token_ids)
        assert all(lp <= 0 for lp in c.logprobs)


def test_autocast_needs_float32_weights():
    config = load_config(None, ["model.autocast=bfloat16", "model.dtype=bfloat16"])
    with pytest.raises(ConfigError, match="'model.autocast' \\(bfloat16\\) keeps float32 weights"):
        weights_dtype(config.model, torch.device("cpu"))
    assert (
        weights_dtype(load_config(None, ["model.autocast=bfloat16"]).model, torch.device("cuda"))
        == torch.float32
    )
    with pytest.raises(ConfigError, match="model.autocast"):
        load_config(None, ["model.autocast=float8"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_autocast_training_step_on_gpu(tmp_path):
    trainer = _trainer(tmp_path, "training.device=cuda")
    assert next(trainer.model.parameters()).is_cuda
    _step_checks(trainer)


def test_engine_without_autocast_is_unchanged():
    config = load_config("recipes/quickstart.yaml", TINY)
    model = load_policy(config.model, torch.device("cpu"))
    engine = HFEngine(model, load_tokenizer(config.model))
    assert engine.autocast_dtype is None
