"""MoE ops: FP8 block-scaled GEMMs (grouped contiguous, grouped masked, dense), routing,
permute/unpermute between token order and the expert-sorted layout, fused SwiGLU + FP8 quant.

The FP8 recipe (DESIGN §3): activations ``[M, K]`` e4m3 with fp32 scales ``[M, ceil(K/128)]``
(one per row per 128 columns, as :func:`~glm52_ext.ops.quant_fp8_per_token_group` makes them);
weights ``[(E,) N, K]`` e4m3 with fp32 block scales ``[(E,) ceil(N/128), ceil(K/128)]`` (the
checkpoint's ``weight_scale_inv``). Per 128-wide K block the kernels form an fp32 dot product,
multiply it by ``a_scale * b_scale`` and add it to an fp32 accumulator (promotion per K block);
the output is bfloat16.
"""

from __future__ import annotations

import torch

from ._outputs import functional_or_out

from ..reference.moe import permuted_rows_bound
from ..reference.quant import ceil_div

__all__ = [
    "fp8_gemm",
    "fp8_moe_experts",
    "fp8_swiglu_mlp",
    "fp8_grouped_gemm_contiguous",
    "fp8_grouped_gemm_masked",
    "fp8_grouped_gemm_workspace_bytes",
    "grouped_gemm_config",
    "grouped_gemm_m_alignment",
    "moe_permute",
    "moe_permute_masked",
    "moe_permute_workspace_bytes",
    "moe_route",
    "moe_unpermute",
    "permuted_rows_bound",
    "silu_and_mul_quant_fp8",
]

_M_ALIGNMENT = 128  # csrc/moe/moe_layout.h kGroupedGemmMAlignment


def grouped_gemm_m_alignment() -> int:
    """Row alignment of each expert segment in :func:`fp8_grouped_gemm_contiguous`'s layout (128: the
    CUDA kernel's M tile). Pass it as ``alignment`` to :func:`moe_permute`."""
    return _M_ALIGNMENT


def grouped_gemm_config(m: int, layout: str = "masked") -> str:
    """The CUDA grouped GEMM configuration a launch takes, e.g. ``"64x128x128_pingpong"``.

    ``layout="masked"`` with ``m = expected_m`` (:func:`fp8_grouped_gemm_masked`) and
    ``layout="dense"`` with ``m`` rows (:func:`fp8_gemm`): up to 64 the 64-row tile (ping-pong
    schedule), beyond it ``"128x128x128_cooperative"``. ``layout="contiguous"`` always takes the
    128-row tile (its segments are aligned to :func:`grouped_gemm_m_alignment` rows). The choice
    never changes results; the CPU kernels have no tiles.
    """
    return torch.ops.glm52.grouped_gemm_config(layout, m)


@torch.compiler.assume_constant_result  # a host query: a compile-time constant for torch.compile
def fp8_grouped_gemm_workspace_bytes(groups: int) -> int:
    """Bytes of device scratch :func:`fp8_grouped_gemm_contiguous`, :func:`fp8_grouped_gemm_masked`
    (``groups`` = experts E) and :func:`fp8_gemm` (``groups = 1``) use at most, whichever
    configuration runs: the size of their optional ``workspace`` (uint8, 16-byte aligned). Without
    one the CUDA kernels take it from the caching allocator; the CPU kernels need none."""
    return torch.ops.glm52.fp8_grouped_gemm_workspace_bytes(groups)


@torch.compiler.assume_constant_result  # a host query: a compile-time constant for torch.compile
def moe_permute_workspace_bytes(routed: int, num_experts: int) -> int:
    """Bytes of device scratch :func:`moe_permute` and :func:`moe_permute_masked` use at most for
    ``routed = T * top_k`` entries over ``num_experts`` experts: the size of their optional
    ``workspace`` (uint8, 16-byte aligned)."""
    return torch.ops.glm52.moe_permute_workspace_bytes(routed, num_experts)


def _compiled_workspace(workspace: torch.Tensor | None, nbytes, like: torch.Tensor) -> torch.Tensor | None:
    """The op's ``workspace``, allocated here while torch.compile traces when the caller left it out:
    inductor cannot lower a mutable optional argument that is None (functionalization gives it no
    base), so a compiled graph allocates the scratch the eager op would take from the allocator.
    ``nbytes``: a callable giving its size."""
    if workspace is None and torch.compiler.is_compiling():
        return torch.empty(nbytes(), dtype=torch.uint8, device=like.device)
    return workspace


