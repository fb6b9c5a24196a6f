"""Shared test settings: deterministic seeds, one intra-op thread."""

from __future__ import annotations

import pytest
import torch

# The test models are tiny: a second intra-op thread only adds synchronisation, and on a loaded
# 2-core machine it makes small ops orders of magnitude slower.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> None:
    """Every test starts seeded and on one thread, whatever an earlier test set (a trainer or an
    evaluation sets ``torch.set_num_threads`` from its config)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
