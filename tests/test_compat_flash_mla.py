"""glm52_ext.compat.flash_mla against glm52's ops and plain-PyTorch transcriptions of FlashMLA's
documented semantics (its tests/ref.py): h_kv = 1 shapes, invalid indices, an empty row (lse +inf,
max_logits -inf, out 0), topk_length, attn_sink, the 4-D FP8 cache view, and the decode plan."""

from __future__ import annotations

import math

import pytest
import torch
from attention_testing import gen, random_latent, scattered_block_tables
from conftest import DEVICES

from glm52_ext import ops, reference
from glm52_ext.compat import flash_mla

SM_SCALE = 256**-0.5


def ref_sparse_attn_fwd(q, kv, indices, sm_scale, attn_sink=None, topk_length=None):
    """FlashMLA's ref_sparse_attn_fwd, transcribed (float64): returns (out, max_logits, lse)."""
    s_q, topk = q.shape[0], indices.shape[-1]
    idx = indices[:, 0].clone().long()
    if topk_length is not None:
        idx[torch.arange(topk)[None, :] >= topk_length[:, None]] = -1
    invalid = (idx < 0) | (idx >= kv.shape[0])
    idx[invalid] = 0
    keys = kv[:, 0].double()[idx]  # [s_q, topk, 576]
    p = torch.einsum("shd,skd->shk", q.double(), keys) * sm_scale
    p[invalid[:, None, :].expand_as(p)] = -math.inf
    lse = torch.logsumexp(p, dim=-1)
    max_logits = p.max(dim=-1).values if topk else torch.full(lse.shape, -math.inf, dtype=torch.float64)
    lse_for_o = lse if attn_sink is None else torch.logsumexp(torch.stack([lse, attn_sink.double().expand_as(lse)]), 0)
    lse_for_o = lse_for_o.masked_fill(lse_for_o == -math.inf, math.inf)
    out = torch.exp(p - lse_for_o[..., None]) @ keys[..., :512]
    return out, max_logits, lse.masked_fill(lse == -math.inf, math.inf)


def fp8_cache_keys(cache: torch.Tensor) -> torch.Tensor:
    """Dequantize a FlashMLA FP8 cache [blocks, 64, 1, 656] per its documented layout: 512 e4m3,
    4 fp32 scales (one per 128 values), 64 bf16 rope values -> float64 [blocks * 64, 576]."""
    rows = cache.reshape(-1, 656)
    nope = rows[:, :512].contiguous().view(torch.float8_e4m3fn).double()
    scales = rows[:, 512:528].contiguous().view(torch.float32).double()
    rope = rows[:, 528:].contiguous().view(torch.bfloat16).double()
    return torch.cat([nope * scales.repeat_interleave(128, dim=1), rope], dim=1)


def ref_sparse_attn_decode(q, keys, indices, sm_scale, attn_sink=None, topk_length=None):
    """FlashMLA's ref_sparse_attn_decode, transcribed (float64): out [b, s_q, h_q, 512], lse [b, h_q, s_q]."""
    b, s_q, h_q, _ = q.shape
    topk = indices.shape[-1]
    invalid = indices == -1
    if topk_length is not None:
        invalid |= torch.arange(topk).view(1, 1, topk) >= topk_length.view(b, 1, 1)
    kv = keys[indices.clamp_min(0).long()].view(b * s_q, topk, 576)
    w = torch.einsum("rhd,rkd->rhk", q.double().view(b * s_q, h_q, 576), kv) * sm_scale
    w[invalid.view(b * s_q, 1, topk).expand_as(w)] = -math.inf
    lse = w.logsumexp(-1)
    out = (torch.exp(w - lse[..., None]) @ kv[..., :512]).view(b, s_q, h_q, 512)
    lse = lse.view(b, s_q, h_q)
    if attn_sink is not None:
        out = out * (1.0 / (1.0 + torch.exp(attn_sink.double().view(1, 1, h_q) - lse)))[..., None]
    lonely = lse == -math.inf
    out[lonely] = 0.0
    return out, lse.masked_fill(lonely, math.inf).transpose(1, 2)


