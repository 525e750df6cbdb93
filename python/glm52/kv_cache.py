"""Paged KV caches for GLM-5.2 decoding: a block allocator, per-sequence block tables and slot
mapping, and the per-layer cache tensors the attention ops read and write (DESIGN §2.3, §3).

Every layer's caches are indexed by the same block ids (one allocation serves all layers): block b
holds tokens ``[64 i, 64 i + 64)`` of the sequence whose table lists b at position i. A *slot* is
``block * 64 + offset``; −1 means none. The MLA cache of each layer is uint8
``[num_blocks, 64, 1152]`` (BF16) or ``[num_blocks, 64, 656]`` (FP8); full (indexer) layers also
have an indexer cache uint8 ``[num_blocks, 8448]`` (byte layouts: :mod:`glm52_ext.ops.attention`).

Speculative decoding writes the draft tokens' keys, verifies, then :meth:`PagedKVCache.truncate`
rolls each sequence back to its accepted length (freeing whole blocks past it); stale keys past
a sequence's length are never read because every op is given the lengths.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

BLOCK_TOKENS = 64
MLA_TOKEN_BYTES = {"bf16": 1152, "fp8": 656}
INDEX_BLOCK_BYTES = BLOCK_TOKENS * 132


class CacheFullError(RuntimeError):
    """No free block is left for the tokens asked for (nothing was allocated)."""


class PagedKVCache:
    """Block allocator + block tables + per-layer cache tensors.

    Parameters
    ----------
    num_blocks : int
        Blocks of 64 tokens shared by all sequences.
    num_layers : int
        Layers with an MLA cache (78 main layers + the MTP layer for GLM-5.2).
    indexer_layers : iterable of int
        Layers that also keep an indexer cache (the full layers of IndexShare, plus the MTP layer).
    mla_format : str
        ``"bf16"`` or ``"fp8"``.
    device : torch.device or str
    """

    def __init__(self, num_blocks: int, num_layers: int, indexer_layers: Iterable[int], mla_format: str = "fp8",
                 device: torch.device | str = "cpu") -> None:
        if mla_format not in MLA_TOKEN_BYTES:
            raise ValueError(f"PagedKVCache: mla_format must be 'bf16' or 'fp8', got {mla_format!r}")
        if num_blocks < 0:
            raise ValueError(f"PagedKVCache: num_blocks must be >= 0, got {num_blocks}")
        self.num_blocks, self.device = num_blocks, torch.device(device)
        width = MLA_TOKEN_BYTES[mla_format]
        self.mla = [torch.zeros(num_blocks, BLOCK_TOKENS, width, dtype=torch.uint8, device=self.device)
                    for _ in range(num_layers)]
        self.indexer = {int(i): torch.zeros(num_blocks, INDEX_BLOCK_BYTES, dtype=torch.uint8, device=self.device)
                        for i in indexer_layers}
        self._free = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._blocks: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}

    # --- sequences -------------------------------------------------------------------------------

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def length(self, seq: int) -> int:
        return self._lengths[seq]

    def add_sequence(self, seq: int) -> None:
        if seq in self._lengths:
            raise ValueError(f"PagedKVCache: sequence {seq} already exists")
        self._blocks[seq], self._lengths[seq] = [], 0

    def free_sequence(self, seq: int) -> None:
        """Return all of a sequence's blocks to the pool."""
        self._free.extend(reversed(self._blocks.pop(seq)))
        del self._lengths[seq]

    def append(self, seq: int, num_tokens: int) -> torch.Tensor:
        """Reserve the next ``num_tokens`` positions of ``seq``: their slots, int64 ``[num_tokens]``
        (for ``mla_cache_write`` / ``indexer_cache_write``). Raises :class:`CacheFullError`, allocating
        nothing, when the pool is short."""
        start = self._lengths[seq]
        blocks = self._blocks[seq]
        need = -(-(start + num_tokens) // BLOCK_TOKENS) - len(blocks)
        if need > len(self._free):
            raise CacheFullError(f"PagedKVCache: sequence {seq} needs {need} more blocks, {len(self._free)} free")
        blocks.extend(self._free.pop() for _ in range(need))
        self._lengths[seq] = start + num_tokens
        return self.slots(seq, torch.arange(start, start + num_tokens))

    def truncate(self, seq: int, length: int) -> None:
        """Roll ``seq`` back to ``length`` tokens (rejected draft tokens), freeing blocks past it."""
        if not 0 <= length <= self._lengths[seq]:
            raise ValueError(f"PagedKVCache: cannot truncate sequence {seq} of {self._lengths[seq]} tokens to {length}")
        blocks = self._blocks[seq]
        keep = -(-length // BLOCK_TOKENS)
        self._free.extend(reversed(blocks[keep:]))
        del blocks[keep:]
        self._lengths[seq] = length

    # --- tables and slots ------------------------------------------------------------------------

    def slots(self, seq: int, positions: torch.Tensor) -> torch.Tensor:
        """Slots (int64) of ``positions`` of ``seq``; −1 for negative positions or positions at or
        beyond its length."""
        pos = positions.to(torch.int64).cpu()
        blocks = torch.tensor(self._blocks[seq] + [-1], dtype=torch.int64)
        ok = (pos >= 0) & (pos < self._lengths[seq])
        block = blocks[torch.where(ok, pos // BLOCK_TOKENS, len(blocks) - 1)]
        return torch.where(ok, block * BLOCK_TOKENS + pos % BLOCK_TOKENS, -1).to(self.device)

    def block_table(self, seqs: Sequence[int], width: int | None = None) -> torch.Tensor:
        """int32 ``[len(seqs), width]`` block ids, −1 padded (width: the longest table by default;
        pass a fixed width to keep shapes static for CUDA graphs)."""
        longest = max((len(self._blocks[s]) for s in seqs), default=0)
        width = longest if width is None else width
        if width < longest:
            raise ValueError(f"PagedKVCache: block_table width {width} < {longest} blocks in use")
        table = torch.full((len(seqs), width), -1, dtype=torch.int32)
        for i, s in enumerate(seqs):
            table[i, : len(self._blocks[s])] = torch.tensor(self._blocks[s], dtype=torch.int32)
        return table.to(self.device)

    def lengths(self, seqs: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self._lengths[s] for s in seqs], dtype=torch.int32, device=self.device)

    @staticmethod
    def query_lengths(context_lengths: torch.Tensor, num_queries: int) -> torch.Tensor:
        """Causal lengths ``[B, n]`` of the last ``n`` tokens of each sequence (their keys already
        appended): query j sees ``context - n + j + 1`` tokens (for ``indexer_logits_paged``)."""
        j = torch.arange(num_queries, dtype=torch.int32, device=context_lengths.device)
        return (context_lengths.view(-1, 1) - num_queries + 1 + j).clamp_min(0).to(torch.int32)

    @staticmethod
    def positions_to_slots(block_table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Device-side slot lookup: ``positions [B, ...]`` (e.g. top-k output, −1 padded) through
        ``block_table [B, width]`` → int32 slots, −1 where the position is −1 or unmapped (for
        ``sparse_mla_decode``). No host synchronization."""
        b, width = block_table.shape
        pos = positions.reshape(b, -1).to(torch.int64)
        ok = (pos >= 0) & (pos < width * BLOCK_TOKENS)
        col = torch.where(ok, pos // BLOCK_TOKENS, 0)
        block = block_table.to(torch.int64).gather(1, col) if width else torch.zeros_like(pos)
        ok &= block >= 0
        return torch.where(ok, block * BLOCK_TOKENS + pos % BLOCK_TOKENS, -1).to(torch.int32).reshape(positions.shape)
