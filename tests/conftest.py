"""Shared test fixtures: devices to run on, poisoned outputs, and the `cuda` marker's skip."""

from __future__ import annotations

import pytest
import torch


def cuda_ready() -> tuple[bool, str]:
    import glm52_ext

    if not glm52_ext.build_info()["cuda"]:
        return False, "glm52_ext was built without CUDA kernels"
    if not torch.cuda.is_available():
        return False, "no CUDA device visible"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ready, why = cuda_ready()
    if ready:
        return
    skip = pytest.mark.skip(reason=f"cuda test: {why}")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
"""Parametrize an op test over this: the CPU twin always, the CUDA kernel where it can run."""


def poisoned(shape, dtype, device) -> torch.Tensor:
    """An output buffer every element of which fails a comparison until the op overwrites it."""
    if dtype == torch.float8_e4m3fn:
        return torch.full(shape, 0x7F, dtype=torch.uint8, device=device).view(dtype)  # e4m3 NaN
    if dtype.is_floating_point:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.full(shape, torch.iinfo(dtype).min, dtype=dtype, device=device)
