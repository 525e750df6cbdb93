"""sparse_mla_prefill and sparse_mla_decode against the reference (and against dense causal
attention where the selection holds every key): heads 1..128, −1 and out-of-range indices, empty
rows, scattered pages, BF16 and FP8 caches."""

from __future__ import annotations

import pytest
import torch
from attention_testing import gen, random_cache_bytes, random_latent, scattered_block_tables
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference

SM_SCALE = 256**-0.5


def random_indices(rows: int, k: int, num_keys: int, g: torch.Generator) -> torch.Tensor:
    """Distinct indices per row in random order, with −1 padding and a few out-of-range entries."""
    idx = torch.stack([torch.randperm(max(num_keys, k), generator=g)[:k] for _ in range(rows)]).int()
    idx[idx >= num_keys] = -1
    if rows and k > 4:
        idx[0, :2] = torch.tensor([num_keys, num_keys + 100])  # out of range: ignored
    return idx


def assert_attention_close(out, lse, want_out, want_lse):
    out, lse = out.cpu(), lse.cpu()
    assert out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(out.float(), want_out.float(), rtol=1e-2, atol=1e-2)
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    fin = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[fin], want_lse[fin], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads", [1, 8, 64, 128])
@pytest.mark.parametrize("s,l,k", [(3, 200, 70), (2, 150, 130)])
def test_sparse_mla_prefill_matches_reference(device, heads, s, l, k):
    g = gen(heads + s + k)
    q = random_latent(s * heads, g, scale=0.5).view(s, heads, 576)
    kv = random_latent(l, g)
    idx = random_indices(s, k, l, g)
    idx[-1] = -1  # a row with no valid index: zeros, lse -inf
    want_out, want_lse = reference.sparse_mla_prefill(q, kv, idx, SM_SCALE)
    assert torch.isneginf(want_lse[-1]).all() and (want_out[-1] == 0).all()
    out, lse = poisoned((s, heads, 512), torch.bfloat16, device), poisoned((s, heads), torch.float32, device)
    ops.sparse_mla_prefill(q.to(device), kv.to(device), idx.to(device), SM_SCALE, out=out, lse=lse)
    assert_attention_close(out, lse, want_out, want_lse)
    assert (out[-1].cpu() == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [1, 64, 100])
