"""DeepGEMM's public API (``import deep_gemm``) for the FP8 GEMMs and the indexer logits, on glm52's ops.

Conventions kept from DeepGEMM:

- operands are ``(tensor, scales)`` tuples; the output ``d`` is given and written in place
  (the functions return None, as DeepGEMM's do); ``m_indices`` rows of −1 are padding;
- scales may come in DeepGEMM's layout: MN-major and TMA-aligned (what
  :func:`get_mn_major_tma_aligned_tensor` makes, the layout its quantizers emit), K-major, or
  UE8M0 packed four to an int32 (activation scales). They are converted once, on the device, to
  the K-major fp32 layout glm52's kernels read. The kernels stay K-major on purpose: CUTLASS's
  SM90 grouped mainloop rebuilds each group's scale layout from that group's M, so one padded
  MN-major tensor would be read wrongly after the first K block (DESIGN §7).
- the SM90 recipe only: 1×128 activation scales and 128×128 weight scales (``recipe`` None or
  ``(1, 128, 128)``). SM100 recipes (per-row UE8M0 weight scales, FP4), an accumulator ``c``, an
  fp32 ``d`` and the psum layout raise ``ValueError`` naming the argument.

What differs: N and K must be multiples of 128 on CUDA (the CPU kernels take any); padding rows of
the contiguous layout are zeros (DeepGEMM leaves them unspecified on SM90);
:func:`fp8_mqa_logits` and :func:`fp8_paged_mqa_logits` return contiguous fp32 logits with −inf
outside each row's range whatever ``clean_logits`` says (DeepGEMM returns a view with a padded
row stride; ``glm52_ext.ops.topk_indices`` takes either).
"""

from __future__ import annotations

import torch

from .. import ops

__all__ = [
    "fp8_gemm_nt",
    "fp8_mqa_logits",
    "fp8_paged_mqa_logits",
    "get_col_major_tma_aligned_tensor",
    "get_m_alignment_for_contiguous_layout",
    "get_mk_alignment_for_contiguous_layout",
    "get_mn_major_tma_aligned_tensor",
    "get_paged_mqa_logits_metadata",
    "get_tma_aligned_size",
    "m_grouped_fp8_gemm_nt_contiguous",
    "m_grouped_fp8_gemm_nt_masked",
]

_SPLIT_KV = 256  # DeepGEMM's SM90 paged-logits work unit (tokens per segment)
_BLOCK_KV = 64  # tokens per paged cache block (the indexer cache's block)


def get_m_alignment_for_contiguous_layout() -> int:
    """Row alignment of each expert segment in the contiguous layout (128)."""
    return ops.grouped_gemm_m_alignment()


get_mk_alignment_for_contiguous_layout = get_m_alignment_for_contiguous_layout


def get_tma_aligned_size(x: int, element_size: int) -> int:
    """``x`` rounded up so that ``x * element_size`` is a multiple of 16 bytes (a TMA stride)."""
    alignment = 16 // element_size
    return (x + alignment - 1) // alignment * alignment


def get_mn_major_tma_aligned_tensor(x: torch.Tensor) -> torch.Tensor:
    """The same values in DeepGEMM's scale layout: ``[(G,) MN, K]`` with unit stride along MN and the
    K stride padded to a 16-byte multiple (returned as is when already in that layout)."""
    if x.dim() not in (2, 3):
        raise ValueError(f"get_mn_major_tma_aligned_tensor: argument 'x' must be 2-D or 3-D, got shape {list(x.shape)}")
    batched = x.unsqueeze(0) if x.dim() == 2 else x
    groups, mn, k = batched.shape
    aligned = get_tma_aligned_size(mn, x.element_size())
    if batched.stride(1) == 1 and batched.stride(2) == aligned and (x.dim() == 2 or batched.stride(0) == aligned * k):
        return x
    out = torch.empty_strided((groups, mn, k), (aligned * k, 1, aligned), dtype=x.dtype, device=x.device)
    out.copy_(batched)
    return out.squeeze(0) if x.dim() == 2 else out


