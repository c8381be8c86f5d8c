"""Suite-wide settings: markers that skip without a GPU or a cluster."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs CUDA")
    skip_e2e = pytest.mark.skip(reason="needs a real cluster: set KUBECONFIG")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if "e2e" in item.keywords and not os.environ.get("KUBECONFIG"):
            item.add_marker(skip_e2e)
