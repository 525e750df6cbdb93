"""Context parallelism's rank-independent merges, single process: a cache split into C block-striped
shards, each shard's fused top-k and sparse attention run alone, the merges equal the unsplit result."""

from __future__ import annotations

import pytest
import torch
from attention_testing import gen, random_latent

from glm52.context_parallel import merge_attention_partials, merge_topk_candidates, striped_positions
from glm52_ext import ops


def fp8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-448, 448).to(torch.float8_e4m3fn)


def shard_scores(q8, w, k8, k_scale, ks, ke, keep: torch.Tensor, k: int):
    """One rank: the fused top-k over its own keys (local rows), mapped to global positions, and the
    candidates' scores (what a rank would send)."""
    local_ks = torch.searchsorted(keep, ks.long()).int()
    local_ke = torch.searchsorted(keep, ke.long()).int()
    local = ops.indexer_topk(q8, w, k8[keep].contiguous(), k_scale[keep].contiguous(), local_ks, local_ke, k)
    logits = ops.indexer_logits(q8, w, k8[keep].contiguous(), k_scale[keep].contiguous(), local_ks, local_ke)
    scores = torch.where(local >= 0, logits.gather(1, local.clamp_min(0).long()), float("nan"))
    return torch.where(local >= 0, keep[local.clamp_min(0).long()], -1), scores


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 37, 300])
def test_topk_merge_of_striped_shards_equals_unsplit(cp, k):
    g = gen(cp * 1000 + k)
    s, h, l = 9, 4, 1000
    integer = k == 37  # exact-integer scores: many ties across shards
    if integer:
        q8 = fp8(torch.randint(-2, 3, (s, h, 128), generator=g).float())
        k8 = fp8(torch.randint(-1, 2, (l, 128), generator=g).float())
        w, k_scale = torch.ones(s, h), torch.ones(l)
    else:
        q8, k8 = fp8(torch.randn(s, h, 128, generator=g) * 40), fp8(torch.randn(l, 128, generator=g) * 40)
        w, k_scale = torch.randn(s, h, generator=g) * 1e-3, torch.rand(l, generator=g) + 0.1
    ks = torch.zeros(s, dtype=torch.int32)
    ke = torch.tensor([l, 0, 1, 63, 64, 65, 500, 999, 2 * k], dtype=torch.int32)  # causal-like ends
    want = ops.indexer_topk(q8, w, k8, k_scale, ks, ke, k)
    cands = [shard_scores(q8, w, k8, k_scale, ks, ke, striped_positions(l, r, cp), k) for r in range(cp)]
    positions = torch.stack([c[0] for c in cands], dim=1)
    scores = torch.stack([c[1] for c in cands], dim=1)
    assert torch.equal(merge_topk_candidates(positions, scores, k), want)


def test_topk_merge_ignores_padding_scores():
    positions = torch.tensor([[[5, -1], [2, 9]]])
    scores = torch.tensor([[[1.0, 99.0], [1.0, float("-inf")]]])
    assert merge_topk_candidates(positions, scores, 3).tolist() == [[2, 5, -1]]


@pytest.mark.parametrize("cp", [2, 4])
def test_lse_merge_of_striped_shards_equals_unsplit(cp):
    g = gen(cp)
    s, h, l, k = 6, 8, 700, 120
    q = (torch.randn(s, h, 576, generator=g) * 0.3).to(torch.bfloat16)
    kv = random_latent(l, g, 0.5)
    indices = torch.stack([torch.randperm(l, generator=g)[:k] for _ in range(s)]).int()
    indices[1, 50:] = -1
    indices[2] = -1  # no key: zeros and -inf everywhere
    indices[3, :] = torch.arange(64, 64 + k).int()  # every key on one block stripe set
    sm = 256**-0.5
    want, want_lse = ops.sparse_mla_prefill(q, kv, indices, sm)
    owner = (indices.long().clamp_min(0) // 64) % cp
    parts = [ops.sparse_mla_prefill(q, kv, torch.where((owner == r) & (indices >= 0), indices, -1), sm)
             for r in range(cp)]
    out, lse = merge_attention_partials(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]))
    torch.testing.assert_close(lse, want_lse, rtol=1e-5, atol=1e-5)
    assert torch.isneginf(lse[2]).all() and (out[2] == 0).all()
    # Each partial output is rounded to bf16 once before the merge: within two bf16 roundings.
    torch.testing.assert_close(out.float(), want.float(), rtol=2e-2, atol=2e-2 * want.float().abs().max().item())
