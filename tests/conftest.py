"""Test-wide settings: poisoned outputs, and the backends this machine can run."""
import os

# Every tensor a kernel is about to fill starts as NaN, so an unwritten entry fails a test.
os.environ.setdefault("GATEDRNN_POISON_OUTPUTS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
