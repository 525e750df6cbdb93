"""Oracles of the FP8 quantization ops."""

from __future__ import annotations

import torch

FP8_E4M3_MAX = 448.0
"""Largest finite ``float8_e4m3fn`` value."""

QUANT_AMAX_EPS = 1e-10
"""Group amax floor: an all-zero group gets scale ``1e-10 / 448`` and zero codes, never NaN."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def round_scale_to_ue8m0(scale: torch.Tensor) -> torch.Tensor:
    """The smallest power of two at or above each (positive, normal) fp32 ``scale``.

    Uses ``frexp`` rather than ``exp2(ceil(log2(s)))``: the log form rounds values just above a
    power of two down to it when the exponent is large.
    """
    mantissa, exponent = torch.frexp(scale)  # scale = mantissa * 2**exponent, mantissa in [0.5, 1)
    exponent = torch.where(mantissa == 0.5, exponent - 1, exponent)
    return torch.ldexp(torch.ones_like(scale), exponent)


def quant_fp8_per_token_group(
    x: torch.Tensor, group_size: int = 128, scale_ue8m0: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize ``x[M, K]`` to e4m3 with one fp32 scale per row per ``group_size`` columns.

    ``scale = max(amax(|x_group|), 1e-10) / 448`` (rounded up to a power of two with
    ``scale_ue8m0``); ``q = e4m3(clamp(x / scale, -448, 448))`` with round-to-nearest-even.
    The last group of a row may be partial.
    """
    m, k = x.shape
    groups = ceil_div(k, group_size)
    xf = x.to(torch.float32)
    pad = groups * group_size - k
    padded = torch.nn.functional.pad(xf, (0, pad)).view(m, groups, group_size)
    amax = padded.abs().amax(dim=-1).clamp_min(QUANT_AMAX_EPS)
    scale = amax / FP8_E4M3_MAX
    if scale_ue8m0:
        scale = round_scale_to_ue8m0(scale)
    expanded = scale.repeat_interleave(group_size, dim=1)[:, :k]
    q = (xf / expanded).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(torch.float8_e4m3fn)
    return q, scale.contiguous()


def dequant_fp8_block(
    w: torch.Tensor,
    scale_inv: torch.Tensor,
    out_dtype: torch.dtype = torch.bfloat16,
    block: tuple[int, int] = (128, 128),
) -> torch.Tensor:
    """``W ≈ W8 ⊙ scale_inv`` per ``block`` tile; ``w`` is ``[N, K]`` or ``[E, N, K]``.

    ``scale_inv`` is ``[ceil(N/bn), ceil(K/bk)]`` (with the same leading ``E``); edge blocks may
    be partial. The product is formed in fp32, then rounded once to ``out_dtype``.
    """
    bn, bk = block
    n, k = w.shape[-2:]
    expanded = scale_inv.to(torch.float32)
    expanded = expanded.repeat_interleave(bn, dim=-2)[..., :n, :]
    expanded = expanded.repeat_interleave(bk, dim=-1)[..., :k]
    return (w.to(torch.float32) * expanded).to(out_dtype)
