"""The training engine: rollouts, updates, checkpoints and resume."""
