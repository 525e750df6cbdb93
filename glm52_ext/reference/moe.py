"""Oracles of the MoE ops: FP8 block-scaled GEMMs, routing, permute/unpermute, SwiGLU + quant.

The GEMMs compute in float64 on the dequantized operands (FP8 values times their scales are
exact in float64), then round once to bfloat16; the kernels' fp32 per-K-block accumulation must
stay within a bfloat16 rounding of that.
"""

from __future__ import annotations

import torch

from .quant import ceil_div, quant_fp8_per_token_group

SCALE_BLOCK = 128
"""The FP8 recipe's block: activations one scale per row per 128 columns, weights per 128x128."""


def permuted_rows_bound(routed: int, num_experts: int, alignment: int) -> int:
    """Rows of :func:`moe_permute`'s output for ``routed = T * top_k`` entries: a bound that needs no
    expert counts, ``round_up(routed + min(num_experts, routed) * (alignment - 1), alignment)``."""
    used = min(num_experts, routed)
    return ceil_div(routed + used * (alignment - 1), alignment) * alignment


def dequant_rows_f64(a: torch.Tensor, a_scale: torch.Tensor) -> torch.Tensor:
    """``a [..., K]`` e4m3 times its per-row, per-128-column scales, in float64."""
    k = a.shape[-1]
    return a.double() * a_scale.double().repeat_interleave(SCALE_BLOCK, dim=-1)[..., :k]


def dequant_blocks_f64(b: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """``b [..., N, K]`` e4m3 times its 128x128 block scales, in float64."""
    n, k = b.shape[-2:]
    s = b_scale.double().repeat_interleave(SCALE_BLOCK, dim=-2)[..., :n, :]
    return b.double() * s.repeat_interleave(SCALE_BLOCK, dim=-1)[..., :k]


def fp8_gemm(a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor) -> torch.Tensor:
    """``out [M, N] = dequant(a) @ dequant(b)ᵀ`` in float64, rounded to bfloat16.

    ``a [M, K]`` e4m3 with ``a_scale [M, ceil(K/128)]``; ``b [N, K]`` e4m3 with
    ``b_scale [ceil(N/128), ceil(K/128)]``.
    """
    return (dequant_rows_f64(a, a_scale) @ dequant_blocks_f64(b, b_scale).T).to(torch.bfloat16)


def fp8_grouped_gemm_contiguous(
    a: torch.Tensor, a_scale: torch.Tensor, b: torch.Tensor, b_scale: torch.Tensor, m_indices: torch.Tensor
) -> torch.Tensor:
    """Row ``r`` of ``out [M, N]`` is ``dequant(a[r]) @ dequant(b[m_indices[r]])ᵀ``; rows with
    ``m_indices == -1`` are zeros. ``b [E, N, K]``, ``b_scale [E, ceil(N/128), ceil(K/128)]``."""
    a64 = dequant_rows_f64(a, a_scale)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.float64)
    for e in torch.unique(m_indices[m_indices >= 0]).tolist():
        rows = m_indices == e
        out[rows] = a64[rows] @ dequant_blocks_f64(b[e], b_scale[e]).T
    return out.to(torch.bfloat16)


def fp8_grouped_gemm_masked(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    masked_m: torch.Tensor,
    expected_m: int,
) -> torch.Tensor:
    """``out[e] = dequant(a[e]) @ dequant(b[e])ᵀ`` for ``a [E, m_max, K]``; rows at or past
    ``masked_m[e]`` are unspecified in the contract (the oracle computes them anyway)."""
    del masked_m, expected_m  # which rows matter is the caller's business; expected_m is a hint
    return (dequant_rows_f64(a, a_scale) @ dequant_blocks_f64(b, b_scale).transpose(-1, -2)).to(torch.bfloat16)


