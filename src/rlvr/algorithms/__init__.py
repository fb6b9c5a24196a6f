"""The algorithm core: pure tensor functions (advantages, losses, KL, filters) and presets.

No models and no I/O live here: tensors and masks in, tensors and metric dicts out.
"""
