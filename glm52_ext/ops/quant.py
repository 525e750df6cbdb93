"""FP8 quantization ops: per-token-group activation quantization and block weight dequantization."""

from __future__ import annotations

import torch

from ._outputs import functional_or_out

from ..reference.quant import ceil_div

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
    return functional_or_out("quant_fp8_per_token_group", (x, group_size, scale_ue8m0), out=out, out_scale=out_scale)


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


# Fake (meta) implementations: shapes and dtypes only, for torch.compile. Out-variants return nothing.


@torch.library.register_fake("glm52::quant_fp8_per_token_group")
def _quant_fp8_per_token_group(x, group_size=128, scale_ue8m0=False):
    torch._check(x.dim() == 2, lambda: f"glm52.quant_fp8_per_token_group: argument 'x' must be 2-D [M, K], got {list(x.shape)}")
    torch._check(group_size > 0, lambda: "glm52.quant_fp8_per_token_group: argument 'group_size' must be positive")
    q = x.new_empty(x.shape, dtype=torch.float8_e4m3fn)
    scale = x.new_empty((x.shape[0], ceil_div(x.shape[1], group_size)), dtype=torch.float32)
    return q, scale


@torch.library.register_fake("glm52::quant_fp8_per_token_group_out")
def _quant_fp8_per_token_group_out(x, group_size, scale_ue8m0, *, out, out_scale):
    return None


@torch.library.register_fake("glm52::dequant_fp8_block")
def _dequant_fp8_block(w, scale_inv, out_dtype=None, block=(128, 128)):
    return w.new_empty(w.shape, dtype=out_dtype or torch.bfloat16)


@torch.library.register_fake("glm52::dequant_fp8_block_out")
def _dequant_fp8_block_out(w, scale_inv, block, *, out):
    return None
