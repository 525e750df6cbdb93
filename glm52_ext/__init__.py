"""glm52_ext: GLM-5.2 kernels for Hopper GPUs and their CPU twins.

``import glm52_ext`` is light: it never loads the compiled module. ``glm52_ext.ops`` (the typed
op wrappers) and :func:`build_info` load ``glm52_ext._C``, which registers ``torch.ops.glm52.*``.
``glm52_ext.reference`` holds the plain-PyTorch oracles and needs no compiled code.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["build_info", "ops", "reference"]


def build_info() -> dict[str, Any]:
    """Facts about the compiled extension: CUDA on/off, archs, CUDA/CUTLASS/torch versions."""
    from . import _C

    return dict(_C.build_info())


def __getattr__(name: str):
    if name in ("ops", "reference"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
