import pytest

from rlvr.errors import UnknownNameError
from rlvr.registry import Registry, hyperparameters


def test_registry_lookup_and_nearest_name():
    reg = Registry("advantage estimator")

    @reg.register("grpo")
    def grpo(*, rewards, mask, eps=1e-6):
        return rewards

    assert reg.get("grpo") is grpo
    assert "grpo" in reg and reg.names() == ["grpo"]
    with pytest.raises(
        UnknownNameError, match=r"unknown advantage estimator 'grpoo'; did you mean 'grpo'\?.*valid: grpo"
    ):
        reg.get("grpoo")


def test_registry_refuses_silent_overwrite():
    reg = Registry("loss")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_hyperparameters_skip_tensor_args():
    def fn(*, rewards, mask, eps=0.1, gamma=1.0):
        return None

    assert hyperparameters(fn, ("rewards", "mask")) == {"eps": 0.1, "gamma": 1.0}