get_col_major_tma_aligned_tensor = get_mn_major_tma_aligned_tensor


def _unpack_ue8m0(sf: torch.Tensor, k_blocks: int) -> torch.Tensor:
    """int32 scales holding four UE8M0 exponents each (little-endian, K block 4i+j in byte j) →
    fp32 ``2^(e - 127)`` per K block, K-major."""
    packed = sf.contiguous()  # K-major; reshape(-1) then gives unit strides even for one packed column
    exponents = packed.reshape(-1).view(torch.uint8).view(*sf.shape[:-1], -1)[..., :k_blocks].to(torch.int32)
    bits = torch.where(exponents == 0, 0x00400000, exponents << 23)  # e = 0 is 2^-127, a denormal
    return bits.view(torch.float32)


def _scales(sf: torch.Tensor, rows: int, k: int, granule: int, name: str, fn: str) -> torch.Tensor:
    """DeepGEMM scales (any strides; fp32, or packed UE8M0 for activations) → K-major fp32."""
    k_blocks = (k + 127) // 128
    if sf.dtype == torch.int32:
        if granule != 1:
            raise ValueError(
                f"{fn}: argument '{name}' holds UE8M0-packed int32 scales, an SM100 per-row recipe for weights; "
                "pass float32 128x128 block scales (the SM90 recipe)"
            )
        sf = _unpack_ue8m0(sf, k_blocks)
    elif sf.dtype != torch.float32:
        raise ValueError(f"{fn}: argument '{name}' scales must be float32 (or UE8M0-packed int32), got {sf.dtype}")
    want = (*sf.shape[:-2], (rows + granule - 1) // granule, k_blocks)
    if tuple(sf.shape) != want:
        raise ValueError(f"{fn}: argument '{name}' scales must have shape {list(want)}, got {list(sf.shape)}")
    return sf.contiguous()


def _check_recipe(fn: str, recipe, recipe_a, recipe_b, extra: dict) -> None:
    if recipe is not None and tuple(recipe) != (1, 128, 128):
        raise ValueError(f"{fn}: argument 'recipe' must be None or (1, 128, 128) (the SM90 recipe), got {recipe}")
    if recipe_a is not None and tuple(recipe_a) != (1, 128):
        raise ValueError(f"{fn}: argument 'recipe_a' must be None or (1, 128), got {recipe_a}")
    if recipe_b is not None and tuple(recipe_b) != (128, 128):
        raise ValueError(f"{fn}: argument 'recipe_b' must be None or (128, 128), got {recipe_b}")
    for name, (value, default) in extra.items():
        if value != default:
            raise ValueError(f"{fn}: argument '{name}' is not supported (only {name}={default!r}), got {value!r}")


def _check_d(d: torch.Tensor, shape: tuple, fn: str) -> None:
    if d.dtype != torch.bfloat16:
        raise ValueError(f"{fn}: argument 'd' must be bfloat16 (fp32 outputs are not supported), got {d.dtype}")
    if tuple(d.shape) != tuple(shape):
        raise ValueError(f"{fn}: argument 'd' must have shape {list(shape)}, got {list(d.shape)}")


def _write(d: torch.Tensor, compute) -> None:
    """Run ``compute(out)`` into ``d`` directly when it is contiguous, else into a temporary copied in."""
    if d.is_contiguous():
        compute(d)
    else:
        d.copy_(compute(None))


def fp8_gemm_nt(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    c: torch.Tensor | None = None,
    recipe: tuple[int, int, int] | None = None,
    recipe_a: tuple[int, int] | None = None,
    recipe_b: tuple[int, int] | None = None,
    compiled_dims: str = "nk",
    disable_ue8m0_cast: bool = False,
) -> None:
    """``d = a @ bᵀ``: a = (``[M, K]`` e4m3, ``[M, K/128]`` scales), b = (``[N, K]`` e4m3,
    ``[N/128, K/128]`` scales); ``d [M, N]`` bfloat16, written in place. ``compiled_dims`` is a JIT
    hint (ignored); ``c`` (accumulate) is not supported."""
    fn = "fp8_gemm_nt"
    _check_recipe(fn, recipe, recipe_a, recipe_b, {"c": (c, None)})
    (x, sfa), (w, sfb) = a, b
    m, k = x.shape
    n = w.shape[0]
    _check_d(d, (m, n), fn)
    sfa, sfb = _scales(sfa, m, k, 1, "a", fn), _scales(sfb, n, k, 128, "b", fn)
    _write(d, lambda out: ops.fp8_gemm(x, sfa, w, sfb, out=out))


def m_grouped_fp8_gemm_nt_contiguous(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    grouped_layout: torch.Tensor,
    recipe: tuple[int, int, int] | None = None,
    recipe_a: tuple[int, int] | None = None,
    recipe_b: tuple[int, int] | None = None,
    compiled_dims: str = "nk",
    disable_ue8m0_cast: bool = False,
    use_psum_layout: bool = False,
    ensure_zero_padding: bool = True,
    expected_m_for_psum_layout: int | None = None,
) -> None:
    """Grouped GEMM over the contiguous layout: ``d[r] = a[r] @ b[grouped_layout[r]]ᵀ``.

    a = (``[M, K]`` e4m3, ``[M, K/128]`` scales), b = (``[G, N, K]`` e4m3, ``[G, N/128, K/128]``);
    ``grouped_layout`` (DeepGEMM's ``m_indices``) ``[M]`` int32, −1 on padding rows, each group's
    rows contiguous and aligned to :func:`get_m_alignment_for_contiguous_layout`; ``d [M, N]``
    bfloat16 in place (padding rows become zeros)."""
    fn = "m_grouped_fp8_gemm_nt_contiguous"
    _check_recipe(fn, recipe, recipe_a, recipe_b,
                  {"use_psum_layout": (use_psum_layout, False), "expected_m_for_psum_layout": (expected_m_for_psum_layout, None)})
    (x, sfa), (w, sfb) = a, b
    m, k = x.shape
    n = w.shape[1]
    _check_d(d, (m, n), fn)
    sfa, sfb = _scales(sfa, m, k, 1, "a", fn), _scales(sfb, n, k, 128, "b", fn)
    _write(d, lambda out: ops.fp8_grouped_gemm_contiguous(x, sfa, w, sfb, grouped_layout, out=out))


def m_grouped_fp8_gemm_nt_masked(
    a: tuple[torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor],
    d: torch.Tensor,
    masked_m: torch.Tensor,
    expected_m: int,
    recipe: tuple[int, int, int] | None = None,
    recipe_a: tuple[int, int] | None = None,
    recipe_b: tuple[int, int] | None = None,
    compiled_dims: str = "nk",
    disable_ue8m0_cast: bool = False,
) -> None:
    """Grouped GEMM over the masked (decode) layout: ``d[g, :masked_m[g]] = a[g, :masked_m[g]] @ b[g]ᵀ``.

    a = (``[G, M, K]`` e4m3, ``[G, M, K/128]`` scales), b = (``[G, N, K]``, ``[G, N/128, K/128]``);
    ``masked_m [G]`` int32 read on the device; ``expected_m`` the tile hint (up to 64 the 64-row tile:
    :func:`glm52_ext.ops.grouped_gemm_config`); ``d [G, M, N]`` bfloat16
    in place, rows at or past ``masked_m[g]`` unspecified (as in DeepGEMM)."""
    fn = "m_grouped_fp8_gemm_nt_masked"
    _check_recipe(fn, recipe, recipe_a, recipe_b, {})
    if expected_m <= 0:
        raise ValueError(f"{fn}: argument 'expected_m' must be > 0, got {expected_m}")
    (x, sfa), (w, sfb) = a, b
    groups, m, k = x.shape
    n = w.shape[1]
    _check_d(d, (groups, m, n), fn)
    sfa, sfb = _scales(sfa, m, k, 1, "a", fn), _scales(sfb, n, k, 128, "b", fn)
    _write(d, lambda out: ops.fp8_grouped_gemm_masked(x, sfa, w, sfb, masked_m, expected_m, out=out))


def fp8_mqa_logits(
    q: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor],
    weights: torch.Tensor,
    cu_seq_len_k_start: torch.Tensor,
    cu_seq_len_k_end: torch.Tensor,
    clean_logits: bool = True,
    max_seqlen_k: int = 0,
) -> torch.Tensor:
    """Indexer logits for ragged prefill: ``Σ_h weights[s, h] · ReLU(q[s, h] · k[t]) · k_scale[t]``.

    q ``[S, H, 128]`` e4m3; kv = (``[L, 128]`` e4m3, ``[L]`` fp32 scales); weights ``[S, H]`` fp32;
    ``cu_seq_len_k_start/end [S]`` int32 (row s scores keys ``[ks, ke)``). Returns fp32 ``[S, L]``
    with −inf outside the range; with ``max_seqlen_k > 0`` the compressed form ``[S, max_seqlen_k]``
    whose column j is key ``ks[s] + j`` (valid for ``j < ke - ks``, −inf past it). The compressed
    form is gathered from the full logits: it saves no memory here."""
    fn = "fp8_mqa_logits"
    if max_seqlen_k and clean_logits:
        raise ValueError(f"{fn}: argument 'clean_logits' must be False when max_seqlen_k > 0 (as in DeepGEMM)")
    k8, k_scale = kv
    logits = ops.indexer_logits(q, weights.contiguous(), k8, k_scale, cu_seq_len_k_start, cu_seq_len_k_end)
    if not max_seqlen_k:
        return logits
    columns = cu_seq_len_k_start.long()[:, None] + torch.arange(max_seqlen_k, device=logits.device)
    inside = columns < cu_seq_len_k_end.long()[:, None]
    gathered = logits.gather(1, columns.clamp(0, max(logits.shape[1] - 1, 0))) if logits.shape[1] else logits.new_empty(columns.shape)
    return gathered.masked_fill(~inside, float("-inf"))


