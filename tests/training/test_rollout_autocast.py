"""rollout.autocast: a bfloat16 sampler against a float32 trainer. The engine alone autocasts, the
trainer recomputes the old logprobs in float32, and the mismatch metric sees the difference."""

import pytest
import torch

import rlvr.rollout.hf_engine as hf_engine
from rlvr.config import load_config
from rlvr.errors import ConfigError
from rlvr.training.trainer import Trainer

TINY = [
    "task.params.num_train=32",
    "task.params.num_test=4",
    "rollout.prompts_per_step=4",
    "rollout.samples_per_prompt=4",
    "rollout.max_new_tokens=24",
    "optim.warmup_steps=0",
    "logging.tensorboard=false",
    "logging.sample_every=0",
    "checkpoint.every=0",
    "algorithm.mismatch_is=token",
]


def _step(tmp_path, monkeypatch, rollout_autocast):
    config = load_config(
        "recipes/quickstart.yaml",
        [*TINY, f"rollout.autocast={rollout_autocast}", f"logging.output_dir={tmp_path / rollout_autocast}"],
    )
    trainer = Trainer(config, log=lambda *a: None)
    seen = []  # the autocast state whenever the engine draws a token
    sample = hf_engine.sample_next_token

    def recording(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return sample(*args, **kwargs)

    monkeypatch.setattr(hf_engine, "sample_next_token", recording)
    metrics = trainer.train_step(0)
    assert seen and metrics["optim/skipped_updates"] == 0.0
    assert trainer.update_settings.autocast_dtype is None  # the trainer computes in float32
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    return trainer, seen, metrics


def test_bfloat16_rollout_against_float32_training(tmp_path, monkeypatch):
    trainer, seen, metrics = _step(tmp_path, monkeypatch, "bfloat16")
    assert trainer.engine.autocast_dtype == torch.bfloat16
    assert all(enabled and dtype == torch.bfloat16 for enabled, dtype in seen)  # sampled in bfloat16
    assert trainer._needs_recompute()  # also without a correction: old logprobs in float32
    # bfloat16 rounding of the sampler's logits: far above float32's kernel differences.
    assert metrics["mismatch/abs_log_ratio_max"] > 1e-3 and metrics["mismatch/k3_kl"] > 0

    float32, seen32, metrics32 = _step(tmp_path, monkeypatch, "none")
    assert float32.engine.autocast_dtype is None and not any(enabled for enabled, _ in seen32)
    assert metrics32["mismatch/abs_log_ratio_max"] < 1e-4


def test_rollout_autocast_values_and_generate_ahead():
    with pytest.raises(ConfigError, match="rollout.autocast"):
        load_config(None, ["rollout.autocast=float16"])
    with pytest.raises(ConfigError, match="rollout.autocast is bfloat16"):
        load_config(None, ["rollout.autocast=bfloat16", "rollout.generate_ahead=true"])
