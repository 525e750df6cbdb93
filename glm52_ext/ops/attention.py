"""Attention ops (DESIGN §2.1, §3): paged latent and indexer caches, FP8 indexer logits, top-k
selection, sparse MLA prefill and decode.

Paged caches hold 64-token blocks; a *slot* is ``block * 64 + offset``. A slot of −1 — or any slot
outside the cache — means "none": it is never written and never read (the CUDA kernels cannot raise
on data without a host synchronization, so out-of-range slots are skipped on every device alike).

MLA latent cache: uint8 ``[num_blocks, 64, token_bytes]``, one row of ``token_bytes`` per token:

====================  ===========  ==============================================================
format                token_bytes  bytes of one token row
====================  ===========  ==============================================================
BF16                  1152         ``[0, 1024)`` c_kv 512 × bf16 · ``[1024, 1152)`` k_pe 64 × bf16
FP8 (FlashMLA-style)  656          ``[0, 512)`` c_kv 512 × e4m3 · ``[512, 528)`` 4 × fp32 scale
                                   (scale g covers c_kv dims ``[128g, 128g + 128)``) ·
                                   ``[528, 656)`` k_pe 64 × bf16
====================  ===========  ==============================================================

FP8 rows hold ``c_kv[i] ≈ e4m3(code[i]) * scale[i // 128]`` with ``scale = max(amax, 1e-10) / 448``
(the rope dims stay BF16). A BF16 cache viewed as ``cache.view(torch.bfloat16)`` is
``[num_blocks, 64, 576]``.

Indexer key cache: uint8 ``[num_blocks, 64 * 132]`` (132 B per token), block-split so a block's codes
are one dense tile: bytes ``[0, 8192)`` are the codes ``[64, 128]`` e4m3 (token-major), bytes
``[8192, 8448)`` the 64 fp32 scales (``k ≈ code * scale``).

Little-endian byte order throughout (x86 hosts and NVIDIA GPUs). Key rows are read with 16-byte
vector loads, so ``q``, ``q8``, ``kv``, ``k8``, the caches and ``out`` must start 16-byte aligned
(any fresh tensor does).

CUDA kernels (sm_90a): sparse MLA runs on tensor cores (HGMMA; heads padded to 64 inside the
kernel only). Its roundings beyond the fp32 reference: P is rounded to BF16 before P·V (the
softmax sum keeps fp32 P; each output element may move by 2^-8 Σ p|v| / Σ p), and FP8 cache rows
are dequantized to BF16 in shared memory (one extra BF16 rounding of the keys, which large scores
amplify). Indexer logits run on tensor cores (QGMMA) for 32 or 64 heads, where Hopper's FP8 MMA
keeps ~13-14 mantissa bits while accumulating each K step, and on an fp32 SIMT kernel otherwise;
top-k is a one-CTA-per-row radix select (identical on every device for the same logits). Setting
``GLM52_SPARSE_MLA_KERNEL=simt`` or ``GLM52_INDEXER_KERNEL=simt`` selects the fp32 SIMT kernels
instead (a cross-check). No op synchronizes with the host; all are CUDA-graph safe.
"""

from __future__ import annotations

import os

import torch

from ._outputs import functional_or_out

__all__ = [
    "HADAMARD_DIMS",
    "hadamard_rotate",
    "indexer_cache_write",
    "indexer_logits",
    "indexer_logits_paged",
    "indexer_topk",
    "indexer_topk_kernel",
    "indexer_topk_paged",
    "mla_cache_write",
    "sparse_mla_decode",
    "sparse_mla_decode_metadata",
    "sparse_mla_decode_sm_parts",
    "sparse_mla_decode_workspace_bytes",
    "sparse_mla_prefill",
    "topk_indices",
]


