"""RMSNorm ops: the plain norm and the norm fused with the residual add (one pass, one launch)."""

from __future__ import annotations

import torch

from ._outputs import functional_or_out

__all__ = ["add_rms_norm", "rms_norm"]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x * rsqrt(mean(x², -1) + eps) * weight``, computed in float32 and rounded once to x's dtype.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., D]`` bfloat16, float16 or float32, contiguous.
    weight : torch.Tensor
        ``[D]``, x's dtype, contiguous.
    eps : float
        ``>= 0``.
    out : torch.Tensor, optional
        Preallocated, x's shape and dtype, contiguous.

    The fp32 sum of squares runs in a fixed order (csrc/norm/rms_norm.h), the same on the CPU and
    the GPU; the scale is ``1 / sqrt(sum / D + eps)`` with a correctly rounded square root. No host
    synchronization.
    """
    if out is None:
        return torch.ops.glm52.rms_norm(x, weight, eps)
    torch.ops.glm52.rms_norm_out(x, weight, eps, out=out)
    return out


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    out: torch.Tensor | None = None,
    sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual add fused with the next RMSNorm: ``sum = x + residual`` (rounded to x's dtype,
    as the unfused add is) and ``out = rms_norm(sum, weight, eps)``; returns ``(out, sum)``.

    ``residual``, ``out`` and ``sum``: x's shape and dtype, contiguous. Otherwise as :func:`rms_norm`.
    """
    return functional_or_out("add_rms_norm", (x, residual, weight, eps), out=out, sum=sum)


# Fake (meta) implementations: shapes and dtypes only, for torch.compile. Out-variants return nothing.


@torch.library.register_fake("glm52::rms_norm")
def _rms_norm(x, weight, eps):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("glm52::rms_norm_out")
def _rms_norm_out(x, weight, eps, *, out):
    return None


@torch.library.register_fake("glm52::add_rms_norm")
def _add_rms_norm(x, residual, weight, eps):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@torch.library.register_fake("glm52::add_rms_norm_out")
def _add_rms_norm_out(x, residual, weight, eps, *, out, sum):
    return None
