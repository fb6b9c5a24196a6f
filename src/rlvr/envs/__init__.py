"""Environments for multi-turn rollouts (reset/step, Gymnasium-style); see docs/agents.md."""

from rlvr.envs.base import ENVS, Environment, StepResult, env_factory

__all__ = ["ENVS", "Environment", "StepResult", "env_factory"]