def test_sparse_prefill_with_every_causal_key_equals_dense_attention(device, t):
    """Up to index_topk tokens of context the sparse selection holds every causal key: the result
    is dense causal attention (an independent oracle: torch SDPA in fp32, values = c_kv)."""
    g = gen(t)
    heads = 4
    q = random_latent(t * heads, g, scale=0.5).view(t, heads, 576)
    kv = random_latent(t, g)
    idx = torch.arange(t).expand(t, t).clone().int()
    idx[idx > torch.arange(t).unsqueeze(1)] = -1  # causal
    out, lse = ops.sparse_mla_prefill(q.to(device), kv.to(device), idx.to(device), SM_SCALE)
    qf, kf = q.float().transpose(0, 1), kv.float().expand(heads, t, 576)
    dense = torch.nn.functional.scaled_dot_product_attention(qf, kf, kf[..., :512], is_causal=True, scale=SM_SCALE)
    torch.testing.assert_close(out.cpu().float(), dense.transpose(0, 1), rtol=1e-2, atol=1e-2)
    scores = torch.einsum("hsd,htd->hst", qf, kf) * SM_SCALE
    dense_lse = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), -torch.inf).logsumexp(-1)
    torch.testing.assert_close(lse.cpu(), dense_lse.transpose(0, 1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("token_bytes", [1152, 656])
@pytest.mark.parametrize("heads,sq", [(1, 1), (16, 3), (64, 2), (128, 1)])
def test_sparse_mla_decode_matches_reference(device, token_bytes, heads, sq):
    """Paged cache with scattered blocks; slots from each sequence's block table; several query
    tokens per sequence (MTP verification), each seeing only its causal prefix."""
    g = gen(heads * sq + token_bytes)
    seq_lens, num_blocks, k = [70, 200, 5], 8, 96
    table, slots = scattered_block_tables(seq_lens, num_blocks, g)
    cache = random_cache_bytes((num_blocks, 64, token_bytes), g)
    for sl in slots:
        ops.mla_cache_write(random_latent(sl.numel(), g), sl, cache)
    b = len(seq_lens)
    idx = torch.full((b, sq, k), -1, dtype=torch.int32)
    for i, n in enumerate(seq_lens):
        for j in range(sq):
            visible = n - sq + j + 1
            pos = torch.randperm(visible, generator=g)[:k]
            idx[i, j, : pos.numel()] = slots[i][pos].int()
    q = random_latent(b * sq * heads, g, scale=0.5).view(b, sq, heads, 576)
    want_out, want_lse = reference.sparse_mla_decode(q, cache, idx, SM_SCALE)
    out = poisoned((b, sq, heads, 512), torch.bfloat16, device)
    lse = poisoned((b, sq, heads), torch.float32, device)
    ops.sparse_mla_decode(q.to(device), cache.to(device), idx.to(device), SM_SCALE, out=out, lse=lse)
    assert_attention_close(out, lse, want_out, want_lse)
    f_out, f_lse = ops.sparse_mla_decode(q.to(device), cache.to(device), idx.to(device), SM_SCALE)
    assert torch.equal(f_out, out) and torch.equal(f_lse, lse)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_mla_decode_at_index_topk(device):
    """k = 2048 selected slots out of 3000 cached tokens (the GLM-5.2 setting), FP8 cache, 8 heads."""
    g = gen(2048)
    num_blocks = 48
    cache = torch.zeros(num_blocks, 64, 656, dtype=torch.uint8)
    ops.mla_cache_write(random_latent(num_blocks * 64, g), torch.randperm(num_blocks * 64, generator=g), cache)
    idx = torch.randperm(3000, generator=g)[:2048].int().view(1, 1, 2048)
    q = random_latent(8, g, scale=0.5).view(1, 1, 8, 576)
    want_out, want_lse = reference.sparse_mla_decode(q, cache, idx, SM_SCALE)
    out, lse = ops.sparse_mla_decode(q.to(device), cache.to(device), idx.to(device), SM_SCALE)
    assert_attention_close(out, lse, want_out, want_lse)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_mla_empty_shapes(device):
    q = torch.randn(0, 8, 576, device=device).bfloat16()
    out, lse = ops.sparse_mla_prefill(q, torch.randn(5, 576, device=device).bfloat16(),
                                      torch.zeros(0, 4, dtype=torch.int32, device=device), 0.1)
    assert out.shape == (0, 8, 512) and lse.shape == (0, 8)
    q = torch.randn(2, 8, 576, device=device).bfloat16()
    for kv, idx in [(torch.randn(0, 576), torch.full((2, 3), -1)), (torch.randn(5, 576), torch.zeros(2, 0))]:
        out, lse = ops.sparse_mla_prefill(q, kv.bfloat16().to(device), idx.int().to(device), 0.1)
        assert (out == 0).all() and torch.isneginf(lse).all()
    cache = torch.zeros(1, 64, 656, dtype=torch.uint8, device=device)
    out, lse = ops.sparse_mla_decode(torch.randn(0, 2, 4, 576, device=device).bfloat16(), cache,
                                     torch.zeros(0, 2, 8, dtype=torch.int32, device=device), 0.1)
    assert out.shape == (0, 2, 4, 512) and lse.shape == (0, 2, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_sparse_mla_rejects_bad_input(device):
    q = torch.randn(2, 8, 576, device=device).bfloat16()
    kv = torch.randn(10, 576, device=device).bfloat16()
    idx = torch.zeros(2, 4, dtype=torch.int32, device=device)
    cache = torch.zeros(1, 64, 1152, dtype=torch.uint8, device=device)
    qd, idxd = q.view(1, 2, 8, 576), idx.view(1, 2, 4)
    cases = [
        (lambda: ops.sparse_mla_prefill(q.float(), kv, idx, 0.1), "argument 'q' must have dtype"),
        (lambda: ops.sparse_mla_prefill(q[..., :512].contiguous(), kv, idx, 0.1), "argument 'q' must have latent width 576"),
        (lambda: ops.sparse_mla_prefill(torch.zeros(2, 129, 576, device=device).bfloat16(), kv, idx, 0.1),
         "argument 'q' must have 1 to 128 heads"),
        (lambda: ops.sparse_mla_prefill(q, kv[:, :512].contiguous(), idx, 0.1), r"argument 'kv' must have shape \[10, 576\]"),
        (lambda: ops.sparse_mla_prefill(q, kv, idx.long(), 0.1), "argument 'indices' must have dtype"),
        (lambda: ops.sparse_mla_prefill(q, kv, idx[:1], 0.1), r"argument 'indices' must have shape \[2, 4\]"),
        (lambda: ops.sparse_mla_prefill(q.transpose(0, 1), kv, idx, 0.1), "argument 'q'"),
        (lambda: ops.sparse_mla_prefill(q, kv, idx, 0.1, out=torch.empty(2, 8, 512, device=device),
                                        lse=torch.empty(2, 8, device=device)), "argument 'out' must have dtype"),
        (lambda: ops.sparse_mla_decode(qd, cache[:, :, :600], idxd, 0.1), "argument 'cache' must have shape"),
        (lambda: ops.sparse_mla_decode(qd, cache, idx, 0.1), "argument 'indices' must be 3-D"),
        (lambda: ops.sparse_mla_decode(q, cache, idxd, 0.1), "argument 'q' must be 4-D"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
    with pytest.raises(ValueError, match="pass both 'out' and 'lse'"):
        ops.sparse_mla_prefill(q, kv, idx, 0.1, out=torch.empty(2, 8, 512, device=device).bfloat16())


def assert_hgmma_close(out, lse, q, rows, idx, sm_scale):
    """The HGMMA kernel rounds P to BF16 before P·V (as flash attention does; l keeps fp32 P), so
    each output element may be off by 2^-8 Σ_j p_j |v_j| / Σ_j p_j on top of the output's own
    BF16 rounding: checked against that bound computed from the fp64 reference. ``rows`` are the
    key rows the kernel actually multiplies (FP8 caches: dequantized, then rounded to BF16 in
    shared memory), ``idx`` row ids into them."""
    want_out, want_lse = reference.sparse_mla_prefill(q, rows, idx, sm_scale)
    valid = (idx >= 0) & (idx < rows.shape[0])
    keys = rows[idx.clamp(0, rows.shape[0] - 1).long()].double()
    scores = torch.einsum("shd,skd->shk", q.double(), keys) * sm_scale
    p = torch.softmax(scores.masked_fill(~valid[:, None, :], float("-inf")), dim=-1).nan_to_num(0.0)
    bound = 2**-8 * torch.einsum("shk,skc->shc", p, keys[..., :512].abs()) + 2**-8 * want_out.double().abs() + 1e-3
    out, lse = out.cpu(), lse.cpu()
    assert ((out.double() - want_out.double()).abs() <= bound).all()
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    fin = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[fin], want_lse[fin], rtol=1e-5, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["hgmma", "simt"])
@pytest.mark.parametrize("heads", [1, 16, 64, 100, 128])
def test_both_cuda_kernels_match_reference(monkeypatch, kernel, heads):
    """The HGMMA kernel (default) and the SIMT kernel (GLM52_SPARSE_MLA_KERNEL=simt) against the
    reference: prefill, and decode over BF16 and FP8 caches, k = 2048 with −1 padding. The SIMT
    kernel computes in fp32 throughout; the HGMMA one is held to its documented roundings."""
    monkeypatch.setenv("GLM52_SPARSE_MLA_KERNEL", kernel)
    g = gen(heads)
    q = random_latent(3 * heads, g, scale=0.5).view(3, heads, 576)
    kv = random_latent(3000, g)
    idx = random_indices(3, 2048, 3000, g)
    idx[1, 1000:] = -1
    idx[2] = -1
    got = ops.sparse_mla_prefill(q.cuda(), kv.cuda(), idx.cuda(), SM_SCALE)
    if kernel == "hgmma":
        assert_hgmma_close(*got, q, kv.float(), idx, SM_SCALE)
    else:
        assert_attention_close(*got, *reference.sparse_mla_prefill(q, kv, idx, SM_SCALE))
    for token_bytes in (1152, 656):
        cache = torch.zeros(47, 64, token_bytes, dtype=torch.uint8)
        ops.mla_cache_write(kv, torch.randperm(47 * 64, generator=g)[:3000], cache)
        slots = random_indices(3, 2048, 47 * 64, g).view(1, 3, 2048)
        got = ops.sparse_mla_decode(q.view(1, 3, heads, 576).cuda(), cache.cuda(), slots.cuda(), SM_SCALE)
        if kernel == "hgmma":
            rows = reference.mla_cache_read(cache).bfloat16().float()
            assert_hgmma_close(got[0][0], got[1][0], q, rows, slots[0], SM_SCALE)
        else:
            assert_attention_close(*got, *reference.sparse_mla_decode(q.view(1, 3, heads, 576), cache, slots, SM_SCALE))
