"""Typed wrappers over ``torch.ops.glm52.*``.

Each op runs on the device of its inputs: CUDA kernels for CUDA tensors (when the extension was
built with CUDA), C++ CPU kernels otherwise. All ops trace under ``torch.compile(fullgraph=True)``
and are safe in CUDA graphs unless their docstring says otherwise. Bad arguments raise
``RuntimeError`` naming the argument and what was expected.
"""

from __future__ import annotations

import torch

from . import _C  # noqa: F401  (registers torch.ops.glm52.*)
from . import _fake  # noqa: F401  (shape functions for torch.compile)

__all__ = ["quant_fp8_per_token_group", "dequant_fp8_block"]


def quant_fp8_per_token_group(
    x: torch.Tensor,
    group_size: int = 128,
    scale_ue8m0: bool = False,
    *,
    out: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize activations to FP8 e4m3 with one scale per token per ``group_size`` columns.

    Parameters
    ----------
    x : torch.Tensor
        ``[M, K]`` bfloat16, float16 or float32; unit stride along K (any row stride). Values are
        expected finite.
    group_size : int
        Columns per scale (128 in the GLM-5.2 recipe). K need not be a multiple: the last group
        of each row is then partial.
    scale_ue8m0 : bool
        Round each scale up to a power of two (the UE8M0 format DeepGEMM-style kernels take).
    out, out_scale : torch.Tensor, optional
        Preallocated outputs (``[M, K]`` float8_e4m3fn and ``[M, ceil(K / group_size)]`` float32,
        contiguous, on x's device), e.g. for CUDA graphs.

    Returns
    -------
    (q, scale) : tuple of torch.Tensor
        ``q`` ``[M, K]`` float8_e4m3fn and ``scale`` ``[M, ceil(K / group_size)]`` float32 with
        ``x ≈ q * scale`` per group: ``scale = max(amax, 1e-10) / 448`` and
        ``q = e4m3_rne(clamp(x / scale, -448, 448))``, bit-identical to
        :func:`glm52_ext.reference.quant_fp8_per_token_group` on every device.
    """
    if out is None and out_scale is None:
        return torch.ops.glm52.quant_fp8_per_token_group(x, group_size, scale_ue8m0)
    if out is None or out_scale is None:
        raise ValueError("quant_fp8_per_token_group: pass both 'out' and 'out_scale', or neither")
    torch.ops.glm52.quant_fp8_per_token_group_out(x, group_size, scale_ue8m0, out=out, out_scale=out_scale)
    return out, out_scale


def dequant_fp8_block(
    w: torch.Tensor,
    scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    block: tuple[int, int] = (128, 128),
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dequantize a block-scaled FP8 weight (the checkpoint format, DESIGN §2.2).

    Parameters
    ----------
    w : torch.Tensor
        ``[N, K]`` or ``[E, N, K]`` float8_e4m3fn, contiguous (``[out, in]`` as stored).
    scale_inv : torch.Tensor
        ``[(E,) ceil(N / block[0]), ceil(K / block[1])]`` float32, contiguous: the checkpoint's
        ``<name>_scale_inv``. Edge blocks may be partial.
    out_dtype : torch.dtype
        bfloat16 (default), float16 or float32.
    block : (int, int)
        Block shape ``(rows, cols)``; GLM-5.2 uses (128, 128).
    out : torch.Tensor, optional
        Preallocated output, same shape as ``w``, dtype ``out_dtype``, contiguous.

    Returns
    -------
    torch.Tensor
        ``w * scale_inv`` per block, formed in float32 and rounded once to ``out_dtype``.
    """
    if out is None:
        return torch.ops.glm52.dequant_fp8_block(w, scale_inv, out_dtype, list(block))
    if out.dtype != out_dtype:
        raise ValueError(f"dequant_fp8_block: 'out' has dtype {out.dtype}, but out_dtype is {out_dtype}")
    torch.ops.glm52.dequant_fp8_block_out(w, scale_inv, list(block), out=out)
    return out