def get_paged_mqa_logits_metadata(
    context_lens: torch.Tensor, block_kv: int, num_sms: int, indices: torch.Tensor | None = None
) -> torch.Tensor:
    """DeepGEMM's SM90 schedule for :func:`fp8_paged_mqa_logits`: int32 ``[num_sms + 1, 2]``.

    Each sequence's keys are cut into 256-token segments (``ceil(len / 256)``, len the last query's
    context length), one unit per segment and query atom (two query rows when ``next_n >= 2``); SM i
    starts at unit ``i·q + max(i - (num_sms - r), 0)`` (``q, r = divmod(total, num_sms)``) and its row
    holds (query atom, segment) there; the last row is (``B · atoms``, 0). Computed on the device
    with torch ops (no host sync). glm52's paged logits schedule themselves: the metadata is checked
    for shape and accepted, so a stack that computes it once per step keeps working unchanged.
    """
    fn = "get_paged_mqa_logits_metadata"
    if indices is not None:
        raise ValueError(f"{fn}: argument 'indices' (the varlen layout) is an SM100 feature and is not supported")
    if block_kv != _BLOCK_KV:
        raise ValueError(f"{fn}: argument 'block_kv' must be {_BLOCK_KV}, got {block_kv}")
    if num_sms < 1:
        raise ValueError(f"{fn}: argument 'num_sms' must be >= 1, got {num_sms}")
    if context_lens.dim() not in (1, 2) or context_lens.dtype != torch.int32:
        raise ValueError(f"{fn}: argument 'context_lens' must be int32 [B] or [B, next_n], got "
                         f"{context_lens.dtype} {list(context_lens.shape)}")
    next_n = context_lens.shape[1] if context_lens.dim() == 2 else 1
    lens = (context_lens[:, -1] if context_lens.dim() == 2 else context_lens).long()
    atoms = (next_n + 1) // 2 if next_n >= 2 else 1
    segments = (lens.clamp_min(0) + _SPLIT_KV - 1) // _SPLIT_KV
    ends = torch.cumsum(segments, 0) * atoms  # units before the next sequence
    total = ends[-1] if ends.numel() else torch.zeros((), dtype=torch.long, device=lens.device)
    sm = torch.arange(num_sms, device=lens.device)
    per_sm, rest = total // num_sms, total % num_sms
    starts = sm * per_sm + (sm - (num_sms - rest)).clamp_min(0)
    seq = torch.searchsorted(ends, starts, right=True)
    seq_c = seq.clamp_max(max(lens.numel() - 1, 0))
    before = torch.where(seq > 0, torch.cat([ends.new_zeros(1), ends])[seq], 0)
    own = torch.where(seq < lens.numel(), segments[seq_c] if lens.numel() else seq, 0)
    offset = starts - before
    atom = torch.where(own > 0, offset // own.clamp_min(1), 0)
    split = torch.where(own > 0, offset % own.clamp_min(1), 0)
    rows = torch.stack([seq * atoms + atom, split], dim=1)
    last = torch.zeros(1, 2, dtype=torch.long, device=lens.device)
    last[0, 0] = lens.numel() * atoms  # a fill: no host-to-device copy that would sync the stream
    return torch.cat([rows, last]).to(torch.int32)


def fp8_paged_mqa_logits(
    q: torch.Tensor,
    kv_cache: torch.Tensor,
    weights: torch.Tensor,
    context_lens: torch.Tensor,
    block_table: torch.Tensor,
    schedule_meta: torch.Tensor,
    max_context_len: int,
    clean_logits: bool = False,
    indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indexer logits over the paged indexer cache (decode, MTP verification): fp32 ``[B·next_n, max_context_len]``.

    q ``[B, next_n, H, 128]`` e4m3; ``kv_cache`` uint8 ``[num_blocks, 64, 1, 132]`` (DeepGEMM's
    view of the indexer cache: per block 64×128 e4m3 codes then 64 fp32 scales, the bytes of
    glm52's ``[num_blocks, 8448]``), contiguous; weights ``[B·next_n, H]`` fp32; ``context_lens``
    int32 ``[B]`` (query j of sequence b sees ``t < len - next_n + j + 1``) or ``[B, next_n]`` (each
    query its own length); ``block_table [B, max_blocks]`` int32; ``schedule_meta`` from
    :func:`get_paged_mqa_logits_metadata` (checked for shape). −inf outside each row's range."""
    fn = "fp8_paged_mqa_logits"
    if indices is not None:
        raise ValueError(f"{fn}: argument 'indices' (the varlen layout) is an SM100 feature and is not supported")
    if kv_cache.dim() != 4 or kv_cache.shape[1] != _BLOCK_KV or kv_cache.shape[2] != 1 or kv_cache.shape[3] != 132:
        raise ValueError(f"{fn}: argument 'kv_cache' must be uint8 [num_blocks, 64, 1, 132], got {list(kv_cache.shape)}")
    if not kv_cache.is_contiguous():
        raise ValueError(f"{fn}: argument 'kv_cache' must be contiguous (no padded block stride), got strides {kv_cache.stride()}")
    if schedule_meta.dim() != 2 or schedule_meta.shape[1] != 2 or schedule_meta.dtype != torch.int32:
        raise ValueError(f"{fn}: argument 'schedule_meta' must be int32 [num_sms + 1, 2] "
                         f"(get_paged_mqa_logits_metadata), got {schedule_meta.dtype} {list(schedule_meta.shape)}")
    batch, next_n, heads = q.shape[:3]
    if context_lens.dim() == 1:
        lengths = context_lens[:, None] - next_n + 1 + torch.arange(next_n, device=q.device, dtype=torch.int32)
    else:
        lengths = context_lens
    logits = ops.indexer_logits_paged(
        q, weights.reshape(batch, next_n, heads).contiguous(), kv_cache.view(kv_cache.shape[0], -1),
        block_table.contiguous(), lengths.to(torch.int32).contiguous(), max_context_len,
    )
    return logits.view(batch * next_n, max_context_len)
