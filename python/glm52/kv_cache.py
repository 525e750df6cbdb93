"""Paged KV caches: the MLA latent cache of every layer and the indexer key cache of full layers.

Storage is paged in 64-token blocks (DESIGN §3): a *slot* is ``block * 64 + offset`` and every
layer of a sequence uses the same slots, so one block table per sequence serves all layers. The
:class:`BlockAllocator` hands blocks out and takes them back; :class:`CacheView` is what one
forward step sees: the positions and slots of its new tokens and the slots of each sequence's
whole context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import kernels
from .config import GLM52Config

BLOCK_SIZE = 64


class CacheFullError(RuntimeError):
    """The block pool cannot hold what was asked for."""


class BlockAllocator:
    """A fixed pool of ``num_blocks`` blocks and the block table of each live sequence."""

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low block ids first
        self.tables: dict[int, list[int]] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    def blocks_needed(self, seq_id: int, num_tokens: int) -> int:
        return max(0, -(-num_tokens // BLOCK_SIZE) - len(self.tables.get(seq_id, ())))

    def reserve(self, seq_id: int, num_tokens: int) -> None:
        """Grow ``seq_id``'s table to hold ``num_tokens`` tokens (all or nothing)."""
        need = self.blocks_needed(seq_id, num_tokens)
        if need > len(self._free):
            raise CacheFullError(f"sequence {seq_id} needs {need} more blocks for {num_tokens} tokens; {len(self._free)} free")
        table = self.tables.setdefault(seq_id, [])
        table.extend(self._free.pop() for _ in range(need))

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Keep only the blocks ``num_tokens`` tokens need (rolled-back tokens give theirs back)."""
        table = self.tables[seq_id]
        keep = -(-num_tokens // BLOCK_SIZE)
        while len(table) > keep:
            self._free.append(table.pop())

    def release(self, seq_id: int) -> None:
        self.truncate(seq_id, 0)
        del self.tables[seq_id]

    def block_table(self, seq_ids: list[int], width: int | None = None) -> torch.Tensor:
        """The blocks of ``seq_ids`` as a host int32 ``[B, width]`` table, −1 padded (default width:
        the longest table). Built from the host bookkeeping alone: no device value is read."""
        tables = [self.tables.get(seq, []) for seq in seq_ids]
        width = max(1, max(map(len, tables), default=0)) if width is None else width
        out = torch.full((len(seq_ids), width), -1, dtype=torch.int32)
        for row, table in enumerate(tables):
            if len(table) > width:
                raise ValueError(f"sequence {seq_ids[row]} holds {len(table)} blocks, more than the table width {width}")
            out[row, : len(table)] = torch.tensor(table, dtype=torch.int32)
        return out

    def slots(self, seq_id: int, positions: torch.Tensor) -> torch.Tensor:
        """Slots of ``positions`` (int64, any shape; −1 stays −1) in ``seq_id``'s blocks, checked on
        the host (reads ``positions``; the decode step uses :func:`paged_slots` instead)."""
        table = torch.tensor(self.tables.get(seq_id, []) or [-1], dtype=torch.int64, device=positions.device)
        valid = positions >= 0
        p = positions.clamp_min(0)
        block = p // BLOCK_SIZE
        if valid.any() and int(block[valid].max()) >= len(self.tables.get(seq_id, ())):
            raise IndexError(f"sequence {seq_id}: position {int(p[valid].max())} is past its reserved blocks")
        slot = table[block.clamp_max(table.numel() - 1)] * BLOCK_SIZE + p % BLOCK_SIZE
        return torch.where(valid, slot, -1)

    def check(self) -> None:
        """Accounting invariant: every block is either free or in exactly one table."""
        used = [b for table in self.tables.values() for b in table]
        if sorted(used + self._free) != list(range(self.num_blocks)):
            raise AssertionError("block accounting broken: blocks lost or handed out twice")


KERNEL_FORMAT_TOKEN_BYTES = {"bf16": 1152, "fp8": 656}  # the attention ops' MLA row layouts
INDEX_TOKEN_BYTES = 132  # 128 e4m3 codes + one fp32 scale


def kernel_formats_fit(config: GLM52Config, dtype: torch.dtype) -> bool:
    """Whether the attention ops can serve this model: GLM-5.x latent sizes, BF16, the FP8 indexer."""
    return (config.kv_lora_rank, config.qk_rope_head_dim, config.index_head_dim) == (512, 64, 128) and \
        dtype == torch.bfloat16 and config.indexer_precision == "fp8"


class PagedKVCache:
    """Cache storage for every layer (the MTP layer included), sized in blocks, and the two ways
    attention reads it: indexer scores over the cached keys and sparse attention over chosen slots.

    ``format`` is one of

    - ``"bf16"`` / ``"fp8"``: the attention kernels' byte layouts (:mod:`glm52_ext.ops.attention`):
      MLA rows of 1152 B (BF16) or 656 B (FP8 latent + BF16 rope) per token, indexer keys 132 B per
      token on layers with an indexer; written by ``mla_cache_write``/``indexer_cache_write``, read
      by ``indexer_topk_paged`` (fused scores + top-k) and ``sparse_mla_decode``. Needs
      :func:`kernel_formats_fit`.
    - ``"model"``: any model size or dtype (small test models): latents ``[slots, kv_lora + rope]``
      in the model dtype and indexer keys as fp32 (exact indexer) or e4m3 + fp32 scale (FP8),
      read with plain PyTorch.

    ``shared_storage=True`` gives all layers one buffer: enough for a single forward pass, where
    each layer is done with the cache before the next one writes it.

    ``split_decode`` (kernel formats): whether attention splits each row's top-k across the device
    (:meth:`sparse_decode_plan`): ``None`` (default) when the unsplit grid would leave the device's
    parallel units idle, ``True`` at every step, ``False`` never.
    """

    split_decode: bool | None = None

    def __init__(self, config: GLM52Config, num_blocks: int, dtype: torch.dtype, device: torch.device | str,
                 format: str | None = None, shared_storage: bool = False) -> None:
        fits = kernel_formats_fit(config, dtype)
        format = format or ("bf16" if fits else "model")
        if format not in ("model", *KERNEL_FORMAT_TOKEN_BYTES):
            raise ValueError(f"cache format must be 'model', 'bf16' or 'fp8', got {format!r}")
        if format != "model" and not fits:
            raise ValueError(f"cache format {format!r} needs kv_lora_rank 512, qk_rope_head_dim 64, index_head_dim "
                             f"128, bfloat16 and indexer_precision 'fp8' (the attention kernels' contract)")
        self.config, self.format, self.dtype = config, format, dtype
        self.num_blocks, self.num_slots = num_blocks, num_blocks * BLOCK_SIZE
        layers = range(config.num_layers_total)
        indexed = [i for i in layers if config.has_indexer(i)]
        fp8_keys = config.indexer_precision == "fp8"

        def per_layer(shape, dt, which):
            if shared_storage:
                one = torch.zeros(shape, dtype=dt, device=device)
                return {i: one for i in which}
            return {i: torch.zeros(shape, dtype=dt, device=device) for i in which}

        if format == "model":
            # One spare row past the last slot takes the writes of slot −1 (padding tokens), so a
            # write needs no boolean mask (a host sync).
            width = config.kv_lora_rank + config.qk_rope_head_dim
            self.latent = per_layer((self.num_slots + 1, width), dtype, layers)
            key_dtype = torch.float8_e4m3fn if fp8_keys else torch.float32
            self.index_keys = per_layer((self.num_slots + 1, config.index_head_dim), key_dtype, indexed)
            self.index_scales = per_layer((self.num_slots + 1,), torch.float32, indexed) if fp8_keys else {}
        else:
            row = KERNEL_FORMAT_TOKEN_BYTES[format]
            self.latent = per_layer((num_blocks, BLOCK_SIZE, row), torch.uint8, layers)
            self.index_keys = per_layer((num_blocks, BLOCK_SIZE * INDEX_TOKEN_BYTES), torch.uint8, indexed)

    @staticmethod
    def bytes_per_block(config: GLM52Config, dtype: torch.dtype, format: str | None = None) -> int:
        format = format or ("bf16" if kernel_formats_fit(config, dtype) else "model")
        indexed = sum(config.has_indexer(i) for i in range(config.num_layers_total))
        if format == "model":
            latent = (config.kv_lora_rank + config.qk_rope_head_dim) * torch.finfo(dtype).bits // 8
            key = config.index_head_dim + 4 if config.indexer_precision == "fp8" else 4 * config.index_head_dim
        else:
            latent, key = KERNEL_FORMAT_TOKEN_BYTES[format], INDEX_TOKEN_BYTES
        return BLOCK_SIZE * (config.num_layers_total * latent + indexed * key)

    @classmethod
    def from_budget(cls, config: GLM52Config, budget_bytes: int, dtype: torch.dtype,
                    device: torch.device | str, format: str | None = None) -> PagedKVCache:
        per_block = cls.bytes_per_block(config, dtype, format)
        if budget_bytes < per_block:
            raise ValueError(f"a cache budget of {budget_bytes} bytes holds no block ({per_block} bytes each)")
        return cls(config, budget_bytes // per_block, dtype, device, format)

    def write(self, layer: int, slots: torch.Tensor, latent: torch.Tensor, index_key: torch.Tensor | None) -> None:
        """Store new tokens' ``[c_kv | k_pe]`` (and indexer key) at ``slots`` (−1: not stored)."""
        flat_slots = slots.reshape(-1)
        if self.format != "model":
            kernels.mla_cache_write(latent.reshape(-1, latent.shape[-1]).to(torch.bfloat16), flat_slots,
                                    self.latent[layer])
            if index_key is not None:
                kernels.indexer_cache_write(index_key.reshape(-1, index_key.shape[-1]).float(), flat_slots,
                                            self.index_keys[layer])
            return
        rows = torch.where(flat_slots >= 0, flat_slots, self.num_slots)  # −1 -> the spare row
        self.latent[layer].index_copy_(0, rows, latent.reshape(-1, latent.shape[-1]).to(self.latent[layer].dtype))
        if index_key is None:
            return
        keys = index_key.reshape(-1, index_key.shape[-1])
        if layer in self.index_scales:
            k8, scale = kernels.quant_fp8_per_token_group(keys.float(), keys.shape[-1])
            self.index_keys[layer].view(torch.uint8).index_copy_(0, rows, k8.view(torch.uint8))  # no fp8 index_copy_
            self.index_scales[layer].index_copy_(0, rows, scale.view(-1))
        else:
            self.index_keys[layer].index_copy_(0, rows, keys.float())

    def index_topk(self, layer: int, q: torch.Tensor, w: torch.Tensor, view: CacheView, k: int) -> torch.Tensor:
        """The ``k`` context positions with the largest indexer scores for queries ``q [B, T, H, D]``
        with head weights ``w [B, T, H]`` (fp32, ``n_heads^-0.5`` folded): int32 ``[B, T, k]`` in
        increasing order, ties to the lower position, −1 padded; each query sees the positions up to
        its own. Exactly ``topk_indices`` of the whole ``[B, T, C]`` score tensor, which is never
        built: the kernel formats run the fused ``indexer_topk_paged``; the model format streams
        key tiles into a running selection (:func:`streaming_topk`)."""
        if self.format != "model":
            d = q.shape[-1]
            q8, q_scale = kernels.quant_fp8_per_token_group(q.reshape(-1, d), d, scale_ue8m0=True)
            w = (w * q_scale.view(w.shape) * d**-0.5).contiguous()
            lengths = (view.positions + 1).int()  # padding tokens (position −1) see nothing
            return kernels.indexer_topk_paged(q8.view(q.shape), w, self.index_keys[layer], view.block_table, lengths, k)
        fp8 = layer in self.index_scales

        def tile_scores(rows: slice, cols: slice) -> torch.Tensor:
            slots = view.context_slots[:, cols]
            keys = self.index_keys[layer][slots.clamp_min(0)]
            if fp8:
                scores = indexer_scores_fp8(q[:, rows], w[:, rows], keys, self.index_scales[layer][slots.clamp_min(0)])
            else:
                scores = indexer_scores_exact(q[:, rows], w[:, rows], keys)
            return scores.masked_fill(~view.causal_mask(rows, cols), float("-inf"))

        return streaming_topk(tile_scores, q.shape[0], q.shape[1], view.context_slots.shape[1], k, q.device)

    def sparse_decode_plan(self, lengths: torch.Tensor, tokens: int) -> SparseDecodePlan | None:
        """The split-KV plan of one step's attention, shared by every layer (the same row lengths
        under IndexShare and on full layers alike), or None to run unsplit: the model format, or
        (``split_decode=None``) a step whose unsplit grid, ``B * tokens * ceil(H / 64)`` CTAs,
        already fills the device (CUDA SMs, CPU threads). ``lengths [B]``: each sequence's context
        length after the step; row b's valid slots are among its first ``min(index_topk, lengths[b])``
        (the indexer pads with −1 at the end). Device ops only (no host sync); its few ops run once
        per step, outside the layers."""
        if self.format == "model" or self.split_decode is False:
            return None
        heads, batch = self.config.num_attention_heads, lengths.shape[0]  # H bounds any tensor-parallel shard
        device = self.latent[0].device
        units = kernels.sparse_mla_decode_sm_parts(device, 1, 64)
        if self.split_decode is None and batch * tokens * -(-heads // 64) >= units:
            return None
        parts = kernels.sparse_mla_decode_sm_parts(device, tokens, heads)
        row_topk = lengths.clamp(0, self.config.index_topk).int()
        meta, num_splits = kernels.sparse_mla_decode_metadata(row_topk, parts)
        workspace = torch.empty(kernels.sparse_mla_decode_workspace_bytes(batch, tokens, heads, parts),
                                dtype=torch.uint8, device=device)
        return SparseDecodePlan(meta, num_splits, workspace)

    def attend(self, layer: int, query: torch.Tensor, slots: torch.Tensor, sm_scale: float,
               plan: SparseDecodePlan | None = None) -> torch.Tensor:
        """Sparse latent attention of ``query [B, T, H, kv_lora + rope]`` over the cached rows at
        ``slots [B, T, k]`` (−1 ignored) -> ``[B, T, H, kv_lora]`` latent outputs; split-KV with
        ``plan`` (:meth:`sparse_decode_plan`, kernel formats)."""
        if self.format != "model":
            split = {} if plan is None else dict(tile_scheduler_metadata=plan.tile_scheduler_metadata,
                                                 num_splits=plan.num_splits, workspace=plan.workspace)
            out, _ = kernels.sparse_mla_decode(query.to(torch.bfloat16).contiguous(), self.latent[layer],
                                               slots.int().contiguous(), sm_scale, **split)
            return out.to(query.dtype)
        b, t = query.shape[:2]
        out, _ = kernels.sparse_mla_prefill_model(query.flatten(0, 1), self.latent[layer].to(query.dtype),
                                                  slots.flatten(0, 1), sm_scale, self.config.kv_lora_rank)
        return out.view(b, t, *out.shape[1:])


QUERY_TILE, KEY_TILE = 512, 4096  # the model format's indexer scores one [B, 512, 4096] tile at a time


def streaming_topk(tile_scores, batch: int, queries: int, context: int, k: int, device) -> torch.Tensor:
    """``topk_indices`` over ``[batch, queries, context]`` scores produced tile by tile:
    ``tile_scores(rows, cols)`` -> fp32 ``[batch, len(rows), len(cols)]`` (−inf: not visible).

    Each query tile keeps its best ``k`` (scores and positions, in position order); every key tile is
    appended to them and ``topk_indices`` of the concatenation (ties to the lower column = the lower
    position) becomes the new selection. A dropped score has k better-or-earlier scores before it, so
    the end result equals the selection over the whole row. Memory: O(batch · queries · k) plus one
    tile. Returns int32 ``[batch, queries, k]``, −1 padded.
    """
    out = torch.full((batch, queries, k), -1, dtype=torch.int32, device=device)
    for r0 in range(0, queries, QUERY_TILE):
        rows = slice(r0, min(r0 + QUERY_TILE, queries))
        n = rows.stop - r0
        best = torch.full((batch * n, 0), float("-inf"), device=device)
        best_pos = torch.full((batch * n, 0), -1, dtype=torch.long, device=device)
        for c0 in range(0, context, KEY_TILE):
            cols = slice(c0, min(c0 + KEY_TILE, context))
            scores = torch.cat((best, tile_scores(rows, cols).reshape(batch * n, -1)), dim=1).contiguous()
            positions = torch.cat((best_pos, torch.arange(cols.start, cols.stop, device=device).expand(batch * n, -1)), 1)
            pick = kernels.topk_indices(scores, k).long()
            taken = pick >= 0
            best = torch.where(taken, scores.gather(1, pick.clamp_min(0)), float("-inf"))
            best_pos = torch.where(taken, positions.gather(1, pick.clamp_min(0)), -1)
        if best_pos.shape[1]:
            out[:, rows] = best_pos.view(batch, n, k).int()
    return out


def indexer_scores_exact(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``I(s,t) = Σ_h w_h · ReLU(q_h · k_t · D^-0.5)`` in fp32: ``q [B,T,H,D]``, ``w [B,T,H]``, ``keys [B,C,D]`` -> ``[B,T,C]``."""
    logits = torch.einsum("bshd,btd->bsht", q.float(), keys.float()) * q.shape[-1] ** -0.5
    return torch.einsum("bsh,bsht->bst", w, logits.relu())


def indexer_scores_fp8(q: torch.Tensor, w: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor) -> torch.Tensor:
    """Production recipe: q per (token, head) e4m3 with a power-of-two scale folded into the head
    weight, keys e4m3 with one fp32 scale per token: ``I = s_k(t) · Σ_h w'_h · ReLU(q8_h · k8_t)``."""
    b, t, h, d = q.shape
    q8, q_scale = kernels.quant_fp8_per_token_group(q.reshape(-1, d), d, scale_ue8m0=True)
    w = w * q_scale.view(b, t, h) * d**-0.5
    logits = torch.einsum("bshd,btd->bsht", q8.float().view(b, t, h, d), k8.float()).relu()
    return torch.einsum("bsh,bsht->bst", w, logits) * k_scale.unsqueeze(1)


def paged_slots(block_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Slots of ``positions [B, T]`` (−1: none) through ``block_table [B, W]`` (−1 padded), on the
    device: no host read, so it can run inside a captured CUDA graph. A position whose block is
    not in the table maps to −1 (neither stored nor attended to)."""
    width = block_table.shape[1]
    p = positions.clamp_min(0)
    index = p // BLOCK_SIZE
    block = block_table.long().gather(1, index.clamp_max(width - 1))
    valid = (positions >= 0) & (index < width) & (block >= 0)
    return torch.where(valid, block * BLOCK_SIZE + p % BLOCK_SIZE, -1)


@dataclass
class SparseDecodePlan:
    """A step's split-KV plan (``glm52_ext.ops.sparse_mla_decode_metadata``) and the workspace of
    the partial results, made once per step and used by every layer in turn."""

    tile_scheduler_metadata: torch.Tensor
    num_splits: torch.Tensor
    workspace: torch.Tensor


@dataclass
class CacheView:
    """What one forward step knows about the cache.

    ``positions``/``slots`` ``[B, T]`` int64: the new tokens' absolute positions and cache slots (slot
    −1: a padding token, neither stored nor attended to). ``context_slots [B, C]`` int32 (what the
    attention kernels take, so the chosen slots need no per-layer conversion): the slot of every
    position ``0..C-1`` of each sequence after this step (−1 past its length). ``block_table
    [B, max_blocks]`` int32: each sequence's blocks (−1 padded), what the paged kernels read.
    ``decode_plan``: the step's split-KV attention plan (:meth:`PagedKVCache.sparse_decode_plan`),
    or None.
    """

    cache: PagedKVCache
    positions: torch.Tensor
    slots: torch.Tensor
    context_slots: torch.Tensor
    block_table: torch.Tensor
    decode_plan: SparseDecodePlan | None = None

    @classmethod
    def contiguous(cls, config: GLM52Config, batch: int, tokens: int, dtype: torch.dtype,
                   device: torch.device | str) -> CacheView:
        """A throw-away cache for one causal prefill of ``batch`` sequences of ``tokens`` tokens:
        sequence b owns blocks ``b * n .. b * n + n - 1`` (n blocks hold ``tokens``)."""
        per_seq = max(-(-tokens // BLOCK_SIZE), 1)
        cache = PagedKVCache(config, batch * per_seq, dtype, device, shared_storage=True)
        table = torch.arange(batch * per_seq, dtype=torch.int32, device=device).view(batch, per_seq)
        positions = torch.arange(tokens, device=device).expand(batch, tokens)
        slots = table[:, :1].long() * BLOCK_SIZE + positions
        return cls(cache, positions, slots, slots.int(), table)

    @classmethod
    def for_sequences(cls, cache: PagedKVCache, allocator: BlockAllocator, seq_ids: list[int],
                      positions: torch.Tensor, context: int | None = None) -> CacheView:
        """View for new tokens at ``positions [B, T]`` (−1: padding) of sequences ``seq_ids``;
        their blocks must already be reserved. ``context``: the context width C (at least the
        largest position + 1); without it ``positions`` is read on the host to find it."""
        if context is None:
            context = int(positions.max()) + 1 if positions.numel() else 0
        table = allocator.block_table(seq_ids).to(positions.device)
        return cls.from_block_table(cache, table, positions, context)

    @classmethod
    def from_block_table(cls, cache: PagedKVCache, block_table: torch.Tensor, positions: torch.Tensor,
                         context: int) -> CacheView:
        """View whose slots are looked up on the device from ``block_table [B, W]`` (int32, −1
        padded) for ``positions [B, T]``; each sequence's context ends at its largest position.
        No host read: what a compiled or graph-captured decode step builds."""
        span = torch.arange(context, device=positions.device)
        lengths = positions.amax(dim=1, keepdim=True) + 1
        context_positions = torch.where(span < lengths, span, -1)
        return cls(cache, positions, paged_slots(block_table, positions),
                   paged_slots(block_table, context_positions).int(), block_table,
                   cache.sparse_decode_plan(lengths.view(-1), positions.shape[1]))

    def causal_mask(self, rows: slice = slice(None), cols: slice = slice(None)) -> torch.Tensor:
        """``[B, T, C]`` (or the ``rows`` × ``cols`` tile of it): query (b, t) may see context position
        c (c ≤ its position, c stored)."""
        span = torch.arange(self.context_slots.shape[1], device=self.positions.device)[cols]
        return (span.view(1, 1, -1) <= self.positions[:, rows].unsqueeze(-1)) & \
            (self.context_slots[:, cols] >= 0).unsqueeze(1)
