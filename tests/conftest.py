"""Skips tests marked ``cuda`` where the installed iafsr_sdk._C cannot run CUDA kernels."""
import pytest

from iafsr_sdk._ext import cuda_available, cuda_status


def pytest_collection_modifyitems(config, items):
    cuda_items = [item for item in items if "cuda" in item.keywords]
    if not cuda_items or cuda_available():
        return
    skip = pytest.mark.skip(reason=f"CUDA {cuda_status()}")
    for item in cuda_items:
        item.add_marker(skip)
