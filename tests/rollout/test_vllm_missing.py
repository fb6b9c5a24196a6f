"""rollout.engine 'vllm' where vLLM is not installed: a ConfigError naming the extra."""

import sys

import pytest

from rlvr.errors import ConfigError
from rlvr.rollout.vllm_engine import import_vllm, vllm_available


def test_missing_vllm_is_a_config_error_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm now raises ImportError
    assert not vllm_available()
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[vllm\]"'):
        import_vllm()


def test_the_trainer_refuses_vllm_without_it(monkeypatch, tmp_path):
    from rlvr.config import load_config
    from rlvr.training.trainer import Trainer

    monkeypatch.setitem(sys.modules, "vllm", None)
    config = load_config(
        "recipes/quickstart.yaml",
        [
            "rollout.engine=vllm",
            "task.params.num_train=8",
            "task.params.num_test=2",
            f"logging.output_dir={tmp_path}",
        ],
    )
    with pytest.raises(ConfigError, match=r"\.\[vllm\]"):
        Trainer(config, log=lambda *a: None)


def test_vllm_engine_settings_are_checked():
    from rlvr.config import load_config

    with pytest.raises(ConfigError, match="generate_ahead"):
        load_config(None, ["rollout.engine=vllm", "rollout.generate_ahead=true"])
    with pytest.raises(ConfigError, match="parallel.cpu_offload.*NCCL"):
        load_config(
            None,
            ["rollout.engine=vllm", "parallel.strategy=fsdp2", "parallel.cpu_offload=true"],
        )
    with pytest.raises(ConfigError, match="vllm_check_every"):
        load_config(None, ["rollout.vllm_check_every=-1"])
    assert load_config(None, []).rollout.engine == "builtin"
    # LoRA is served merged (docs/rollout.md), no longer refused
    assert load_config(None, ["rollout.engine=vllm", "model.lora_rank=8"]).model.lora_rank == 8
