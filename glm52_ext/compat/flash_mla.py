"""FlashMLA's public API (``import flash_mla``) for sparse MLA, on glm52's ops.

Covered: :func:`flash_mla_sparse_fwd` (sparse prefill), and the sparse decode path of
:func:`flash_mla_with_kvcache` over the FP8 656-byte cache in FlashMLA's 4-D view
``[num_blocks, 64, 1, 656]`` (glm52's ``[num_blocks, 64, 656]`` works too, and so does the BF16
1152-byte cache with ``is_fp8_kvcache=False``), with its scheduler metadata from
:func:`get_mla_metadata`. Conventions kept from FlashMLA: ``h_kv = 1`` dimensions on ``kv`` and
``indices``; −1 or ``>= s_kv`` indices are ignored; a query with nothing to attend to gets
``out = 0`` and ``lse = +inf`` (``max_logits = -inf``); decode returns ``lse`` as
``[b, h_q, s_q]``; ``attn_sink`` scales the output by ``exp(lse) / (exp(lse) + exp(sink))``;
``topk_length`` keeps only each row's leftmost indices; ``softmax_scale`` defaults to
``d_qk^-0.5`` (576^-0.5: pass GLM-5.2's 256^-0.5 explicitly).

Not covered (``ValueError`` naming the argument): dense decode (``indices=None``), ``causal``,
``extra_k_cache`` / ``extra_indices_in_kvcache``, ``d_v`` other than 512. ``max_logits`` is
computed by an extra pass in PyTorch (glm52's kernel returns only ``lse``); it costs a gather of the
selected keys per chunk of queries.
"""

from __future__ import annotations

import dataclasses

import torch

from .. import ops

__all__ = ["FlashMLASchedMeta", "flash_mla_sparse_fwd", "flash_mla_with_kvcache", "get_mla_metadata", "plan_sparse_decode"]

TILE_SCHEDULER_METADATA_SIZE = 8
"""Ints per SM partition in the tile scheduler metadata (FlashMLA's ``TileSchedulerMetaDataSize``)."""
_LATENT, _VALUE = 576, 512


@dataclasses.dataclass
class FlashMLASchedMeta:
    """FlashMLA's scheduler state: empty from :func:`get_mla_metadata` (), planned by the first
    :func:`flash_mla_with_kvcache` call from its shapes and ``topk_length`` (as FlashMLA does), then
    reused while the shapes stay the same."""

    have_initialized: bool = False
    config: tuple | None = None
    tile_scheduler_metadata: torch.Tensor | None = None  # [num_sm_parts, 8] int32
    num_splits: torch.Tensor | None = None  # [b + 1] int32


