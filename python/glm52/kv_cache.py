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
from .layers import apply_rope

BLOCK_SIZE = 64


class CacheFullError(RuntimeError):
    """The block pool cannot hold what was asked for."""


class BlockAllocator:
    """A fixed pool of ``num_blocks`` blocks and the block table of each live sequence.

    Entry ``j`` of a table holds the sequence's positions ``64 j .. 64 j + 63``. A subclass may hold
    only some of them (:meth:`owns`; context parallelism stripes blocks over ranks): the others
    stay −1 in the table, so a position's entry is still ``position // 64``.
    """

    def __init__(self, num_blocks: int) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low block ids first
        self.tables: dict[int, list[int]] = {}

    @property
    def num_free(self) -> int:
        return len(self._free)

    def owns(self, entry: int) -> bool:
        """Whether table entry ``entry`` (positions ``64 entry ..``) is held by this allocator."""
        return True

    def blocks_needed(self, seq_id: int, num_tokens: int) -> int:
        return sum(map(self.owns, range(len(self.tables.get(seq_id, ())), -(-num_tokens // BLOCK_SIZE))))

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks a new sequence of ``num_tokens`` tokens takes from the pool."""
        return self.blocks_needed(None, num_tokens)

    def reserve(self, seq_id: int, num_tokens: int) -> None:
        """Grow ``seq_id``'s table to hold ``num_tokens`` tokens (all or nothing)."""
        need = self.blocks_needed(seq_id, num_tokens)
        if need > len(self._free):
            raise CacheFullError(f"sequence {seq_id} needs {need} more blocks for {num_tokens} tokens; {len(self._free)} free")
        table = self.tables.setdefault(seq_id, [])
        table.extend(self._free.pop() if self.owns(j) else -1 for j in range(len(table), -(-num_tokens // BLOCK_SIZE)))

    def truncate(self, seq_id: int, num_tokens: int) -> None:
        """Keep only the blocks ``num_tokens`` tokens need (rolled-back tokens give theirs back)."""
        table = self.tables[seq_id]
        keep = -(-num_tokens // BLOCK_SIZE)
        while len(table) > keep:
            block = table.pop()
            if block >= 0:
                self._free.append(block)

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
        held = table[block.clamp_max(table.numel() - 1)]
        return torch.where(valid & (held >= 0), held * BLOCK_SIZE + p % BLOCK_SIZE, -1)

    def check(self) -> None:
        """Accounting invariant: every block is either free or in exactly one table."""
        used = [b for table in self.tables.values() for b in table if b >= 0]
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

    With the FP8 indexer and ``config.indexer_hadamard`` (the default), keys are stored rotated by
    ``hadamard_rotate`` (after RoPE) and queries are rotated the same way before they are quantized.

    ``shared_storage=True`` gives all layers one buffer: enough for a single forward pass, where
    each layer is done with the cache before the next one writes it.

    ``split_decode`` (kernel formats): whether attention splits each row's top-k across the device
    (:meth:`sparse_decode_plan`): ``None`` (default) when the unsplit grid would leave the device's
    parallel units idle, ``True`` at every step, ``False`` never.
    """

    slots_are_prefix = True  # a sequence's stored slots are a prefix of its context (not so when context-parallel)
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
        self.index_hadamard = fp8_keys and config.indexer_hadamard  # rotate q and k before quantizing

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
    def blocks_in_budget(cls, config: GLM52Config, budget_bytes: int, dtype: torch.dtype,
                         format: str | None = None) -> int:
        per_block = cls.bytes_per_block(config, dtype, format)
        if budget_bytes < per_block:
            raise ValueError(f"a cache budget of {budget_bytes} bytes holds no block ({per_block} bytes each)")
        return budget_bytes // per_block

    @classmethod
    def from_budget(cls, config: GLM52Config, budget_bytes: int, dtype: torch.dtype,
                    device: torch.device | str, format: str | None = None) -> PagedKVCache:
        return cls(config, cls.blocks_in_budget(config, budget_bytes, dtype, format), dtype, device, format)

    def write(self, layer: int, slots: torch.Tensor, latent: torch.Tensor, index_key: torch.Tensor | None,
              turn: torch.Tensor | None = None) -> None:
        """Store new tokens' ``[c_kv | k_pe]`` (and indexer key) at ``slots`` (−1: not stored).

        ``turn``: the new positions' complex rotation ``[B or 1, T, rope/2]``
        (:func:`glm52.layers.rope_turn`); then ``k_pe`` and the key's first ``rope`` dims come
        before RoPE and are rotated on the way in. The kernel formats fuse that into their cache
        writes for a BF16 latent (one op instead of two rotations and a concatenation); otherwise
        :func:`glm52.layers.apply_rope` rotates first, which stores the same values.
        """
        flat_slots = slots.reshape(-1)
        if self.format != "model" and turn is not None and latent.dtype == torch.bfloat16:
            pairs = torch.view_as_real(turn).expand(*latent.shape[:2], -1, -1).reshape(-1, turn.shape[-1], 2)
            kernels.mla_cache_write(latent.reshape(-1, latent.shape[-1]), flat_slots, self.latent[layer], rope=pairs)
            if index_key is not None:
                kernels.indexer_cache_write(index_key.reshape(-1, index_key.shape[-1]), flat_slots,
                                            self.index_keys[layer], rope=pairs, hadamard=self.index_hadamard)
            return
        if turn is not None:
            r = self.config.qk_rope_head_dim
            latent = torch.cat((latent[..., :-r], apply_rope(latent[..., -r:], turn, None)), dim=-1)
            if index_key is not None:
                index_key = torch.cat((apply_rope(index_key[..., :r], turn, None), index_key[..., r:]), dim=-1)
        if self.format != "model":
            kernels.mla_cache_write(latent.reshape(-1, latent.shape[-1]).to(torch.bfloat16), flat_slots,
                                    self.latent[layer])
            if index_key is not None:
                kernels.indexer_cache_write(index_key.reshape(-1, index_key.shape[-1]).float(), flat_slots,
                                            self.index_keys[layer], hadamard=self.index_hadamard)
            return
        rows = torch.where(flat_slots >= 0, flat_slots, self.num_slots)  # −1 -> the spare row
        self.latent[layer].index_copy_(0, rows, latent.reshape(-1, latent.shape[-1]).to(self.latent[layer].dtype))
        if index_key is None:
            return
        keys = index_key.reshape(-1, index_key.shape[-1])
        if layer in self.index_scales:
            keys = kernels.hadamard_rotate(keys.contiguous()) if self.index_hadamard else keys.float()
            k8, scale = kernels.quant_fp8_per_token_group(keys, keys.shape[-1])
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
            q8, w = fp8_index_query(q, w, self.index_hadamard)
            lengths = (view.positions + 1).int()  # padding tokens (position −1) see nothing
            return kernels.indexer_topk_paged(q8, w, self.index_keys[layer], view.block_table, lengths, k)
        return self.streaming_index_topk(layer, q, w, view, k)[0]

    def streaming_index_topk(self, layer: int, q: torch.Tensor, w: torch.Tensor, view: CacheView,
                             k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The model format's :meth:`index_topk` and the fp32 scores of the chosen positions (−inf
        at −1): ``(int32 [B, T, k], fp32 [B, T, k])``."""
        fp8 = layer in self.index_scales
        # Query (b, t) sees the stored positions up to its own. When the stored slots are a prefix
        # of the context (one process: a block table lists a sequence's blocks in order), that is a
        # column count per query, which topk_indices takes as ``lengths``: no [queries x context]
        # mask is built. A context-parallel rank's slots have holes (its peers' blocks): masked.
        visible = view.positions + 1
        if self.slots_are_prefix:
            visible = torch.minimum(visible, (view.context_slots >= 0).sum(dim=1, keepdim=True))
        visible = visible.clamp_min(0)

        def tile_scores(rows: slice, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
            slots = view.context_slots[:, cols]
            flat = slots.clamp_min(0).flatten()
            keys = self.index_keys[layer].index_select(0, flat).view(*slots.shape, -1)
            if fp8:
                scale = self.index_scales[layer].index_select(0, flat).view(slots.shape)
                scores = indexer_scores_fp8(q[:, rows], w[:, rows], keys, scale, self.index_hadamard)
            else:
                scores = indexer_scores_exact(q[:, rows], w[:, rows], keys)
            if not self.slots_are_prefix:
                scores.masked_fill_((slots < 0).unsqueeze(1), float("-inf"))
            return scores, (visible[:, rows] - cols.start).clamp(0, cols.stop - cols.start)

        context = view.context_slots.shape[1]
        return streaming_topk(tile_scores, q.shape[0], q.shape[1], context, k, q.device, view.last_positions,
                              with_scores=True)

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
        return self.attend_with_lse(layer, query, slots, sm_scale, plan)[0].to(query.dtype)

    def attend_with_lse(self, layer: int, query: torch.Tensor, slots: torch.Tensor, sm_scale: float,
                        plan: SparseDecodePlan | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`attend` and the log-sum-exp of each row's scores (fp32 ``[B, T, H]``; −inf and zero
        output where no slot is valid). Output dtype: BF16 for the kernel formats, ``query``'s else."""
        if self.format != "model":
            split = {} if plan is None else dict(tile_scheduler_metadata=plan.tile_scheduler_metadata,
                                                 num_splits=plan.num_splits, workspace=plan.workspace)
            return kernels.sparse_mla_decode(query.to(torch.bfloat16).contiguous(), self.latent[layer],
                                             slots.int().contiguous(), sm_scale, **split)
        b, t = query.shape[:2]
        out, lse = kernels.sparse_mla_prefill_model(query.flatten(0, 1), self.latent[layer].to(query.dtype),
                                                    slots.flatten(0, 1), sm_scale, self.config.kv_lora_rank)
        return out.view(b, t, *out.shape[1:]), lse.view(b, t, -1)


# The model format's indexer scores one [B, 256, 1024] tile at a time: its [256 x heads, 1024]
# logits (8 MB at 8 heads) stay in cache between the GEMM, the ReLU and the head sum.
QUERY_TILE, KEY_TILE = 256, 1024


def streaming_topk(tile_scores, batch: int, queries: int, context: int, k: int, device,
                   last_positions: tuple[int, ...] | None = None,
                   with_scores: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``topk_indices`` over ``[batch, queries, context]`` scores produced tile by tile:
    ``tile_scores(rows, cols)`` -> (fp32 scores ``[batch, len(rows), len(cols)]``, int32 lengths
    ``[batch, len(rows)]`` or None): query (b, t) sees the tile's first ``lengths[b, t]`` columns
    (all without lengths), and never a non-finite score. ``last_positions``: when the caller knows
    them on the host, the largest position of each query over the batch; key tiles past a query
    tile's largest one are not scored.

    Each query tile keeps its best ``k`` (scores and positions, in position order). A key tile is
    reduced to its own best ``k``, which are appended to the kept ones; ``topk_indices`` of that
    ``2k``-wide concatenation (ties to the lower column = the lower position) becomes the new
    selection. A dropped score has k better-or-earlier scores before it, so the end result equals
    the selection over the whole row. Memory: O(batch · queries · k) plus one tile. Returns int32
    ``[batch, queries, k]``, −1 padded (``with_scores``: and the fp32 scores of those positions, −inf
    at −1).
    """
    out = torch.full((batch, queries, k), -1, dtype=torch.int32, device=device)
    out_scores = torch.full((batch, queries, k), float("-inf"), device=device) if with_scores else None
    for r0 in range(0, queries, QUERY_TILE):
        rows = slice(r0, min(r0 + QUERY_TILE, queries))
        n = rows.stop - r0
        seen = context if last_positions is None else min(context, max(last_positions[rows]) + 1)
        best = torch.full((batch * n, k), float("-inf"), device=device)
        best_pos = torch.full((batch * n, k), -1, dtype=torch.int32, device=device)
        for c0 in range(0, seen, KEY_TILE):
            tile, lengths = tile_scores(rows, slice(c0, min(c0 + KEY_TILE, context)))
            tile = tile.reshape(batch * n, -1)
            pick = kernels.topk_indices(tile, k, None if lengths is None else lengths.reshape(-1).int())
            taken = pick >= 0
            scores = torch.cat((best, torch.where(taken, tile.gather(1, pick.clamp_min(0).long()), float("-inf"))), 1)
            positions = torch.cat((best_pos, torch.where(taken, pick + c0, -1)), 1)
            pick = kernels.topk_indices(scores, k).long()
            taken = pick >= 0
            best = torch.where(taken, scores.gather(1, pick.clamp_min(0)), float("-inf"))
            best_pos = torch.where(taken, positions.gather(1, pick.clamp_min(0)), -1)
        out[:, rows] = best_pos.view(batch, n, k)
        if with_scores:
            out_scores[:, rows] = best.view(batch, n, k)
    return (out, out_scores) if with_scores else out


def fp8_index_query(q: torch.Tensor, w: torch.Tensor, hadamard: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Indexer queries ``q [B, T, H, D]`` and head weights ``w [B, T, H]`` as the fused FP8 ops take
    them: (Hadamard-rotated in fp32 when ``hadamard``) e4m3 codes per (token, head) with a
    power-of-two scale, folded with ``D^-0.5`` into ``w``."""
    d = q.shape[-1]
    q = kernels.hadamard_rotate(q.contiguous()) if hadamard else q
    q8, q_scale = kernels.quant_fp8_per_token_group(q.reshape(-1, d), d, scale_ue8m0=True)
    return q8.view(q.shape), (w * q_scale.view(w.shape) * d**-0.5).contiguous()


def _weighted_relu_scores(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``Σ_h w_h · ReLU(q_h · k_t)``: ``q [B,T,H,D]``, ``w [B,T,H]``, ``keys [B,C,D]`` (fp32) -> ``[B,T,C]``.
    Two GEMMs and an in-place ReLU: the ``[T·H, C]`` logits are written once."""
    b, t, h, d = q.shape
    logits = torch.matmul(q.reshape(b, t * h, d), keys.transpose(1, 2)).relu_()
    return torch.matmul(w.reshape(b * t, 1, h), logits.view(b * t, h, -1)).view(b, t, -1)


def indexer_scores_exact(q: torch.Tensor, w: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """``I(s,t) = Σ_h w_h · ReLU(q_h · k_t · D^-0.5)`` in fp32 (``D^-0.5 > 0`` is folded into ``w``):
    ``q [B,T,H,D]``, ``w [B,T,H]``, ``keys [B,C,D]`` -> ``[B,T,C]``."""
    return _weighted_relu_scores(q.float(), w * q.shape[-1] ** -0.5, keys.float())


def indexer_scores_fp8(q: torch.Tensor, w: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor,
                       hadamard: bool) -> torch.Tensor:
    """Production recipe: q (Hadamard-rotated when ``hadamard``, as the keys were) per (token, head)
    e4m3 with a power-of-two scale folded into the head weight, keys e4m3 with one fp32 scale per
    token: ``I = s_k(t) · Σ_h w'_h · ReLU(q8_h · k8_t)``."""
    q8, w = fp8_index_query(q, w, hadamard)
    return _weighted_relu_scores(q8.float(), w, k8.float()) * k_scale.unsqueeze(1)


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
    ``last_positions``: host ints, when the builder knows them (prefill), the largest position of
    each query index t over the batch; the model format's indexer skips key tiles past them.
    ``decode_plan``: the step's split-KV attention plan (:meth:`PagedKVCache.sparse_decode_plan`),
    or None.
    """

    cache: PagedKVCache
    positions: torch.Tensor
    slots: torch.Tensor
    context_slots: torch.Tensor
    block_table: torch.Tensor
    last_positions: tuple[int, ...] | None = None
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
        return cls(cache, positions, slots, slots.int(), table, tuple(range(tokens)))

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
                         context: int, last_positions: tuple[int, ...] | None = None) -> CacheView:
        """View whose slots are looked up on the device from ``block_table [B, W]`` (int32, −1
        padded) for ``positions [B, T]``; each sequence's context ends at its largest position.
        No host read: what a compiled or graph-captured decode step builds."""
        span = torch.arange(context, device=positions.device)
        lengths = positions.amax(dim=1, keepdim=True) + 1
        context_positions = torch.where(span < lengths, span, -1)
        return cls(cache, positions, paged_slots(block_table, positions),
                   paged_slots(block_table, context_positions).int(), block_table, last_positions,
                   cache.sparse_decode_plan(lengths.view(-1), positions.shape[1]))