def assert_close_lse(got, want):
    assert torch.equal(torch.isinf(got), torch.isinf(want)) and torch.equal(got[torch.isinf(got)], want[torch.isinf(want)].float())
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin].double(), want[fin], rtol=1e-5, atol=1e-4)


def prefill_inputs(g, s_q=5, h_q=16, s_kv=150, topk=40):
    q = random_latent(s_q * h_q, g, scale=0.5).view(s_q, h_q, 576)
    kv = random_latent(s_kv, g).view(s_kv, 1, 576)
    idx = torch.stack([torch.randperm(s_kv, generator=g)[:topk] for _ in range(s_q)]).int()
    idx[0, :3] = torch.tensor([-1, s_kv, s_kv + 7])  # invalid: -1 and past the end
    idx[2] = -1  # an empty row
    return q, kv, idx.view(s_q, 1, topk)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_fwd_matches_the_op_and_flash_mla_reference(device):
    g = gen(1)
    q, kv, idx = prefill_inputs(g)
    out, max_logits, lse = flash_mla.flash_mla_sparse_fwd(q.to(device), kv.to(device), idx.to(device), SM_SCALE)
    assert out.shape == (5, 16, 512) and max_logits.shape == lse.shape == (5, 16)
    want_out, want_lse = ops.sparse_mla_prefill(q, kv[:, 0].contiguous(), idx[:, 0].contiguous(), SM_SCALE)
    assert torch.equal(out.cpu(), want_out)
    assert torch.equal(lse.cpu(), want_lse.masked_fill(torch.isneginf(want_lse), math.inf))
    r_out, r_max, r_lse = ref_sparse_attn_fwd(q, kv, idx, SM_SCALE)
    torch.testing.assert_close(out.cpu().double(), r_out, rtol=1e-2, atol=1e-2)
    assert_close_lse(lse.cpu(), r_lse)
    assert_close_lse(max_logits.cpu(), r_max)
    assert (lse[2].cpu() == math.inf).all() and (max_logits[2].cpu() == -math.inf).all() and (out[2].cpu() == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_fwd_topk_length_and_attn_sink(device):
    g = gen(2)
    q, kv, idx = prefill_inputs(g)
    topk_length = torch.tensor([40, 0, 13, 1, 25], dtype=torch.int32)
    sink = torch.randn(16, generator=g)
    sink[0], sink[1] = math.inf, -math.inf  # +inf zeroes the output, -inf has no effect
    out, max_logits, lse = flash_mla.flash_mla_sparse_fwd(q.to(device), kv.to(device), idx.to(device), SM_SCALE,
                                                          attn_sink=sink.to(device), topk_length=topk_length.to(device))
    r_out, r_max, r_lse = ref_sparse_attn_fwd(q, kv, idx, SM_SCALE, sink, topk_length)
    torch.testing.assert_close(out.cpu().double(), r_out, rtol=1e-2, atol=1e-2)
    assert_close_lse(lse.cpu(), r_lse)
    assert_close_lse(max_logits.cpu(), r_max)
    assert (out[:, 0].cpu() == 0).all() and (lse[1].cpu() == math.inf).all()


def fp8_cache(g, seq_lens, num_blocks, device):
    """A FlashMLA-view FP8 cache [num_blocks, 64, 1, 656] written through the 4-D view itself."""
    table, slots = scattered_block_tables(seq_lens, num_blocks, g)
    cache4 = torch.zeros(num_blocks, 64, 1, 656, dtype=torch.uint8, device=device)
    cache3 = torch.zeros(num_blocks, 64, 656, dtype=torch.uint8, device=device)
    all_slots = torch.cat(slots)
    kv = random_latent(all_slots.numel(), g)
    ops.mla_cache_write(kv.to(device), all_slots.to(device), cache4)
    ops.mla_cache_write(kv.to(device), all_slots.to(device), cache3)
    assert torch.equal(cache4.view(num_blocks, 64, 656), cache3)  # same bytes through either view
    return cache4, slots


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("legacy_metadata", [False, True])
def test_with_kvcache_sparse_decode_over_the_4d_fp8_cache(device, legacy_metadata):
    g = gen(3)
    b, s_q, h_q, topk = 3, 2, 16, 48
    cache, slots = fp8_cache(g, [70, 130, 20], 8, device)
    indices = torch.stack([torch.stack([s[torch.randperm(s.numel(), generator=g)[:topk]] if s.numel() >= topk else
                                        torch.cat([s, torch.full((topk - s.numel(),), -1)]) for _ in range(s_q)])
                           for s in slots]).int()
    indices[1, 1] = -1  # an empty query row
    q = random_latent(b * s_q * h_q, g, scale=0.5).view(b, s_q, h_q, 576)
    if legacy_metadata:
        meta, splits = flash_mla.get_mla_metadata(torch.zeros(b, dtype=torch.int32, device=device), s_q * h_q, 1, h_q, True, topk)
        assert meta.shape[1] == 8 and splits.shape == (b + 1,)
    else:
        meta, splits = flash_mla.get_mla_metadata()
        assert splits is None and not meta.have_initialized
    out, lse = flash_mla.flash_mla_with_kvcache(q.to(device), cache, None, None, 512, meta, splits,
                                                softmax_scale=SM_SCALE, is_fp8_kvcache=True, indices=indices.to(device))
    assert out.shape == (b, s_q, h_q, 512) and lse.shape == (b, h_q, s_q)
    plan = (meta, splits) if legacy_metadata else (meta.tile_scheduler_metadata, meta.num_splits)
    want_out, want_lse = ops.sparse_mla_decode(q.to(device), cache.view(8, 64, 656), indices.to(device), SM_SCALE,
                                               tile_scheduler_metadata=plan[0], num_splits=plan[1])
    assert torch.equal(out, want_out)
    assert torch.equal(lse, want_lse.masked_fill(torch.isneginf(want_lse), math.inf).transpose(1, 2))
    unsplit_out, unsplit_lse = ops.sparse_mla_decode(q, cache.cpu().view(8, 64, 656), indices, SM_SCALE)
    torch.testing.assert_close(out.cpu().float(), unsplit_out.float(), rtol=2**-7, atol=1e-5)
    torch.testing.assert_close(lse.cpu().transpose(1, 2)[torch.isfinite(unsplit_lse)],
                               unsplit_lse[torch.isfinite(unsplit_lse)], rtol=1e-6, atol=1e-5)
    r_out, r_lse = ref_sparse_attn_decode(q, fp8_cache_keys(cache.cpu()), indices, SM_SCALE)
    torch.testing.assert_close(out.cpu().double(), r_out, rtol=2e-2, atol=2e-2)
    assert_close_lse(lse.cpu(), r_lse)
    assert (lse[1, :, 1].cpu() == math.inf).all() and (out[1, 1].cpu() == 0).all()
    if not legacy_metadata:  # planned by the first call, then reused while the shapes hold
        assert meta.have_initialized and meta.num_splits.shape == (b + 1,)
        flash_mla.flash_mla_with_kvcache(q.to(device), cache, None, None, 512, meta, softmax_scale=SM_SCALE,
                                         is_fp8_kvcache=True, indices=indices.to(device))
        with pytest.raises(ValueError, match="argument 'tile_scheduler_metadata' was planned for"):
            flash_mla.flash_mla_with_kvcache(q[:1].to(device), cache, None, None, 512, meta, softmax_scale=SM_SCALE,
                                             is_fp8_kvcache=True, indices=indices[:1].to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_with_kvcache_topk_length_and_sink(device):
    g = gen(4)
    b, s_q, h_q, topk = 2, 1, 8, 64
    cache, slots = fp8_cache(g, [100, 90], 4, device)
    indices = torch.stack([s[:topk].view(1, topk) for s in slots]).int()
    topk_length = torch.tensor([10, 0], dtype=torch.int32)
    sink = torch.randn(h_q, generator=g)
    q = random_latent(b * s_q * h_q, g, scale=0.5).view(b, s_q, h_q, 576)
    meta, _ = flash_mla.get_mla_metadata()
    out, lse = flash_mla.flash_mla_with_kvcache(q.to(device), cache, None, None, 512, meta, softmax_scale=SM_SCALE,
                                                is_fp8_kvcache=True, indices=indices.to(device), attn_sink=sink.to(device),
                                                topk_length=topk_length.to(device))
    r_out, r_lse = ref_sparse_attn_decode(q, fp8_cache_keys(cache.cpu()), indices, SM_SCALE, sink, topk_length)
    torch.testing.assert_close(out.cpu().double(), r_out, rtol=2e-2, atol=2e-2)
    assert_close_lse(lse.cpu(), r_lse)
    # The plan saw each row's own top-k length: row 0 is one 64-block, row 1 none.
    assert meta.tile_scheduler_metadata.shape[1] == 8


@pytest.mark.parametrize("device", DEVICES)
def test_decode_plan_matches_its_definition(device):
    for row_topk, parts in [([2048, 2048, 2048], 132), ([2048] * 5, 4), ([10, 0, 2048, 64, 65], 7), ([], 3), ([0], 2),
                            ([3000, 1, 4000], 33)]:
        meta, splits = flash_mla.plan_sparse_decode(torch.tensor(row_topk, dtype=torch.int32, device=device), parts)
        want_meta, want_splits = reference.sparse_mla_decode_metadata(torch.tensor(row_topk, dtype=torch.int32), parts)
        assert torch.equal(meta.cpu(), want_meta), (row_topk, parts)
        assert torch.equal(splits.cpu(), want_splits), (row_topk, parts)


def test_unsupported_arguments_are_named():
    g = gen(5)
    q, kv, idx = prefill_inputs(g)
    with pytest.raises(ValueError, match="argument 'kv' must be"):
        flash_mla.flash_mla_sparse_fwd(q, kv.expand(-1, 2, -1), idx, SM_SCALE)
    with pytest.raises(ValueError, match="argument 'd_v'"):
        flash_mla.flash_mla_sparse_fwd(q, kv, idx, SM_SCALE, d_v=256)
    qd = q[:2].view(1, 2, 16, 576)
    cache = torch.zeros(2, 64, 1, 656, dtype=torch.uint8)
    meta, _ = flash_mla.get_mla_metadata()
    ind = torch.zeros(1, 2, 4, dtype=torch.int32)
    for kwargs, message in [(dict(indices=None), "argument 'indices' is required"),
                            (dict(causal=True), "argument 'causal'"),
                            (dict(is_fp8_kvcache=False), "argument 'is_fp8_kvcache'"),
                            (dict(extra_k_cache=cache), "argument 'extra_k_cache'")]:
        call = dict(indices=ind, is_fp8_kvcache=True) | kwargs
        with pytest.raises(ValueError, match=message):
            flash_mla.flash_mla_with_kvcache(qd, cache, None, None, 512, meta, **call)
    with pytest.raises(ValueError, match="argument 'num_splits'"):
        flash_mla.flash_mla_with_kvcache(qd, cache, None, None, 512, torch.zeros(4, 8, dtype=torch.int32), None,
                                         indices=ind, is_fp8_kvcache=True)
    with pytest.raises(ValueError, match="argument 'topk'"):
        flash_mla.get_mla_metadata(torch.zeros(1, dtype=torch.int32), 32, 1)
