"""Drop-in entry points with the public Python APIs of the libraries serving stacks already call.

``glm52_ext.compat.deep_gemm``, ``glm52_ext.compat.flash_mla`` and ``glm52_ext.compat.flashinfer``
mirror the names, argument order, tuple conventions and output conventions of DeepGEMM, FlashMLA
and FlashInfer for the jobs glm52's ops do, so a serving stack tries these kernels by swapping an
import::

    from glm52_ext.compat import deep_gemm      # instead of: import deep_gemm
    from glm52_ext.compat import flash_mla      # instead of: import flash_mla
    from glm52_ext.compat import flashinfer     # instead of: import flashinfer (sampling)

Layouts are converted once, on the device, with torch ops (no host synchronization unless a
docstring says so). Arguments these ops do not cover (another architecture's recipe, an
accumulator input, dense attention) raise ``ValueError`` naming the argument. The caches are
already byte-compatible: FlashMLA's 656-byte FP8 MLA row and DeepGEMM's 132-byte indexer row.
"""

from __future__ import annotations

import importlib

__all__ = ["deep_gemm", "flash_mla", "flashinfer"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
