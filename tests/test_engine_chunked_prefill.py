"""Chunked prefill: prompts prefilled in chunks against the cached prefix give the greedy tokens of the
unchunked engine and of plain greedy decoding (spec on and off, so the MTP catch-up runs per chunk);
the streaming model-format indexer equals the materialized top-k; bad requests are refused before
anything is allocated and the engine keeps serving."""

from __future__ import annotations

import pytest
import torch

from glm52 import GLM52Config, GLM52ForCausalLM, synthetic
from glm52.checkpoint import init_random_
from glm52.engine import Engine
from glm52 import kv_cache
from glm52.kv_cache import CacheFullError, streaming_topk
from glm52_ext import ops


def random_model(seed: int = 0, **overrides) -> GLM52ForCausalLM:
    return init_random_(GLM52ForCausalLM(GLM52Config.preset("tiny").replace(**overrides)), seed).eval()


def prompts(config: GLM52Config, lengths, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, config.vocab_size, (n,), generator=g).tolist() for n in lengths]


@pytest.mark.parametrize("spec_steps", [0, 2])
@pytest.mark.parametrize("chunk", [1, 16, 50])
def test_chunked_prefill_equals_unchunked(spec_steps, chunk):
    model = synthetic.bigram_model(GLM52Config.preset("tiny"), 0, 0.02) if spec_steps else random_model(0)
    batch = prompts(model.config, (130, 7, 64))
    want = Engine(model, spec_steps=spec_steps, prefill_chunk_tokens=8192).generate(batch, 8)
    got = Engine(model, spec_steps=spec_steps, prefill_chunk_tokens=chunk).generate(batch, 8)
    assert got.tokens == want.tokens
    if spec_steps:  # the MTP layer saw the same prompt positions: its drafts are accepted alike
        assert got.accepted_per_step == pytest.approx(want.accepted_per_step)


def test_streaming_topk_equals_materialized(monkeypatch):
    """Tiles smaller than the row (several per query tile and per key tile), ties, −inf, visible
    lengths, and key tiles skipped past the host-known last positions."""
    monkeypatch.setattr(kv_cache, "QUERY_TILE", 7)
    monkeypatch.setattr(kv_cache, "KEY_TILE", 33)
    g = torch.Generator().manual_seed(0)
    b, t, c, k = 2, 20, 150, 16
    scores = torch.randint(-3, 4, (b, t, c), generator=g).float()
    scores[:, :, 100:] = float("-inf")
    scores[1, 3] = float("-inf")
    got = streaming_topk(lambda rows, cols: (scores[:, rows, cols], None), b, t, c, k, "cpu")
    want = ops.topk_indices(scores.flatten(0, 1).contiguous(), k).view(b, t, k)
    assert torch.equal(got, want)

    # Causal: query t at position 110 + t (sequence 0) or 40 + 3t (sequence 1) sees columns up to it.
    positions = torch.stack((110 + torch.arange(t), 40 + 3 * torch.arange(t)))
    visible = positions + 1
    poisoned = torch.randn(b, t, c, generator=g)  # what lies past a query's length must not count
    tile = lambda rows, cols: (poisoned[:, rows, cols].clone(),  # noqa: E731
                               (visible[:, rows] - cols.start).clamp(0, cols.stop - cols.start).int())
    last = tuple(positions.amax(0).tolist())
    masked = poisoned.masked_fill(torch.arange(c) >= visible[..., None], float("-inf"))
    want = ops.topk_indices(masked.flatten(0, 1).contiguous(), k).view(b, t, k)
    assert torch.equal(streaming_topk(tile, b, t, c, k, "cpu", last), want)
    assert torch.equal(streaming_topk(tile, b, t, c, k, "cpu"), want)


def test_bad_requests_are_refused_and_the_engine_keeps_serving():
    model = random_model(1)
    engine = Engine(model, spec_steps=1, cache_bytes=cache_bytes_for_blocks(model, 4))
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"max_position_embeddings = {limit}"):
        engine.generate([[1] * 10, [2] * (limit - 3)], 4)
    with pytest.raises(CacheFullError, match="need 5 more blocks .* the cache budget's 4 free blocks"):
        engine.generate([[1] * 300], 4)
    assert engine.allocator.num_free == engine.allocator.num_blocks
    engine.allocator.check()
    assert len(engine.generate([[1, 2, 3]], 4).tokens[0]) == 4
    with pytest.raises(ValueError, match="prefill_chunk_tokens"):
        Engine(model, prefill_chunk_tokens=0)


def cache_bytes_for_blocks(model: GLM52ForCausalLM, blocks: int) -> int:
    return blocks * kv_cache.PagedKVCache.bytes_per_block(model.config, model.model.embed_tokens.weight.dtype)
