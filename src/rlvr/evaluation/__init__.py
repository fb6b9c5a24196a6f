"""Evaluation: pass@k, maj@k and avg@n over benchmarks, during and after training."""
