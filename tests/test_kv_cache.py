"""glm52.kv_cache.PagedKVCache: allocation, tables, slots, rollback, and a decode round trip
through the attention ops (write keys by slot, read them back through block tables)."""

from __future__ import annotations

import pytest
import torch

from glm52.kv_cache import CacheFullError, PagedKVCache
from glm52_ext import ops, reference


def test_allocation_tables_and_rollback():
    cache = PagedKVCache(num_blocks=5, num_layers=2, indexer_layers=[0], mla_format="bf16")
    cache.add_sequence(7)
    cache.add_sequence(9)
    s7 = cache.append(7, 70)  # 2 blocks
    s9 = cache.append(9, 64)  # 1 block
    assert cache.free_blocks == 2 and s7.dtype == torch.int64
    assert len(set(s7.tolist()) | set(s9.tolist())) == 134  # no slot shared
    table = cache.block_table([7, 9], width=4)
    assert table.shape == (2, 4) and table[1, 1:].tolist() == [-1, -1, -1]
    assert torch.equal(reference.positions_to_slots(table, torch.arange(70).view(1, 70).expand(2, 70), 5)[0], s7)
    with pytest.raises(CacheFullError):
        cache.append(9, 200)
    assert cache.length(9) == 64 and cache.free_blocks == 2  # nothing allocated on failure
    cache.truncate(7, 63)
    assert cache.free_blocks == 3 and cache.length(7) == 63
    assert cache.slots(7, torch.tensor([62, 63, -1])).tolist()[1:] == [-1, -1]
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(7, 64)
    cache.free_sequence(7)
    assert cache.free_blocks == 4
    assert cache.mla[1].shape == (5, 64, 1152) and set(cache.indexer) == {0}


def test_query_lengths_and_device_slot_lookup():
    lens = torch.tensor([5, 100], dtype=torch.int32)
    assert PagedKVCache.query_lengths(lens, 3).tolist() == [[3, 4, 5], [98, 99, 100]]
    table = torch.tensor([[4, 2], [1, -1]], dtype=torch.int32)
    pos = torch.tensor([[0, 65, -1], [3, 64, 200]])
    assert PagedKVCache.positions_to_slots(table, pos).tolist() == [[256, 129, -1], [67, -1, -1]]


def test_decode_round_trip_through_the_ops():
    """Keys appended in pieces (prefill, then 3 draft tokens) land where block tables say: sparse
    decode over the slots of the top-k positions equals the reference over the same rows."""
    g = torch.Generator().manual_seed(0)
    cache = PagedKVCache(num_blocks=8, num_layers=1, indexer_layers=[0], mla_format="fp8")
    seqs, kv = [0, 1], {}
    for s, n in zip(seqs, (100, 40)):
        cache.add_sequence(s)
        kv[s] = torch.randn(n + 3, 576, generator=g).bfloat16()
        ops.mla_cache_write(kv[s][:n], cache.append(s, n), cache.mla[0])
        ops.mla_cache_write(kv[s][n:], cache.append(s, 3), cache.mla[0])  # MTP drafts
    table, lengths = cache.block_table(seqs), cache.lengths(seqs)
    positions = torch.full((2, 3, 32), -1)
    for b in range(2):
        for j, n in enumerate(PagedKVCache.query_lengths(lengths, 3)[b].tolist()):
            positions[b, j, : min(32, n)] = torch.randperm(n, generator=g)[:32]
    slots = PagedKVCache.positions_to_slots(table, positions)
    q = torch.randn(2, 3, 4, 576, generator=g).bfloat16()
    out, lse = ops.sparse_mla_decode(q, cache.mla[0], slots, 0.0625)
    for b in range(2):  # the same rows, gathered from the sequence's own keys by position
        rows = reference.mla_cache_read(cache.mla[0])[cache.slots(b, torch.arange(cache.length(b)))]
        torch.testing.assert_close(rows[:, 512:], kv[b][:, 512:].float())
        want_out, want_lse = reference.sparse_mla_prefill(q[b], rows.bfloat16(), positions[b].int(), 0.0625)
        torch.testing.assert_close(lse[b], want_lse, rtol=1e-5, atol=5e-3)
        torch.testing.assert_close(out[b].float(), want_out.float(), rtol=2e-2, atol=2e-2)
