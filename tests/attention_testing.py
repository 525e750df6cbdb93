"""Input builders shared by the attention tests: random (never zero) data, scattered pages."""

from __future__ import annotations

import torch

from glm52_ext import reference

BLOCK = reference.BLOCK_TOKENS


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_latent(t: int, g: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """[T, 576] bf16 latent rows with per-token magnitudes spread over two decades."""
    mag = torch.exp(torch.randn(t, 1, generator=g)) * scale
    return (torch.randn(t, 576, generator=g) * mag).to(torch.bfloat16)


def random_cache_bytes(shape, g: torch.Generator) -> torch.Tensor:
    """Garbage cache content (so a wrong read or write shows); 0x7f bytes avoided (e4m3 NaN)."""
    return torch.randint(0, 0x7F, shape, generator=g, dtype=torch.uint8)


def scattered_block_tables(lengths: list[int], num_blocks: int, g: torch.Generator, extra_cols: int = 1):
    """Block tables [B, max_blocks] int32 whose blocks are a random permutation of the cache (so pages
    are scattered), unused entries −1; returns (table, slots per sequence [list of int64 tensors])."""
    need = [reference.ceil_div(n, BLOCK) for n in lengths]
    assert sum(need) <= num_blocks
    perm = torch.randperm(num_blocks, generator=g)
    width = max(need + [0]) + extra_cols
    table = torch.full((len(lengths), width), -1, dtype=torch.int32)
    slots, used = [], 0
    for b, (n, nb) in enumerate(zip(lengths, need)):
        table[b, :nb] = perm[used : used + nb].to(torch.int32)
        used += nb
        pos = torch.arange(n)
        slots.append(table[b, pos // BLOCK].long() * BLOCK + pos % BLOCK)
    return table, slots


def paged_indexer_case(seq_lens: list[int], n: int, num_blocks: int, g: torch.Generator):
    """A paged indexer cache holding random keys of sequences ``seq_lens`` on scattered pages, and
    ``n`` query tokens per sequence with their own causal lengths: (table, cache, lengths [B, n] int32)."""
    from glm52_ext import ops

    table, slots = scattered_block_tables(seq_lens, num_blocks, g)
    cache = random_cache_bytes((num_blocks, 8448), g)
    for sl in slots:
        ops.indexer_cache_write(torch.randn(sl.numel(), 128, generator=g), sl, cache)
    lengths = torch.tensor([[max(c - n + j + 1, 0) for j in range(n)] for c in seq_lens], dtype=torch.int32)
    return table, cache, lengths