def mla_cache_write(kv: torch.Tensor, slots: torch.Tensor, cache: torch.Tensor, *,
                    rope: torch.Tensor | None = None) -> None:
    """Write latent rows ``[c_kv | k_pe]`` into the paged MLA cache, in place, optionally applying
    RoPE to ``k_pe`` on the way (one op instead of rotate, concatenate and write).

    Parameters
    ----------
    kv : torch.Tensor
        ``[T, 576]`` bfloat16, unit stride along the latent dim (any row stride): ``c_kv`` (512,
        after ``kv_a_layernorm``) then ``k_pe`` (64, after RoPE, or before it when ``rope`` is given).
    slots : torch.Tensor
        ``[T]`` int64 slot of each token; −1 or out-of-range slots are skipped.
    cache : torch.Tensor
        uint8 ``[num_blocks, 64, 1152]`` (BF16 format: the bytes of ``kv``) or
        ``[num_blocks, 64, 656]`` (FP8 format: ``c_kv`` quantized per 128 dims), contiguous, or
        FlashMLA's 4-D view of the same bytes ``[num_blocks, 64, 1, 1152 or 656]``; the
        format is the last dim (module docstring). Two tokens with the same slot: the row is unspecified
        (on CUDA it may mix parts of both).
    rope : torch.Tensor, optional
        ``[T, 32, 2]`` float32 contiguous: ``(cos, sin)`` of each interleaved ``k_pe`` pair of each
        token (``torch.view_as_real`` of the model's complex rotation). Pair ``(x0, x1)`` is stored
        as ``(x0 cos − x1 sin, x0 sin + x1 cos)`` computed in fp32 (each product rounded) and
        rounded to bfloat16: what rotating first (``glm52.layers.apply_rope``) stores.
    """
    torch.ops.glm52.mla_cache_write(kv, slots, cache, rope=rope)


def indexer_cache_write(
    k: torch.Tensor, slots: torch.Tensor, cache: torch.Tensor, scale_ue8m0: bool = False, *,
    rope: torch.Tensor | None = None, hadamard: bool = False,
) -> None:
    """Quantize indexer keys (one fp32 scale per token) and write them into the paged indexer cache,
    optionally applying RoPE to the keys' leading dims and the Hadamard rotation first.

    Parameters
    ----------
    k : torch.Tensor
        ``[T, 128]`` bfloat16, float16 or float32 (after ``k_norm``, and after RoPE unless ``rope``
        is given), unit inner stride.
    slots : torch.Tensor
        ``[T]`` int64; −1 or out-of-range slots are skipped.
    cache : torch.Tensor
        uint8 ``[num_blocks, 8448]`` contiguous (module docstring).
    scale_ue8m0 : bool
        Round each scale up to a power of two. The codes and scales equal
        ``quant_fp8_per_token_group(k, 128, scale_ue8m0)`` bit for bit (of the rotated ``k``).
    rope : torch.Tensor, optional
        ``[T, P, 2]`` float32 contiguous, ``1 <= P <= 64``: ``(cos, sin)`` rotating the interleaved
        pairs of ``k``'s first ``2P`` dims (``P = 32`` for GLM-5.x), each rotated value rounded to
        ``k``'s dtype before quantization, as the model's unfused path stores it (see
        :func:`mla_cache_write`).
    hadamard : bool
        Rotate each key (after RoPE) by :func:`hadamard_rotate` in fp32 before quantizing: the codes
        and scales equal ``quant_fp8_per_token_group(hadamard_rotate(k), 128, scale_ue8m0)``.
    """
    torch.ops.glm52.indexer_cache_write(k, slots, cache, scale_ue8m0, rope=rope, hadamard=hadamard)


HADAMARD_DIMS = (32, 64, 128)  # the last-dim sizes hadamard_rotate takes (one warp per row)


