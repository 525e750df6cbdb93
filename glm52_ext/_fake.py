"""Fake (meta) implementations: output shapes and dtypes without computing, so every op traces
under ``torch.compile(fullgraph=True)``. One per functional op; out-variants return nothing."""

from __future__ import annotations

import torch

from .reference import ceil_div


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
