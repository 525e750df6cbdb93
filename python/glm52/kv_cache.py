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

    def slots(self, seq_id: int, positions: torch.Tensor) -> torch.Tensor:
        """Slots of ``positions`` (int64, any shape; −1 stays −1) in ``seq_id``'s blocks."""
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


class PagedKVCache:
    """Cache storage for every layer (the MTP layer included), sized in blocks.

    ``latent[layer]`` is ``[num_slots, kv_lora_rank + qk_rope_head_dim]`` in the model dtype. Layers
    with an indexer also keep its keys: ``[num_slots, index_head_dim]`` fp32 in exact mode, or e4m3
    codes plus one fp32 scale per token in FP8 mode (the production format, 132 B/token).
    ``shared_storage=True`` gives all layers one buffer: enough for a single forward pass, where
    each layer is done with the cache before the next one writes it.
    """

    def __init__(self, config: GLM52Config, num_blocks: int, dtype: torch.dtype, device: torch.device | str,
                 shared_storage: bool = False) -> None:
        self.config = config
        self.num_slots = num_blocks * BLOCK_SIZE
        width = config.kv_lora_rank + config.qk_rope_head_dim
        layers = range(config.num_layers_total)
        fp8 = config.indexer_precision == "fp8"

        def make(shape, dt):
            return torch.zeros(shape, dtype=dt, device=device)

        def per_layer(factory, which):
            if shared_storage:
                one = factory()
                return {i: one for i in which}
            return {i: factory() for i in which}

        self.latent = per_layer(lambda: make((self.num_slots, width), dtype), layers)
        indexed = [i for i in layers if config.has_indexer(i)]
        key_dtype = torch.float8_e4m3fn if fp8 else torch.float32
        self.index_keys = per_layer(lambda: make((self.num_slots, config.index_head_dim), key_dtype), indexed)
        self.index_scales = per_layer(lambda: make((self.num_slots,), torch.float32), indexed) if fp8 else {}

    @staticmethod
    def bytes_per_block(config: GLM52Config, dtype: torch.dtype) -> int:
        width = config.kv_lora_rank + config.qk_rope_head_dim
        indexed = sum(config.has_indexer(i) for i in range(config.num_layers_total))
        key_bytes = config.index_head_dim + 4 if config.indexer_precision == "fp8" else 4 * config.index_head_dim
        per_token = config.num_layers_total * width * torch.finfo(dtype).bits // 8 + indexed * key_bytes
        return BLOCK_SIZE * per_token

    @classmethod
    def from_budget(cls, config: GLM52Config, budget_bytes: int, dtype: torch.dtype,
                    device: torch.device | str) -> PagedKVCache:
        blocks = budget_bytes // cls.bytes_per_block(config, dtype)
        if blocks < 1:
            raise ValueError(f"a cache budget of {budget_bytes} bytes holds no block "
                             f"({cls.bytes_per_block(config, dtype)} bytes each)")
        return cls(config, blocks, dtype, device)

    def write(self, layer: int, slots: torch.Tensor, latent: torch.Tensor, index_key: torch.Tensor | None) -> None:
        """Store new tokens' ``[c_kv | k_pe]`` (and indexer key) at ``slots`` (−1: not stored)."""
        keep = slots.reshape(-1) >= 0
        rows = slots.reshape(-1)[keep]
        self.latent[layer][rows] = latent.reshape(-1, latent.shape[-1])[keep].to(self.latent[layer].dtype)
        if index_key is None:
            return
        keys = index_key.reshape(-1, index_key.shape[-1])[keep]
        if layer in self.index_scales:
            k8, scale = kernels.quant_fp8_per_token_group(keys.float(), keys.shape[-1])
            self.index_keys[layer][rows] = k8
            self.index_scales[layer][rows] = scale.view(-1)
        else:
            self.index_keys[layer][rows] = keys.float()


@dataclass
class CacheView:
    """What one forward step knows about the cache.

    ``positions``/``slots`` ``[B, T]``: the new tokens' absolute positions and cache slots (slot −1:
    a padding token, neither stored nor attended to). ``context_slots [B, C]``: the slot of every
    position ``0..C-1`` of each sequence after this step (−1 past its length).
    """

    cache: PagedKVCache
    positions: torch.Tensor
    slots: torch.Tensor
    context_slots: torch.Tensor

    @classmethod
    def contiguous(cls, config: GLM52Config, batch: int, tokens: int, dtype: torch.dtype,
                   device: torch.device | str) -> CacheView:
        """A throw-away cache for one causal prefill of ``batch`` sequences of ``tokens`` tokens."""
        blocks = -(-batch * tokens // BLOCK_SIZE)
        cache = PagedKVCache(config, max(blocks, 1), dtype, device, shared_storage=True)
        slots = torch.arange(batch * tokens, device=device).view(batch, tokens)
        positions = torch.arange(tokens, device=device).expand(batch, tokens)
        return cls(cache, positions, slots, slots)

    @classmethod
    def for_sequences(cls, cache: PagedKVCache, allocator: BlockAllocator, seq_ids: list[int],
                      positions: torch.Tensor) -> CacheView:
        """View for new tokens at ``positions [B, T]`` (−1: padding) of sequences ``seq_ids``;
        their blocks must already be reserved."""
        device = positions.device
        context = int(positions.max()) + 1 if positions.numel() else 0
        span = torch.arange(context, device=device)
        slots, context_slots = [], []
        for row, seq in enumerate(seq_ids):
            length = int(positions[row].max()) + 1
            slots.append(allocator.slots(seq, positions[row]))
            context_slots.append(allocator.slots(seq, torch.where(span < length, span, -1)))
        return cls(cache, positions, torch.stack(slots), torch.stack(context_slots))

    def causal_mask(self) -> torch.Tensor:
        """``[B, T, C]``: query (b, t) may see context position c (c ≤ its position, c stored)."""
        span = torch.arange(self.context_slots.shape[1], device=self.positions.device)
        return (span.view(1, 1, -1) <= self.positions.unsqueeze(-1)) & (self.context_slots >= 0).unsqueeze(1)