def hadamard_rotate(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """The FP8 indexer's rotation: ``x · H_n / sqrt(n)`` over the last dim, in float32.

    ``H_n`` is the Sylvester Hadamard matrix (symmetric, ``H H = n I``), so rotating both the
    queries and the keys leaves every exact score ``q · k`` unchanged while spreading outlier
    channels over all ``n`` dims before e4m3 quantization (the DeepSeek-V3.2 reference's
    ``rotate_activation``; DESIGN §2.1). ``n = 128`` for GLM-5.x.

    Parameters
    ----------
    x : torch.Tensor
        ``[..., n]`` bfloat16, float16 or float32, contiguous; ``n`` is 32, 64 or 128.
    out : torch.Tensor, optional
        Preallocated float32, x's shape, contiguous.

    ``log2(n)`` fp32 butterfly stages (strides 1 to n/2) and one multiply by ``n^-0.5`` in a fixed
    order (csrc/attention/attention_hadamard.h): the CPU and the GPU give the same bits. No host sync.
    """
    if out is None:
        return torch.ops.glm52.hadamard_rotate(x)
    torch.ops.glm52.hadamard_rotate_out(x, out=out)
    return out


def indexer_logits(
    q8: torch.Tensor,
    weights: torch.Tensor,
    k8: torch.Tensor,
    k_scale: torch.Tensor,
    ks: torch.Tensor,
    ke: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lightning-indexer logits for ragged prefill: ``[S, L]`` fp32.

    ``I[s, t] = k_scale[t] * Σ_h weights[s, h] * ReLU(q8[s, h] · k8[t])`` for ``ks[s] <= t < ke[s]``
    (clamped to ``[0, L)``), ``-inf`` elsewhere. Dots of e4m3 values accumulate in fp32 (see the
    module docstring for the tensor-core path).

    Parameters
    ----------
    q8 : torch.Tensor
        ``[S, H, 128]`` float8_e4m3fn, contiguous; H in 1..128 (GLM-5.2: 32).
    weights : torch.Tensor
        ``[S, H]`` float32: the head weights already folded with the q scale and ``128^-0.5``
        (DESIGN §2.1: ``w' = w · s_q · 128^-0.5``).
    k8, k_scale : torch.Tensor
        ``[L, 128]`` float8_e4m3fn and ``[L]`` float32, contiguous.
    ks, ke : torch.Tensor
        ``[S]`` int32: each row's visible key range (causal prefill of a sequence starting at key
        ``b``: ``ks = b``, ``ke = b + position + 1``).
    out : torch.Tensor, optional
        Preallocated ``[S, L]`` float32, contiguous.
    """
    if out is None:
        return torch.ops.glm52.indexer_logits(q8, weights, k8, k_scale, ks, ke)
    torch.ops.glm52.indexer_logits_out(q8, weights, k8, k_scale, ks, ke, out=out)
    return out


def indexer_logits_paged(
    q8: torch.Tensor,
    weights: torch.Tensor,
    cache: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    max_len: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Indexer logits over the paged indexer cache, several query tokens per sequence:
    ``[B, n, max_len]`` fp32.

    Query ``(b, j)`` scores positions ``t < lengths[b, j]`` of sequence ``b`` (slot
    ``block_table[b, t // 64] * 64 + t % 64``) as :func:`indexer_logits` does; positions at or beyond
    the row's length, beyond the table, or in a block outside the cache are ``-inf``. For MTP
    verification of ``n`` tokens whose keys are already cached, ``lengths[b, j] = context_len[b] - n
    + j + 1`` (each query sees itself and the tokens before it).

    Parameters
    ----------
    q8 : torch.Tensor
        ``[B, n, H, 128]`` float8_e4m3fn, contiguous; H in 1..128.
    weights : torch.Tensor
        ``[B, n, H]`` float32 (folded as in :func:`indexer_logits`).
    cache : torch.Tensor
        uint8 ``[num_blocks, 8448]`` indexer cache.
    block_table : torch.Tensor
        ``[B, max_blocks]`` int32 block ids.
    lengths : torch.Tensor
        ``[B, n]`` int32.
    max_len : int
        Width of the output (a static bound on the lengths, so no host synchronization is needed);
        ignored when ``out`` is given (its last dim is used).
    out : torch.Tensor, optional
        Preallocated ``[B, n, max_len]`` float32, contiguous.
    """
    if out is None:
        return torch.ops.glm52.indexer_logits_paged(q8, weights, cache, block_table, lengths, max_len)
    torch.ops.glm52.indexer_logits_paged_out(q8, weights, cache, block_table, lengths, out=out)
    return out


def topk_indices(
    logits: torch.Tensor,
    k: int,
    lengths: torch.Tensor | None = None,
    *,
    row_starts: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The columns of the ``k`` largest finite entries of each row: int32 ``[R, k]``.

    Radix selection (no sort of the row). Row r's candidates are its columns
    ``[row_starts[r], row_starts[r] + lengths[r])`` (start 0 without ``row_starts``; every column
    from the start without ``lengths``; both clamped into the row), and the selected columns are
    reported relative to that start (as vLLM's ``top_k_per_row`` does for ragged prefill: the
    position within the sequence). ``±inf`` and NaN never count. Ties at the k-th value go to the
    lower column. The selected columns are listed in increasing order and the row is padded with
    −1 when it has fewer than ``k`` finite entries. Identical on every device.

    Parameters
    ----------
    logits : torch.Tensor
        ``[R, L]`` float32 with unit column stride and any row stride ``>= L`` (padded rows, e.g.
        DeepGEMM's aligned-stride logits), L up to 2^31 - 1 (1M-column rows are routine).
    k : int
        Number to select (GLM-5.2: 2048), >= 0.
    lengths : torch.Tensor, optional
        ``[R]`` int32 candidate count of each row (for DeepGEMM's ``ks``/``ke``: ``ke - ks``).
    row_starts : torch.Tensor, optional
        ``[R]`` int32 first candidate column of each row (DeepGEMM's ``ks``).
    out : torch.Tensor, optional
        Preallocated ``[R, k]`` int32, contiguous.
    """
    if out is None:
        return torch.ops.glm52.topk_indices(logits, k, lengths, row_starts)
    torch.ops.glm52.topk_indices_out(logits, k, lengths, row_starts, out=out)
    return out


def indexer_topk(
    q8: torch.Tensor,
    weights: torch.Tensor,
    k8: torch.Tensor,
    k_scale: torch.Tensor,
    ks: torch.Tensor,
    ke: torch.Tensor,
    k: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused :func:`indexer_logits` → :func:`topk_indices`: int32 ``[S, k]``, never writing the
    ``[S, L]`` scores.

    Equals ``topk_indices(indexer_logits(q8, weights, k8, k_scale, ks, ke), k)`` on the same device:
    the set of the ``k`` largest finite scores of each row's range ``[ks, ke)``, in increasing column
    order, ties to the lower column, −1 padded (a range shorter than ``k`` takes all its finite
    scores). Key tiles are scored and reduced into a per-row running selection of at most
    ``2k + 256`` candidates; memory is O(S·k) whatever L is. CPU: the scores are bit-identical to
    :func:`indexer_logits`. CUDA (sm_90a): the scoring follows :func:`indexer_logits`'s kernel
    choice, so the result is ``topk_indices`` of that op's logits on the same device: 32 or 64 heads
    score on tensor cores (QGMMA, the logits kernel's tile code; a CTA scores the 64 / H rows of one
    wgmma tile and keeps their selections in shared memory), other head counts and ``GLM52_INDEXER_KERNEL=simt`` with the
    fp32 SIMT code (one CTA per row); :func:`indexer_topk_kernel` says which. No host
    synchronization.

    Parameters
    ----------
    q8, weights, k8, k_scale, ks, ke : torch.Tensor
        As :func:`indexer_logits`.
    k : int
        Number to select, 0..8192 (GLM-5.2: 2048).
    out : torch.Tensor, optional
        Preallocated ``[S, k]`` int32, contiguous.
    """
    if out is None:
        return torch.ops.glm52.indexer_topk(q8, weights, k8, k_scale, ks, ke, k)
    torch.ops.glm52.indexer_topk_out(q8, weights, k8, k_scale, ks, ke, k, out=out)
    return out


def indexer_topk_paged(
    q8: torch.Tensor,
    weights: torch.Tensor,
    cache: torch.Tensor,
    block_table: torch.Tensor,
    lengths: torch.Tensor,
    k: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused :func:`indexer_logits_paged` → :func:`topk_indices`: int32 ``[B, n, k]`` *positions*
    (not slots) of each query row's top ``k`` among positions ``t < lengths[b, j]`` of its sequence.

    Equals ``topk_indices(indexer_logits_paged(..., max_len).view(B * n, -1), k).view(B, n, k)`` for
    any ``max_len >= 64 * max_blocks`` (positions past the block table have no key); see
    :func:`indexer_topk` for the selection rules, memory and devices.

    Parameters
    ----------
    q8, weights, cache, block_table, lengths : torch.Tensor
        As :func:`indexer_logits_paged`.
    k : int
        Number to select, 0..8192.
    out : torch.Tensor, optional
        Preallocated ``[B, n, k]`` int32, contiguous.
    """
    if out is None:
        return torch.ops.glm52.indexer_topk_paged(q8, weights, cache, block_table, lengths, k)
    torch.ops.glm52.indexer_topk_paged_out(q8, weights, cache, block_table, lengths, k, out=out)
    return out


def indexer_topk_kernel(heads: int, k: int, tensor_cores: bool | None = None) -> tuple[str, int, int]:
    """How the CUDA :func:`indexer_topk` / :func:`indexer_topk_paged` run for ``heads`` and ``k``
    (answered on any build, no GPU needed): ``(kernel, rows, smem)``.

    ``kernel`` is ``"qgmma"`` (tensor-core scoring, as :func:`indexer_logits`) for 32 or 64 heads
    when tensor cores are allowed, ``"simt"`` otherwise. ``rows``: query rows whose selection one CTA
    keeps (SIMT: 1; QGMMA: the 64 / heads queries of one wgmma tile when their candidates fit, else 1,
    i.e. 32 heads with ``k > 5600``). ``smem``: dynamic shared bytes per CTA, QGMMA
    ``48 KiB + rows · (2k + 256) · 8``, SIMT ``heads · 512 + (2k + 256) · 8``; always within an sm_90
    CTA's 227 KiB for the accepted heads and k.

    Parameters
    ----------
    heads : int
        Indexer heads, 1..128.
    k : int
        Number to select, 0..8192.
    tensor_cores : bool, optional
        Whether tensor cores are allowed; default: unless ``GLM52_INDEXER_KERNEL=simt`` is set.
    """
    if tensor_cores is None:
        tensor_cores = os.environ.get("GLM52_INDEXER_KERNEL") != "simt"
    kernel, rows, smem = torch.ops.glm52.indexer_topk_kernel(heads, k, tensor_cores)
    return str(kernel), int(rows), int(smem)


def sparse_mla_prefill(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse latent attention (absorbed MLA) over selected rows of ``kv``.

    ``out[s, h] = Σ_t softmax_t(q[s, h] · kv[t] * sm_scale) · kv[t, :512]`` over ``t = indices[s, j]``
    with ``0 <= t < L`` (−1 and out-of-range indices are ignored), accumulated in fp32 with an online
    softmax. ``lse[s, h] = ln Σ_t exp(q[s, h] · kv[t] * sm_scale)`` (natural log, the scale applied):
    what merging partial results needs. A row with no valid index gives ``out = 0``, ``lse = -inf``.
    A repeated index counts as many times as it appears.

    Parameters
    ----------
    q : torch.Tensor
        ``[S, H, 576]`` bfloat16 contiguous: per head ``[W_UKᵀ q_nope (512) | q_pe (64)]``; any H in
        1..128 (tensor-parallel shards), no padding needed.
    kv : torch.Tensor
        ``[L, 576]`` bfloat16 contiguous ``[c_kv | k_pe]`` rows.
    indices : torch.Tensor
        ``[S, k]`` int32 contiguous row ids into ``kv``.
    sm_scale : float
        Softmax scale (GLM-5.2: ``256^-0.5``).
    out, lse : torch.Tensor, optional
        Preallocated ``[S, H, 512]`` bfloat16 and ``[S, H]`` float32, both or neither.

    Returns
    -------
    (out, lse) : ``[S, H, 512]`` bfloat16 and ``[S, H]`` float32.
    """
    return functional_or_out("sparse_mla_prefill", (q, kv, indices, sm_scale), out=out, lse=lse)


def sparse_mla_decode(
    q: torch.Tensor,
    cache: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    *,
    tile_scheduler_metadata: torch.Tensor | None = None,
    num_splits: torch.Tensor | None = None,
    workspace: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse latent attention of ``sq`` new tokens per sequence over the paged MLA cache.

    As :func:`sparse_mla_prefill`, with keys read from ``cache`` (BF16 or FP8 format, dequantized as
    stored) at the *slots* ``indices[b, j, :]`` (−1 or out-of-range slots ignored). Also serves
    chunked prefill against a cached prefix (``B = 1``, ``sq`` = chunk length).

    **Split-KV** (small batches): with a plan from :func:`sparse_mla_decode_metadata`, each batch
    row's top-k is cut into pieces spread over ``num_sm_parts`` parts (CUDA: CTAs per query token
    and 64-head group; CPU: loop tasks), each piece gives a partial (out, lse), and rows in several
    pieces are merged by log-sum-exp. The result equals the unsplit one within fp32 rounding (a
    row in one piece: bit for bit) whatever lengths the plan was made from: they only place the
    cuts (a row's last piece runs to ``k``). The plan is read on the device (no host sync); a
    corrupt plan gives wrong rows but never an out-of-bounds access. Needs
    ``sq * ceil(H / 16) <= 65535``.

    Parameters
    ----------
    q : torch.Tensor
        ``[B, sq, H, 576]`` bfloat16 contiguous, H in 1..128.
    cache : torch.Tensor
        uint8 ``[num_blocks, 64, 1152 or 656]`` (module docstring), or its 4-D view
        ``[num_blocks, 64, 1, 1152 or 656]``.
    indices : torch.Tensor
        ``[B, sq, k]`` int32 slots.
    sm_scale : float
        Softmax scale.
    tile_scheduler_metadata, num_splits : torch.Tensor, optional
        The split plan, int32 ``[num_sm_parts, 8]`` and ``[B + 1]`` (both or neither).
    workspace : torch.Tensor, optional
        uint8 scratch for the partial results, at least :func:`sparse_mla_decode_workspace_bytes`
        bytes, 16-byte aligned (only with a plan; allocated per call when omitted).
    out, lse : torch.Tensor, optional
        Preallocated ``[B, sq, H, 512]`` bfloat16 and ``[B, sq, H]`` float32, both or neither.
    """
    args = (q, cache, indices, sm_scale, tile_scheduler_metadata, num_splits, workspace)
    return functional_or_out("sparse_mla_decode", args, out=out, lse=lse)


def sparse_mla_decode_metadata(row_topk: torch.Tensor, num_sm_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-KV plan of :func:`sparse_mla_decode` (FlashMLA's ``get_mla_metadata`` layout),
    computed on ``row_topk``'s device with no host synchronization (CUDA-graph safe; one small
    kernel), shapes fixed by ``B`` and ``num_sm_parts``. Compute it once per decode step: every layer
    attending with the same row lengths shares it.

    Batch row b costs ``ceil(row_topk[b] / 64)`` blocks plus 5 (its merge); the rows' costs lie end
    to end on one line cut into ``num_sm_parts`` equal spans. Part p's row of the metadata is
    ``[begin_row, begin_block, end_row, end_block, begin_split, 0, 0, 0]``: it runs blocks
    ``[begin_block, ...)`` of ``begin_row`` through blocks ``[..., end_block)`` of ``end_row``
    (inclusive row, exclusive block), its first piece being piece ``begin_split`` of ``begin_row``;
    an empty part has ``begin_row = end_row = B``. Row b is cut into ``num_splits[b + 1] -
    num_splits[b]`` pieces (one plus the part starts strictly inside it); at most
    ``B + num_sm_parts - 1`` pieces in all.

    Parameters
    ----------
    row_topk : torch.Tensor
        ``[B]`` int32: each batch row's expected work, in leading index entries (``k``, or
        ``min(k, context length)`` when the rest is −1 padding); negative counts as 0, more than
        2^20 as 2^20. It balances the parts; it never changes the decode's result.
    num_sm_parts : int
        Parts, 1..65536 (:func:`sparse_mla_decode_sm_parts`).

    Returns
    -------
    (tile_scheduler_metadata, num_splits) : int32 ``[num_sm_parts, 8]`` and ``[B + 1]``.
    """
    return torch.ops.glm52.sparse_mla_decode_metadata(row_topk, num_sm_parts)


@torch.compiler.assume_constant_result  # host arithmetic: a compile-time constant for torch.compile
def sparse_mla_decode_workspace_bytes(batch: int, sq: int, heads: int, num_sm_parts: int) -> int:
    """Bytes of the split decode's ``workspace`` for ``q [batch, sq, heads, 576]``: fp32 partial
    outputs and lse for ``batch + num_sm_parts`` pieces (host arithmetic, no device work)."""
    return torch.ops.glm52.sparse_mla_decode_workspace_bytes(batch, sq, heads, num_sm_parts)


@torch.compiler.assume_constant_result  # a host query: torch.compile takes its value as a constant
def sparse_mla_decode_sm_parts(device: torch.device | str, sq: int, heads: int) -> int:
    """Parts a split plan should use on ``device`` for ``sq`` query tokens of ``heads`` heads: the
    device's parallel units (CUDA: SMs; CPU: intra-op threads) shared among the ``sq * ceil(heads / 64)``
    CTAs each part launches (FlashMLA's rule). Host query only (cached device properties)."""
    device = torch.device(device)
    units = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" \
        else torch.get_num_threads()
    return max(1, units // max(1, sq * -(-heads // 64)))


# Fake (meta) implementations: shapes and dtypes only, for torch.compile. Mutating ops return nothing.


@torch.library.register_fake("glm52::mla_cache_write")
def _mla_cache_write(kv, slots, cache, *, rope=None):
    return None


@torch.library.register_fake("glm52::indexer_cache_write")
def _indexer_cache_write(k, slots, cache, scale_ue8m0=False, *, rope=None, hadamard=False):
    return None


@torch.library.register_fake("glm52::hadamard_rotate")
def _hadamard_rotate(x):
    torch._check(x.dim() >= 1 and x.shape[-1] in HADAMARD_DIMS,
                 lambda: f"glm52.hadamard_rotate: argument 'x' must have shape [..., n] with n 32, 64 or 128, "
                         f"got {list(x.shape)}")
    return x.new_empty(x.shape, dtype=torch.float32)


@torch.library.register_fake("glm52::hadamard_rotate_out")
def _hadamard_rotate_out(x, *, out):
    return None


@torch.library.register_fake("glm52::indexer_logits")
def _indexer_logits(q8, weights, k8, k_scale, ks, ke):
    torch._check(q8.dim() == 3, lambda: f"glm52.indexer_logits: argument 'q8' must be 3-D [S, H, 128], got {list(q8.shape)}")
    return q8.new_empty((q8.shape[0], k8.shape[0]), dtype=torch.float32)


@torch.library.register_fake("glm52::indexer_logits_out")
def _indexer_logits_out(q8, weights, k8, k_scale, ks, ke, *, out):
    return None


@torch.library.register_fake("glm52::indexer_logits_paged")
def _indexer_logits_paged(q8, weights, cache, block_table, lengths, max_len):
    torch._check(q8.dim() == 4, lambda: f"glm52.indexer_logits_paged: argument 'q8' must be 4-D [B, n, H, 128], got {list(q8.shape)}")
    return q8.new_empty((q8.shape[0], q8.shape[1], max_len), dtype=torch.float32)


@torch.library.register_fake("glm52::indexer_logits_paged_out")
def _indexer_logits_paged_out(q8, weights, cache, block_table, lengths, *, out):
    return None


@torch.library.register_fake("glm52::topk_indices")
def _topk_indices(logits, k, lengths=None, row_starts=None):
    torch._check(logits.dim() == 2, lambda: f"glm52.topk_indices: argument 'logits' must be 2-D [R, L], got {list(logits.shape)}")
    return logits.new_empty((logits.shape[0], k), dtype=torch.int32)


@torch.library.register_fake("glm52::topk_indices_out")
def _topk_indices_out(logits, k, lengths, row_starts=None, *, out):
    return None


@torch.library.register_fake("glm52::indexer_topk")
def _indexer_topk(q8, weights, k8, k_scale, ks, ke, k):
    torch._check(q8.dim() == 3, lambda: f"glm52.indexer_topk: argument 'q8' must be 3-D [S, H, 128], got {list(q8.shape)}")
    return q8.new_empty((q8.shape[0], k), dtype=torch.int32)


@torch.library.register_fake("glm52::indexer_topk_out")
def _indexer_topk_out(q8, weights, k8, k_scale, ks, ke, k, *, out):
    return None


@torch.library.register_fake("glm52::indexer_topk_paged")
def _indexer_topk_paged(q8, weights, cache, block_table, lengths, k):
    torch._check(q8.dim() == 4, lambda: f"glm52.indexer_topk_paged: argument 'q8' must be 4-D [B, n, H, 128], got {list(q8.shape)}")
    return q8.new_empty((q8.shape[0], q8.shape[1], k), dtype=torch.int32)


@torch.library.register_fake("glm52::indexer_topk_paged_out")
def _indexer_topk_paged_out(q8, weights, cache, block_table, lengths, k, *, out):
    return None


def _sparse_outputs(q):
    return q.new_empty((*q.shape[:-1], 512)), q.new_empty(q.shape[:-1], dtype=torch.float32)


@torch.library.register_fake("glm52::sparse_mla_prefill")
def _sparse_mla_prefill(q, kv, indices, sm_scale):
    torch._check(q.dim() == 3, lambda: f"glm52.sparse_mla_prefill: argument 'q' must be 3-D [S, H, 576], got {list(q.shape)}")
    return _sparse_outputs(q)


@torch.library.register_fake("glm52::sparse_mla_prefill_out")
def _sparse_mla_prefill_out(q, kv, indices, sm_scale, *, out, lse):
    return None


@torch.library.register_fake("glm52::sparse_mla_decode")
def _sparse_mla_decode(q, cache, indices, sm_scale, tile_scheduler_metadata=None, num_splits=None, workspace=None):
    torch._check(q.dim() == 4, lambda: f"glm52.sparse_mla_decode: argument 'q' must be 4-D [B, sq, H, 576], got {list(q.shape)}")
    return _sparse_outputs(q)


@torch.library.register_fake("glm52::sparse_mla_decode_out")
def _sparse_mla_decode_out(q, cache, indices, sm_scale, tile_scheduler_metadata=None, num_splits=None, workspace=None,
                           *, out, lse):
    return None


@torch.library.register_fake("glm52::sparse_mla_decode_metadata")
def _sparse_mla_decode_metadata(row_topk, num_sm_parts):
    torch._check(row_topk.dim() == 1, lambda: f"glm52.sparse_mla_decode_metadata: argument 'row_topk' must be 1-D [B], got {list(row_topk.shape)}")
    return (row_topk.new_empty((num_sm_parts, 8), dtype=torch.int32),
            row_topk.new_empty((row_topk.shape[0] + 1,), dtype=torch.int32))


@torch.library.register_fake("glm52::sparse_mla_decode_metadata_out")
def _sparse_mla_decode_metadata_out(row_topk, num_sm_parts, *, tile_scheduler_metadata, num_splits):
    return None