def fp8_grouped_gemm_contiguous(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    m_indices: torch.Tensor,
    *,
    workspace: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Grouped expert GEMM over the contiguous (prefill) layout: ``out[r] = a[r] @ b[m_indices[r]]ᵀ``.

    Parameters
    ----------
    a, a_scale : torch.Tensor
        ``[M, K]`` float8_e4m3fn and ``[M, ceil(K/128)]`` float32, contiguous.
    b, b_scale : torch.Tensor
        ``[E, N, K]`` float8_e4m3fn and ``[E, ceil(N/128), ceil(K/128)]`` float32, contiguous.
    m_indices : torch.Tensor
        ``[M]`` int32: the expert of each row, ``-1`` for padding rows. Each expert's rows must be
        contiguous and start at a multiple of :func:`grouped_gemm_m_alignment` (what
        :func:`moe_permute` produces). The CPU kernel checks this and raises; the CUDA kernel
        cannot without a host sync: there an expert's problem spans its first row and its row
        count, ids outside ``[-1, E)`` count as padding, and nothing is accessed out of bounds.
    workspace : torch.Tensor, optional
        Preallocated uint8 scratch of at least :func:`fp8_grouped_gemm_workspace_bytes` ``(E)`` bytes.
    out : torch.Tensor, optional
        Preallocated ``[M, N]`` bfloat16 output.

    Returns
    -------
    torch.Tensor
        ``[M, N]`` bfloat16; padding rows are zeros. The CUDA kernel needs N and K multiples of
        128 (others are rejected); the CPU kernel takes any N and K (partial blocks). No host
        synchronization on CUDA.
    """
    workspace = _compiled_workspace(workspace, lambda: fp8_grouped_gemm_workspace_bytes(b.shape[0]), a)
    if out is None:
        return torch.ops.glm52.fp8_grouped_gemm_contiguous(a, a_scale, b, b_scale, m_indices, workspace)
    torch.ops.glm52.fp8_grouped_gemm_contiguous_out(a, a_scale, b, b_scale, m_indices, workspace, out=out)
    return out


def fp8_grouped_gemm_masked(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    masked_m: torch.Tensor,
    expected_m: int,
    *,
    workspace: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Grouped expert GEMM over the masked (decode) layout: ``out[e, :masked_m[e]] = a[e, :masked_m[e]] @ b[e]ᵀ``.

    Parameters
    ----------
    a, a_scale : torch.Tensor
        ``[E, m_max, K]`` float8_e4m3fn and ``[E, m_max, ceil(K/128)]`` float32, contiguous.
    b, b_scale : torch.Tensor
        ``[E, N, K]`` float8_e4m3fn and ``[E, ceil(N/128), ceil(K/128)]`` float32, contiguous.
    masked_m : torch.Tensor
        ``[E]`` int32 valid rows per expert, read on the device (no host sync, CUDA-graph safe).
        Counts outside ``[0, m_max]`` raise on the CPU and are clamped on CUDA.
    expected_m : int
        A hint of the typical ``masked_m``: it picks the CUDA tile (:func:`grouped_gemm_config`; up
        to 64 the 64-row one). Any value >= 0 gives the same results.
    workspace : torch.Tensor, optional
        Preallocated uint8 scratch of at least :func:`fp8_grouped_gemm_workspace_bytes` ``(E)`` bytes.
    out : torch.Tensor, optional
        Preallocated ``[E, m_max, N]`` bfloat16 output.

    Returns
    -------
    torch.Tensor
        ``[E, m_max, N]`` bfloat16; rows at or past ``masked_m[e]`` are unspecified.
    """
    workspace = _compiled_workspace(workspace, lambda: fp8_grouped_gemm_workspace_bytes(b.shape[0]), a)
    if out is None:
        return torch.ops.glm52.fp8_grouped_gemm_masked(a, a_scale, b, b_scale, masked_m, expected_m, workspace)
    torch.ops.glm52.fp8_grouped_gemm_masked_out(a, a_scale, b, b_scale, masked_m, expected_m, workspace, out=out)
    return out


def fp8_gemm(
    a: torch.Tensor,
    a_scale: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    *,
    workspace: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dense block-scaled GEMM ``out = a @ bᵀ`` (attention projections, shared experts).

    ``a [M, K]`` e4m3 with ``a_scale [M, ceil(K/128)]``; ``b [N, K]`` e4m3 with
    ``b_scale [ceil(N/128), ceil(K/128)]`` (the checkpoint format); returns ``[M, N]`` bfloat16.
    On CUDA it is the grouped kernel with one group (the 64-row tile up to M = 64,
    :func:`grouped_gemm_config`); N and K must be multiples of 128 there. ``workspace``: optional
    uint8 scratch of :func:`fp8_grouped_gemm_workspace_bytes` ``(1)`` bytes.
    """
    workspace = _compiled_workspace(workspace, lambda: fp8_grouped_gemm_workspace_bytes(1), a)
    if out is None:
        return torch.ops.glm52.fp8_gemm(a, a_scale, b, b_scale, workspace)
    torch.ops.glm52.fp8_gemm_out(a, a_scale, b, b_scale, workspace, out=out)
    return out


def moe_route(
    logits: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    routed_scaling_factor: float,
    renormalize: bool,
    *,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid router with group-limited top-k (DESIGN §2.1) in one kernel.

    Parameters
    ----------
    logits : torch.Tensor
        ``[T, E]`` float32 router logits, contiguous, finite; E up to 1024.
    bias : torch.Tensor
        ``[E]`` float32 ``e_score_correction_bias``: steers the selection only.
    top_k, n_group, topk_group : int
        Experts per token (<= 32), groups (dividing E, <= 32) and groups kept; top_k must not exceed
        ``topk_group * E / n_group``.
    routed_scaling_factor : float
        Multiplies the weights (2.5 for GLM-5.2).
    renormalize : bool
        Divide the weights by their sum (+ 1e-20) first (``norm_topk_prob``).
    out : (torch.Tensor, torch.Tensor), optional
        Preallocated ``[T, top_k]`` float32 weights and int32 ids.

    Returns
    -------
    (weights, ids) : tuple of torch.Tensor
        ``[T, top_k]`` float32 and int32; slot j holds the j-th best ``sigmoid(logit) + bias``
        among the kept groups' experts (ties to the lower id; group score = sum of its two best),
        weighted by the unbiased ``sigmoid(logit)``.
    """
    if out is None:
        return torch.ops.glm52.moe_route(logits, bias, top_k, n_group, topk_group, routed_scaling_factor, renormalize)
    weights, ids = out
    torch.ops.glm52.moe_route_out(logits, bias, top_k, n_group, topk_group, routed_scaling_factor, renormalize,
                                  weights=weights, ids=ids)
    return weights, ids


def moe_permute(
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    ids: torch.Tensor,
    num_experts: int,
    alignment: int | None = None,
    *,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows -> the expert-sorted, aligned layout of :func:`fp8_grouped_gemm_contiguous`.

    Parameters
    ----------
    x : torch.Tensor
        ``[T, K]`` float8_e4m3fn, bfloat16, float16 or float32, contiguous.
    x_scale : torch.Tensor or None
        ``[T, G]`` float32 scales moved with their rows (the FP8 payload's), or None.
    ids : torch.Tensor
        ``[T, top_k]`` int32 expert ids (:func:`moe_route`). Ids outside ``[0, num_experts)`` are
        dropped (another rank's experts: subtract the rank's first expert before calling).
    num_experts : int
        Local experts E.
    alignment : int, optional
        Segment alignment; default :func:`grouped_gemm_m_alignment`.
    workspace : torch.Tensor, optional
        Preallocated uint8 scratch of at least :func:`moe_permute_workspace_bytes` ``(T * top_k, num_experts)`` bytes.

    Returns
    -------
    (out, out_scale, m_indices, row_map) : tuple of torch.Tensor
        ``out [R, K]`` (x's dtype), ``out_scale [R, G]`` float32 (``[R, 0]`` without x_scale),
        ``m_indices [R]`` int32 and ``row_map [T, top_k]`` int32, with
        ``R = permuted_rows_bound(T * top_k, num_experts, alignment)`` (a static bound: no host
        sync). Expert e's segment starts at ``sum_{e' < e} round_up(count[e'], alignment)`` and
        holds its ``(t, j)`` in flattened ``t * top_k + j`` order (deterministic), then padding.
        ``out[row_map[t, j]] = x[t]``; ``row_map = -1`` for dropped ids; ``m_indices[r]`` is the
        expert of row r or -1 on padding rows, whose ``out``/``out_scale`` rows are unspecified.
    """
    if alignment is None:
        alignment = grouped_gemm_m_alignment()
    workspace = _compiled_workspace(workspace, lambda: moe_permute_workspace_bytes(ids.numel(), num_experts), x)
    return torch.ops.glm52.moe_permute(x, x_scale, ids, num_experts, alignment, workspace)


def moe_permute_masked(
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    ids: torch.Tensor,
    num_experts: int,
    *,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token rows -> the masked (decode) layout of :func:`fp8_grouped_gemm_masked`, bounded by the
    tokens present: an expert gets at most one row per token (:func:`moe_route` picks distinct
    experts), so ``m_max = T``. The same kernels as :func:`moe_permute` (counts, scan, rank, copy)
    with expert e's segment at ``e * T``.

    Parameters
    ----------
    x, x_scale : torch.Tensor
        ``[T, K]`` rows and their ``[T, G]`` float32 scales (or None), as :func:`moe_permute` takes.
    ids : torch.Tensor
        ``[T, top_k]`` int32 local expert ids, distinct per token (more than T entries for one
        expert raise on the CPU; on CUDA the extra entries are dropped); ids outside
        ``[0, num_experts)`` are dropped.
    num_experts : int
        Local experts E.
    workspace : torch.Tensor, optional
        Preallocated uint8 scratch, as :func:`moe_permute` takes.

    Returns
    -------
    (out, out_scale, masked_m, row_map) : tuple
        ``out [E, T, K]`` (x's dtype), ``out_scale [E, T, G]`` (``[E, T, 0]`` without x_scale), ``masked_m
        [E]`` int32 and ``row_map [T, top_k]`` int32: ``out.view(E * T, K)[row_map[t, j]] = x[t]``,
        expert e's rows first-come in flattened ``t * top_k + j`` order, −1 for dropped ids, so
        :func:`moe_unpermute` over the ``[E * T, N]`` GEMM output combines them. Rows at or past
        ``masked_m[e]`` are unspecified. No host sync (CUDA-graph safe).
    """
    workspace = _compiled_workspace(workspace, lambda: moe_permute_workspace_bytes(ids.numel(), num_experts), x)
    return torch.ops.glm52.moe_permute_masked(x, x_scale, ids, num_experts, workspace)


def moe_unpermute(
    y: torch.Tensor, weights: torch.Tensor, row_map: torch.Tensor, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted combine back to token order: ``out[t] = sum_j weights[t, j] * y[row_map[t, j]]``.

    ``y [R, N]`` bfloat16/float16/float32 (the permuted expert outputs), ``weights [T, k]``
    float32, ``row_map [T, k]`` int32 from :func:`moe_permute`; entries with ``row_map == -1`` are
    skipped (others outside ``[0, R)`` raise on the CPU and are skipped on CUDA). The sum runs in
    float32 over ``j = 0 .. k-1`` in order (each product rounded, then added: deterministic and
    bit-identical across devices) and is cast once to y's dtype: ``[T, N]``.
    """
    if out is None:
        return torch.ops.glm52.moe_unpermute(y, weights, row_map)
    torch.ops.glm52.moe_unpermute_out(y, weights, row_map, out=out)
    return out


def silu_and_mul_quant_fp8(
    x: torch.Tensor,
    group_size: int = 128,
    scale_ue8m0: bool = False,
    *,
    out: torch.Tensor | None = None,
    out_scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU fused with per-token-group FP8 quantization (the down projection's input).

    ``x [M, 2N]`` bfloat16/float16/float32 = ``[gate | up]`` (unit column stride, any row
    stride). ``h = gate / (1 + exp(-gate)) * up`` in float32 (not rounded), then exactly
    :func:`~glm52_ext.ops.quant_fp8_per_token_group`'s math on h: returns e4m3 ``[M, N]`` and
    float32 scales ``[M, ceil(N / group_size)]`` (``scale_ue8m0``: powers of two).
    """
    return functional_or_out("silu_and_mul_quant_fp8", (x, group_size, scale_ue8m0), out=out, out_scale=out_scale)


# Composites: the FP8 MoE layer built from the ops above (what the model's MoE layers run).


MASKED_LAYOUT_MAX_TOKENS = 64
"""Up to this many tokens :func:`fp8_moe_experts` runs the masked (decode) layout: ``E x T`` rows
of which only the routed ones are computed, against the contiguous layout's static bound of
``T * top_k + min(E, T * top_k) * 127`` rows (1,024 rows for one token at top-8)."""


def fp8_moe_experts(
    x: torch.Tensor,
    weights: torch.Tensor,
    ids: torch.Tensor,
    w13: torch.Tensor,
    w13_scale: torch.Tensor,
    w2: torch.Tensor,
    w2_scale: torch.Tensor,
    first_expert: int = 0,
) -> torch.Tensor:
    """This rank's routed-expert sum ``sum_j weights[t, j] * down_e(silu(gate_e x_t) * up_e x_t)``.

    quantize x -> permute (FP8 rows with their scales) -> grouped GEMM (gate+up fused) ->
    SwiGLU + quantize -> grouped GEMM (down) -> weighted combine. No host sync. Up to
    :data:`MASKED_LAYOUT_MAX_TOKENS` tokens the masked layout (:func:`moe_permute_masked`,
    :func:`fp8_grouped_gemm_masked`), beyond it the contiguous one.

    Parameters
    ----------
    x : torch.Tensor
        ``[T, H]`` bfloat16 (the RMSNorm output), H a multiple of 128.
    weights, ids : torch.Tensor
        ``[T, k]`` float32 / int32 from :func:`moe_route` (global expert ids).
    w13, w13_scale : torch.Tensor
        ``[E, 2I, H]`` e4m3 = ``cat([gate_proj, up_proj], dim=1)`` per local expert, and its block
        scales ``[E, 2I/128, H/128]`` (the two checkpoint ``weight_scale_inv`` concatenated the same
        way; I a multiple of 128 so no block straddles gate and up).
    w2, w2_scale : torch.Tensor
        ``[E, H, I]`` e4m3 ``down_proj`` and ``[E, H/128, I/128]``.
    first_expert : int
        Global id of local expert 0 (expert parallelism): other ranks' experts are dropped.

    Returns
    -------
    torch.Tensor
        ``[T, H]`` in x's dtype (the fp32 combine rounded once).
    """
    xq, x_scale = torch.ops.glm52.quant_fp8_per_token_group(x, 128, False)
    num_experts, tokens = w13.shape[0], x.shape[0]
    if first_expert:
        ids = ids - first_expert
    if tokens <= MASKED_LAYOUT_MAX_TOKENS:
        # Decode: the masked layout, E x T rows of which the GEMMs compute only the routed ones.
        a, a_scale, masked_m, row_map = moe_permute_masked(xq, x_scale, ids, num_experts)
        # Rows per expert: at most T (one per token), T * top_k / E on average (the GEMM tile hint).
        expected_m = max(1, min(tokens, tokens * ids.shape[1] // max(num_experts, 1)))
        h = fp8_grouped_gemm_masked(a, a_scale, w13, w13_scale, masked_m, expected_m)
        hq, h_scale = silu_and_mul_quant_fp8(h.view(num_experts * tokens, -1))
        y = fp8_grouped_gemm_masked(hq.view(num_experts, tokens, -1), h_scale.view(num_experts, tokens, -1), w2,
                                    w2_scale, masked_m, expected_m)
        return moe_unpermute(y.view(num_experts * tokens, -1), weights, row_map).to(x.dtype)
    a, a_scale, m_indices, row_map = moe_permute(xq, x_scale, ids, num_experts)
    h = fp8_grouped_gemm_contiguous(a, a_scale, w13, w13_scale, m_indices)
    hq, h_scale = silu_and_mul_quant_fp8(h)
    y = fp8_grouped_gemm_contiguous(hq, h_scale, w2, w2_scale, m_indices)
    return moe_unpermute(y, weights, row_map).to(x.dtype)


def fp8_swiglu_mlp(
    x: torch.Tensor, w13: torch.Tensor, w13_scale: torch.Tensor, w2: torch.Tensor, w2_scale: torch.Tensor
) -> torch.Tensor:
    """Dense SwiGLU on FP8 weights (the shared expert, dense layers): ``down(silu(gate x) * up x)``.

    ``x [T, H]``; ``w13 [2I, H]`` = ``cat([gate_proj, up_proj])`` e4m3 with ``[2I/128, H/128]``
    scales, ``w2 [H, I]`` with ``[H/128, I/128]``. Returns ``[T, H]`` bfloat16.
    """
    xq, x_scale = torch.ops.glm52.quant_fp8_per_token_group(x, 128, False)
    hq, h_scale = silu_and_mul_quant_fp8(fp8_gemm(xq, x_scale, w13, w13_scale))
    return fp8_gemm(hq, h_scale, w2, w2_scale)


# Fake (meta) implementations: shapes and dtypes only, for torch.compile. Out-variants return nothing.


@torch.library.register_fake("glm52::fp8_grouped_gemm_contiguous")
def _fp8_grouped_gemm_contiguous(a, a_scale, b, b_scale, m_indices, workspace=None):
    torch._check(a.dim() == 2 and b.dim() == 3, lambda: "glm52.fp8_grouped_gemm_contiguous: 'a' must be [M, K], 'b' [E, N, K]")
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.bfloat16)


@torch.library.register_fake("glm52::fp8_grouped_gemm_masked")
def _fp8_grouped_gemm_masked(a, a_scale, b, b_scale, masked_m, expected_m, workspace=None):
    torch._check(a.dim() == 3 and b.dim() == 3, lambda: "glm52.fp8_grouped_gemm_masked: 'a' must be [E, m_max, K], 'b' [E, N, K]")
    return a.new_empty((a.shape[0], a.shape[1], b.shape[1]), dtype=torch.bfloat16)


@torch.library.register_fake("glm52::moe_permute_masked")
def _moe_permute_masked(x, x_scale, ids, num_experts, workspace=None):
    tokens = x.shape[0]
    groups = 0 if x_scale is None else x_scale.shape[1]
    return (x.new_empty((num_experts, tokens, x.shape[1])),
            x.new_empty((num_experts, tokens, groups), dtype=torch.float32),
            x.new_empty((num_experts,), dtype=torch.int32), x.new_empty(ids.shape, dtype=torch.int32))


@torch.library.register_fake("glm52::moe_permute_masked_out")
def _moe_permute_masked_out(x, x_scale, ids, num_experts, workspace=None, *, out, out_scale, masked_m, row_map):
    return None


@torch.library.register_fake("glm52::fp8_gemm")
def _fp8_gemm(a, a_scale, b, b_scale, workspace=None):
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "glm52.fp8_gemm: 'a' must be [M, K], 'b' [N, K]")
    return a.new_empty((a.shape[0], b.shape[0]), dtype=torch.bfloat16)


@torch.library.register_fake("glm52::moe_route")
def _moe_route(logits, bias, top_k, n_group, topk_group, routed_scaling_factor, renormalize):
    t = logits.shape[0]
    return logits.new_empty((t, top_k), dtype=torch.float32), logits.new_empty((t, top_k), dtype=torch.int32)


@torch.library.register_fake("glm52::moe_permute")
def _moe_permute(x, x_scale, ids, num_experts, alignment, workspace=None):
    rows = permuted_rows_bound(ids.shape[0] * ids.shape[1], num_experts, alignment)
    groups = 0 if x_scale is None else x_scale.shape[1]
    return (x.new_empty((rows, x.shape[1])), x.new_empty((rows, groups), dtype=torch.float32),
            x.new_empty((rows,), dtype=torch.int32), x.new_empty(ids.shape, dtype=torch.int32))


@torch.library.register_fake("glm52::moe_unpermute")
def _moe_unpermute(y, weights, row_map):
    return y.new_empty((weights.shape[0], y.shape[1]))


@torch.library.register_fake("glm52::silu_and_mul_quant_fp8")
def _silu_and_mul_quant_fp8(x, group_size=128, scale_ue8m0=False):
    n = x.shape[1] // 2
    return (x.new_empty((x.shape[0], n), dtype=torch.float8_e4m3fn),
            x.new_empty((x.shape[0], ceil_div(n, group_size)), dtype=torch.float32))


def _no_output(*args, **kwargs):
    return None


for _name in ("fp8_grouped_gemm_contiguous_out", "fp8_grouped_gemm_masked_out", "fp8_gemm_out", "moe_route_out",
              "moe_permute_out", "moe_unpermute_out", "silu_and_mul_quant_fp8_out"):
    torch.library.register_fake(f"glm52::{_name}")(_no_output)