def plan_sparse_decode(row_topk: torch.Tensor, num_sm_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split each batch row's top-k over ``num_sm_parts`` partitions in FlashMLA's metadata layout:
    ``glm52_ext.ops.sparse_mla_decode_metadata`` (its docstring has the layout), on the device with
    no host synchronization.

    Parameters
    ----------
    row_topk : torch.Tensor
        ``[b]`` int32 top-k entries of each batch row (``topk`` or ``topk_length``).
    num_sm_parts : int
        Partitions (CTAs per query token and 64-head group of the split-KV decode).

    Returns
    -------
    (tile_scheduler_metadata, num_splits) : int32 ``[num_sm_parts, 8]`` and ``[b + 1]``.
    """
    return ops.sparse_mla_decode_metadata(row_topk.to(torch.int32).contiguous(), num_sm_parts)


def _num_sm_parts(device: torch.device, q_tokens_per_head_k: int, heads_q: int | None) -> int:
    """Partitions for ``q_tokens_per_head_k = s_q * h_q`` query rows: glm52's split decode runs
    ``s_q * ceil(h_q / 64)`` CTAs per partition (without ``h_q``, FlashMLA's ``ceil(rows / 64)``)."""
    if heads_q:
        return ops.sparse_mla_decode_sm_parts(device, max(1, q_tokens_per_head_k // heads_q), heads_q)
    return ops.sparse_mla_decode_sm_parts(device, max(1, -(-q_tokens_per_head_k // 64)), 64)


def get_mla_metadata(
    cache_seqlens: torch.Tensor | None = None,
    num_q_tokens_per_head_k: int | None = None,
    num_heads_k: int = 1,
    num_heads_q: int | None = None,
    is_fp8_kvcache: bool = False,
    topk: int | None = None,
    *args,
    **kwargs,
):
    """Scheduler metadata for :func:`flash_mla_with_kvcache`, in either of FlashMLA's two interfaces.

    - No arguments (FlashMLA ≥ 2026): returns ``(FlashMLASchedMeta(), None)``; the plan is made by
      the first decode call (which knows ``topk_length``).
    - ``(cache_seqlens, num_q_tokens_per_head_k, num_heads_k, num_heads_q, is_fp8_kvcache, topk)``
      (the sparse form of the 2025 interface): returns the plan now, ``(tile_scheduler_metadata
      [num_sm_parts, 8], num_splits [b + 1])`` int32 on ``cache_seqlens``' device, every row
      costing ``topk`` (:func:`plan_sparse_decode`). ``topk`` is required (only sparse decode is
      covered). The plan drives glm52's split-KV decode in :func:`flash_mla_with_kvcache`.
    """
    if cache_seqlens is None:
        return FlashMLASchedMeta(), None
    if topk is None:
        raise ValueError("get_mla_metadata: argument 'topk' is required: only the sparse decode path is covered")
    if num_q_tokens_per_head_k is None:
        raise ValueError("get_mla_metadata: argument 'num_q_tokens_per_head_k' is required with 'cache_seqlens'")
    row_topk = torch.full_like(cache_seqlens, topk, dtype=torch.int32)
    return plan_sparse_decode(row_topk, _num_sm_parts(cache_seqlens.device, num_q_tokens_per_head_k, num_heads_q))


def _lse_flash(lse: torch.Tensor) -> torch.Tensor:
    """glm52's empty-row lse (−inf) → FlashMLA's (+inf)."""
    return lse.masked_fill(lse == float("-inf"), float("inf"))


def _apply_sink(out: torch.Tensor, lse: torch.Tensor, attn_sink: torch.Tensor | None) -> torch.Tensor:
    """``out · exp(lse) / (exp(lse) + exp(sink))`` per head (sink ``[h_q]`` on the last lse dim)."""
    if attn_sink is None:
        return out
    factor = torch.sigmoid(lse - attn_sink.float())  # = 1 / (1 + exp(sink - lse))
    factor = torch.where(torch.isneginf(lse), 0.0, torch.nan_to_num(factor, nan=0.0))
    return (out.float() * factor.unsqueeze(-1)).to(out.dtype)


def _mask_topk_length(indices: torch.Tensor, topk_length: torch.Tensor | None) -> torch.Tensor:
    if topk_length is None:
        return indices
    keep = torch.arange(indices.shape[-1], device=indices.device) < topk_length.view(-1, *([1] * (indices.dim() - 1)))
    return torch.where(keep, indices, -1)


def _max_logits(q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float) -> torch.Tensor:
    """``max_j q · kv[indices[s, j]] · sm_scale`` over valid indices (−inf when none), fp32, in query
    chunks so the gathered keys stay near 256 MB."""
    s_q, h_q, _ = q.shape
    topk = indices.shape[-1]
    out = torch.full((s_q, h_q), float("-inf"), device=q.device)
    chunk = max(1, (256 << 20) // max(1, topk * _LATENT * 4))
    for s0 in range(0, s_q, chunk):
        idx = indices[s0 : s0 + chunk]
        valid = (idx >= 0) & (idx < kv.shape[0])
        keys = kv[idx.clamp(0, max(kv.shape[0] - 1, 0)).long()].float() if kv.shape[0] else kv.new_zeros(*idx.shape, _LATENT).float()
        scores = torch.einsum("shd,skd->shk", q[s0 : s0 + chunk].float(), keys) * sm_scale
        scores = scores.masked_fill(~valid.unsqueeze(1), float("-inf"))
        if topk:
            out[s0 : s0 + chunk] = scores.amax(dim=-1)
    return out


def flash_mla_sparse_fwd(
    q: torch.Tensor,
    kv: torch.Tensor,
    indices: torch.Tensor,
    sm_scale: float,
    d_v: int = 512,
    attn_sink: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse attention prefill (FlashMLA's shapes): returns ``(out, max_logits, lse)``.

    Parameters
    ----------
    q : torch.Tensor
        ``[s_q, h_q, 576]`` bfloat16.
    kv : torch.Tensor
        ``[s_kv, h_kv, 576]`` bfloat16, ``h_kv = 1``.
    indices : torch.Tensor
        ``[s_q, h_kv, topk]`` int32; −1 or ``>= s_kv`` are ignored.
    sm_scale : float
        Softmax scale.
    d_v : int
        Value width; only 512.
    attn_sink : torch.Tensor, optional
        ``[h_q]`` float32: the output (not ``lse`` or ``max_logits``) is scaled by
        ``exp(lse) / (exp(lse) + exp(sink))``.
    topk_length : torch.Tensor, optional
        ``[s_q]`` int32: query s uses only ``indices[s, :, :topk_length[s]]``.

    Returns
    -------
    (out, max_logits, lse) : ``[s_q, h_q, 512]`` bfloat16, ``[s_q, h_q]`` float32 (−inf for an
    empty row), ``[s_q, h_q]`` float32 natural-log LSE of the scaled scores (+inf for an empty row,
    whose ``out`` is 0).
    """
    fn = "flash_mla_sparse_fwd"
    if d_v != _VALUE:
        raise ValueError(f"{fn}: argument 'd_v' must be 512, got {d_v}")
    if kv.dim() != 3 or kv.shape[1] != 1:
        raise ValueError(f"{fn}: argument 'kv' must be [s_kv, h_kv = 1, 576], got shape {list(kv.shape)}")
    if indices.dim() != 3 or indices.shape[1] != 1:
        raise ValueError(f"{fn}: argument 'indices' must be [s_q, h_kv = 1, topk], got shape {list(indices.shape)}")
    flat_kv = kv.view(kv.shape[0], kv.shape[2]) if kv.is_contiguous() else kv[:, 0].contiguous()
    idx = _mask_topk_length(indices[:, 0], topk_length).contiguous()
    out, lse = ops.sparse_mla_prefill(q, flat_kv, idx, sm_scale)
    max_logits = _max_logits(q, flat_kv, idx, sm_scale)
    return _apply_sink(out, lse, attn_sink), max_logits, _lse_flash(lse)


def flash_mla_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    block_table: torch.Tensor | None,
    cache_seqlens: torch.Tensor | None,
    head_dim_v: int,
    tile_scheduler_metadata,
    num_splits: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    causal: bool = False,
    is_fp8_kvcache: bool = False,
    indices: torch.Tensor | None = None,
    attn_sink: torch.Tensor | None = None,
    extra_k_cache: torch.Tensor | None = None,
    extra_indices_in_kvcache: torch.Tensor | None = None,
    topk_length: torch.Tensor | None = None,
    extra_topk_length: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse decode over the paged MLA cache (FlashMLA's sparse path): returns ``(out, lse)``.

    Parameters
    ----------
    q : torch.Tensor
        ``[b, s_q, h_q, 576]`` bfloat16.
    k_cache : torch.Tensor
        uint8 ``[num_blocks, 64, 1, 656]`` (FP8, ``is_fp8_kvcache=True``; FlashMLA's byte layout) or
        ``[num_blocks, 64, 1, 1152]`` (BF16, ``is_fp8_kvcache=False``); the 3-D form too.
    block_table, cache_seqlens : torch.Tensor or None
        Unused by sparse decode (the slots are in ``indices``), as in FlashMLA.
    head_dim_v : int
        512.
    tile_scheduler_metadata : FlashMLASchedMeta or torch.Tensor
        From :func:`get_mla_metadata`: the new-interface object (planned here on its first use, then
        checked against the shapes), or the 2025 interface's ``[num_sm_parts, 8]`` int32 tensor with
        ``num_splits [b + 1]``. The plan drives glm52's split-KV decode
        (``glm52_ext.ops.sparse_mla_decode`` with ``tile_scheduler_metadata``/``num_splits``): each
        row's top-k is cut across partitions and the pieces merged by LSE.
    softmax_scale : float, optional
        Default ``576^-0.5`` (FlashMLA's ``d_qk^-0.5``).
    causal : bool
        Must be False (sparse).
    is_fp8_kvcache : bool
        Must match the cache's row size.
    indices : torch.Tensor
        ``[b, s_q, topk]`` int32 slots ``block * 64 + offset``; −1 (or outside the cache) ignored.
    attn_sink : torch.Tensor, optional
        ``[h_q]`` float32 (as in :func:`flash_mla_sparse_fwd`).
    topk_length : torch.Tensor, optional
        ``[b]`` int32: batch b uses only its leftmost ``topk_length[b]`` indices.

    Returns
    -------
    (out, lse) : ``[b, s_q, h_q, 512]`` bfloat16 and ``[b, h_q, s_q]`` float32 (+inf and a zero
    output for a query with no valid index).
    """
    fn = "flash_mla_with_kvcache"
    for name, value in (("extra_k_cache", extra_k_cache), ("extra_indices_in_kvcache", extra_indices_in_kvcache),
                        ("extra_topk_length", extra_topk_length)):
        if value is not None:
            raise ValueError(f"{fn}: argument '{name}' is not supported")
    if indices is None:
        raise ValueError(f"{fn}: argument 'indices' is required: only the sparse decode path is covered")
    if causal:
        raise ValueError(f"{fn}: argument 'causal' must be False with sparse attention")
    if head_dim_v != _VALUE:
        raise ValueError(f"{fn}: argument 'head_dim_v' must be 512, got {head_dim_v}")
    row = k_cache.shape[-1]
    if (row == 656) != bool(is_fp8_kvcache) or row not in (656, 1152):
        raise ValueError(f"{fn}: argument 'is_fp8_kvcache' is {is_fp8_kvcache} but 'k_cache' rows are {row} bytes "
                         "(656: FP8, 1152: BF16)")
    b, s_q, h_q, _ = q.shape
    meta, splits = _check_plan(fn, tile_scheduler_metadata, num_splits, q, k_cache, indices, topk_length)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    idx = _mask_topk_length(indices, topk_length).contiguous()
    out, lse = ops.sparse_mla_decode(q, k_cache, idx, scale, tile_scheduler_metadata=meta, num_splits=splits)
    out = _apply_sink(out, lse, attn_sink)
    return out, _lse_flash(lse).transpose(1, 2).contiguous()


def _check_plan(fn, meta, num_splits, q, k_cache, indices, topk_length) -> tuple[torch.Tensor, torch.Tensor]:
    """Plan on first use (new interface) or check the given plan's shapes; no host sync either way.
    Returns the plan's tensors."""
    b, s_q, h_q, _ = q.shape
    if isinstance(meta, FlashMLASchedMeta):
        config = (b, s_q, h_q, k_cache.shape[1], indices.shape[-1], topk_length is not None)
        if not meta.have_initialized:
            row_topk = topk_length if topk_length is not None else torch.full(
                (b,), indices.shape[-1], dtype=torch.int32, device=q.device)
            meta.tile_scheduler_metadata, meta.num_splits = plan_sparse_decode(
                row_topk, _num_sm_parts(q.device, s_q * h_q, h_q))
            meta.config, meta.have_initialized = config, True
        elif meta.config != config:
            raise ValueError(f"{fn}: argument 'tile_scheduler_metadata' was planned for (b, s_q, h_q, block, topk, "
                             f"topk_length given) = {meta.config}, got {config}; use a new get_mla_metadata()")
        return meta.tile_scheduler_metadata, meta.num_splits
    if not isinstance(meta, torch.Tensor) or meta.dim() != 2 or meta.shape[1] != TILE_SCHEDULER_METADATA_SIZE \
            or meta.dtype != torch.int32 or meta.device != q.device:
        raise ValueError(f"{fn}: argument 'tile_scheduler_metadata' must be a FlashMLASchedMeta or an int32 "
                         f"[num_sm_parts, 8] tensor on {q.device} (get_mla_metadata)")
    if num_splits is None or num_splits.shape != (b + 1,) or num_splits.dtype != torch.int32:
        raise ValueError(f"{fn}: argument 'num_splits' must be int32 [b + 1] = [{b + 1}] (get_mla_metadata), got "
                         f"{None if num_splits is None else (num_splits.dtype, list(num_splits.shape))}")
    return meta, num_splits