def moe_route(
    logits: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid routing with group-limited top-k (DESIGN §2.1) -> (weights fp32 ``[T, k]``, ids int32 ``[T, k]``).

    ``scores = sigmoid(logits)``; ``choice = scores + bias`` picks the experts (group score = sum
    of a group's two best choices, the ``topk_group`` best groups stay), slot ``j`` holds the
    ``j``-th best choice (ties to the lower id); weights are the unbiased scores, divided by
    ``(their sum + 1e-20)`` when ``renormalize``, times ``routed_scaling_factor``.
    """
    t, e = logits.shape
    scores = torch.sigmoid(logits.float())
    choice = scores + bias.float()
    if n_group > 1:
        grouped = choice.view(t, n_group, e // n_group)
        top2 = _top(grouped.reshape(t * n_group, -1), min(2, e // n_group))
        group_scores = grouped.reshape(t * n_group, -1).gather(1, top2).sum(dim=-1).view(t, n_group)
        keep = _top(group_scores, topk_group)
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~group_mask.repeat_interleave(e // n_group, dim=1), float("-inf"))
    ids = _top(choice, top_k)
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * routed_scaling_factor, ids.to(torch.int32)


def _top(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries per row, ties to the lower index (a stable sort)."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :k]


def moe_permute(
    x: torch.Tensor, x_scale: torch.Tensor | None, ids: torch.Tensor, num_experts: int, alignment: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Expert-sorted, aligned layout of the routed rows -> ``(out, out_scale, m_indices, row_map)``.

    Expert ``e``'s segment starts at ``sum_{e' < e} round_up(count[e'], alignment)`` and holds
    the ``(t, j)`` with ``ids[t, j] == e`` in flattened ``t * top_k + j`` order, then padding up to
    the next multiple of ``alignment``; the output has :func:`permuted_rows_bound` rows, the tail
    is padding too. ``out[row_map[t, j]] = x[t]`` (and ``out_scale`` likewise; ``[rows, 0]`` when
    ``x_scale`` is None); ``m_indices[r]`` is the expert of row ``r`` or -1 for padding (whose
    ``out``/``out_scale`` rows are unspecified: zeros here). Ids outside ``[0, num_experts)`` are
    dropped: ``row_map = -1``.
    """
    t, k = ids.shape
    flat = ids.reshape(-1).long()
    local = (flat >= 0) & (flat < num_experts)
    count = torch.bincount(flat[local], minlength=num_experts)
    padded = (count + alignment - 1) // alignment * alignment
    seg_start = torch.cumsum(padded, 0) - padded
    rows = permuted_rows_bound(t * k, num_experts, alignment)
    row_map = torch.full((t * k,), -1, dtype=torch.int64)
    for e in range(num_experts):
        members = torch.nonzero(local & (flat == e)).flatten()  # ascending: (token, slot) order
        row_map[members] = seg_start[e] + torch.arange(members.numel())
    m_indices = torch.full((rows,), -1, dtype=torch.int32)
    out = torch.zeros(rows, x.shape[1], dtype=x.dtype)
    groups = 0 if x_scale is None else x_scale.shape[1]
    out_scale = torch.zeros(rows, groups, dtype=torch.float32)
    used = row_map >= 0
    token = torch.arange(t * k) // k
    m_indices[row_map[used]] = flat[used].to(torch.int32)
    out[row_map[used]] = x[token[used]]
    if x_scale is not None:
        out_scale[row_map[used]] = x_scale[token[used]]
    return out, out_scale, m_indices, row_map.view(t, k).to(torch.int32)


def moe_permute_masked(
    x: torch.Tensor, x_scale: torch.Tensor | None, ids: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The masked layout ``[E, T, K]`` -> ``(out, out_scale, masked_m, row_map)``: expert ``e``'s
    entries in flattened ``t * top_k + j`` order at rows ``e * T + 0, 1, ...`` of ``out.view(E * T,
    K)``; ``masked_m[e]`` of them; rows past it zeros here (unspecified in the op). Ids outside
    ``[0, num_experts)`` are dropped: ``row_map = -1``."""
    t, k = ids.shape
    flat = ids.reshape(-1).long()
    row_map = torch.full((t * k,), -1, dtype=torch.int64)
    masked_m = torch.zeros(num_experts, dtype=torch.int32)
    for e in range(num_experts):
        members = torch.nonzero(flat == e).flatten()  # ascending: (token, slot) order
        row_map[members] = e * t + torch.arange(members.numel())
        masked_m[e] = members.numel()
    groups = 0 if x_scale is None else x_scale.shape[1]
    out = torch.zeros(num_experts * t, x.shape[1], dtype=x.dtype)
    out_scale = torch.zeros(num_experts * t, groups, dtype=torch.float32)
    used = row_map >= 0
    token = torch.arange(t * k) // k
    out[row_map[used]] = x[token[used]]
    if x_scale is not None:
        out_scale[row_map[used]] = x_scale[token[used]]
    return (out.view(num_experts, t, -1), out_scale.view(num_experts, t, groups), masked_m,
            row_map.view(t, k).to(torch.int32))


def moe_unpermute(y: torch.Tensor, weights: torch.Tensor, row_map: torch.Tensor) -> torch.Tensor:
    """``out[t] = sum_j weights[t, j] * y[row_map[t, j]]`` over ``j = 0 .. k-1`` in that order, in
    float32 (each product rounded, then added), skipping ``row_map == -1``; cast to ``y``'s dtype."""
    t, k = weights.shape
    acc = torch.zeros(t, y.shape[1], dtype=torch.float32)
    for j in range(k):
        used = row_map[:, j] >= 0
        rows = row_map[:, j].clamp_min(0).long()
        term = weights[:, j, None].float() * y[rows].float()
        acc = torch.where(used[:, None], acc + term, acc)
    return acc.to(y.dtype)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[:, :N]) * x[:, N:]`` in float32, as ``gate / (1 + exp(-gate)) * up``."""
    gate, up = x.float().chunk(2, dim=-1)
    return gate / (1.0 + torch.exp(-gate)) * up


def silu_and_mul_quant_fp8(
    x: torch.Tensor, group_size: int = 128, scale_ue8m0: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`silu_and_mul` (float32, not rounded) quantized like
    :func:`~glm52_ext.reference.quant_fp8_per_token_group` -> (e4m3 ``[M, N]``, fp32 ``[M, ceil(N/g)]``)."""
    return quant_fp8_per_token_group(silu_and_mul(x), group_size, scale_ue8m0)
