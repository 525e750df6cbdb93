"""glm52_ext.compat.deep_gemm against glm52's ops and against plain-PyTorch transcriptions of
DeepGEMM's documented semantics (its tests' references): (tensor, scales) tuples, in-place ``d``,
MN-major TMA-aligned and UE8M0-packed scales, m_indices with −1 padding, masked expected_m, the
indexer logits (flat, compressed, paged over the 132-byte cache view) and the paged schedule."""

from __future__ import annotations

import math

import pytest
import torch
from attention_testing import gen
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference
from glm52_ext.compat import deep_gemm


def fp8_operand(rows: int, k: int, g: torch.Generator, groups: int | None = None):
    """e4m3 values with K-major fp32 scales: per 128 columns (activations)."""
    shape = (rows, k) if groups is None else (groups, rows, k)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(*shape[:-1], 1, generator=g))
    q, s = ops.quant_fp8_per_token_group(x.reshape(-1, k), 128)
    return q.view(shape), s.view(*shape[:-1], -1)


def fp8_weight(n: int, k: int, g: torch.Generator, groups: int | None = None):
    """e4m3 weights with 128x128 block scales."""
    shape = (n, k) if groups is None else (groups, n, k)
    w = (torch.randn(shape, generator=g) * 60).to(torch.float8_e4m3fn)
    s = torch.rand(*shape[:-2], math.ceil(n / 128), math.ceil(k / 128), generator=g) + 0.01
    return w, s


def dequant(x: torch.Tensor, s: torch.Tensor, rows_per_scale: int) -> torch.Tensor:
    """DeepGEMM's reference: value × its scale (scales per (rows_per_scale × 128) block), float64."""
    s = s.double().repeat_interleave(rows_per_scale, dim=-2)[..., : x.shape[-2], :]
    return x.double() * s.repeat_interleave(128, dim=-1)[..., : x.shape[-1]]


def assert_gemm_close(got: torch.Tensor, want: torch.Tensor):
    """Within a bfloat16 rounding of the float64 result plus fp32 accumulation slack."""
    if want.numel() == 0:
        return
    err = (got.double() - want).abs()
    assert bool((err <= 2**-8 * want.abs() + 1e-3 * want.abs().max()).all()), float(err.max())


def pack_ue8m0(sf: torch.Tensor) -> torch.Tensor:
    """DeepGEMM's UE8M0 packing (get_mn_major_tma_aligned_packed_ue8m0_tensor, transcribed): the
    exponent byte of each power-of-two fp32 scale, four K blocks per int32 (byte j = block 4i + j),
    K padded to 4, MN-major and TMA-aligned."""
    mn, k = sf.shape
    exponents = (sf.view(torch.int32) >> 23).to(torch.uint8)
    padded = torch.zeros(mn, (k + 3) // 4 * 4, dtype=torch.uint8)
    padded[:, :k] = exponents
    packed = padded.view(torch.int32)
    return deep_gemm.get_mn_major_tma_aligned_tensor(packed)


def test_layout_helpers():
    g = gen(1)
    x = torch.randn(2, 37, 5, generator=g)
    y = deep_gemm.get_mn_major_tma_aligned_tensor(x)
    assert y.shape == x.shape and y.stride() == (40 * 5, 1, 40) and torch.equal(y, x)
    assert deep_gemm.get_mn_major_tma_aligned_tensor(y) is y  # already in the layout
    z = deep_gemm.get_col_major_tma_aligned_tensor(x[0])
    assert z.stride() == (1, 40) and torch.equal(z, x[0])
    assert deep_gemm.get_tma_aligned_size(37, 4) == 40 and deep_gemm.get_tma_aligned_size(37, 2) == 40
    assert deep_gemm.get_m_alignment_for_contiguous_layout() == ops.grouped_gemm_m_alignment() == 128


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("scale_layout", ["k_major", "mn_major", "ue8m0_packed"])
def test_fp8_gemm_nt(device, scale_layout):
    g = gen(2)
    m, n, k = 70, 256, 384
    (a, sa), (b, sb) = fp8_operand(m, k, g), fp8_weight(n, k, g)
    if scale_layout == "ue8m0_packed":
        sa = torch.exp2(torch.ceil(torch.log2(sa)))  # UE8M0 scales are powers of two
    want_ops = ops.fp8_gemm(a, sa, b, sb)
    sa_in = {"k_major": sa, "mn_major": deep_gemm.get_mn_major_tma_aligned_tensor(sa),
             "ue8m0_packed": pack_ue8m0(sa)}[scale_layout]
    sb_in = sb if scale_layout == "k_major" else sb.t().contiguous().t()  # DeepGEMM also takes transposed SFB
    d = poisoned((m, n), torch.bfloat16, device)
    assert deep_gemm.fp8_gemm_nt((a.to(device), sa_in.to(device)), (b.to(device), sb_in.to(device)), d) is None
    assert torch.equal(d.cpu(), want_ops)
    assert_gemm_close(d.cpu(), dequant(a, sa, 1) @ dequant(b, sb, 128).t())


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_gemm_nt_writes_a_strided_d_in_place(device):
    g = gen(3)
    (a, sa), (b, sb) = fp8_operand(8, 256, g), fp8_weight(128, 256, g)
    big = poisoned((8, 300), torch.bfloat16, device)
    d = big[:, :128]  # N-major with a padded row stride, as DeepGEMM allows
    deep_gemm.fp8_gemm_nt((a.to(device), sa.to(device)), (b.to(device), sb.to(device)), d)
    assert torch.equal(big[:, :128].cpu(), ops.fp8_gemm(a, sa, b, sb)) and big[:, 128:].isnan().all()


@pytest.mark.parametrize("device", DEVICES)
def test_m_grouped_contiguous_with_padding_rows(device):
    g = gen(4)
    groups, n, k, align = 3, 256, 256, deep_gemm.get_m_alignment_for_contiguous_layout()
    counts = [5, 0, 130]
    m_indices = torch.cat([torch.cat([torch.full((c,), e), torch.full((-c % align,), -1)]) for e, c in enumerate(counts)]).int()
    m = m_indices.numel()
    (a, sa), (b, sb) = fp8_operand(m, k, g), fp8_weight(n, k, g, groups)
    d = poisoned((m, n), torch.bfloat16, device)
    deep_gemm.m_grouped_fp8_gemm_nt_contiguous(
        (a.to(device), deep_gemm.get_mn_major_tma_aligned_tensor(sa).to(device)), (b.to(device), sb.to(device)),
        d, m_indices.to(device))
    assert torch.equal(d.cpu(), ops.fp8_grouped_gemm_contiguous(a, sa, b, sb, m_indices))
    rows = m_indices >= 0
    want = torch.einsum("mk,mnk->mn", dequant(a, sa, 1)[rows], dequant(b, sb, 128)[m_indices[rows].long()])
    assert_gemm_close(d.cpu()[rows], want)
    assert (d.cpu()[~rows] == 0).all()  # padding rows: zeros (DeepGEMM: unspecified)


@pytest.mark.parametrize("device", DEVICES)
def test_m_grouped_masked_with_expected_m(device):
    g = gen(5)
    groups, m_max, n, k = 4, 32, 128, 256
    (a, sa), (b, sb) = fp8_operand(m_max, k, g, groups), fp8_weight(n, k, g, groups)
    masked_m = torch.tensor([0, 7, 32, 1], dtype=torch.int32)
    d = poisoned((groups, m_max, n), torch.bfloat16, device)
    deep_gemm.m_grouped_fp8_gemm_nt_masked(
        (a.to(device), deep_gemm.get_mn_major_tma_aligned_tensor(sa).to(device)), (b.to(device), sb.to(device)),
        d, masked_m.to(device), expected_m=8)
    want_ops = ops.fp8_grouped_gemm_masked(a, sa, b, sb, masked_m, 8)
    want = torch.einsum("gmk,gnk->gmn", dequant(a, sa, 1), dequant(b, sb, 128))
    for e, rows in enumerate(masked_m.tolist()):
        assert torch.equal(d.cpu()[e, :rows], want_ops[e, :rows])
        assert_gemm_close(d.cpu()[e, :rows], want[e, :rows])


def test_unsupported_arguments_are_named():
    g = gen(6)
    (a, sa), (b, sb) = fp8_operand(4, 128, g), fp8_weight(128, 128, g)
    d = torch.empty(4, 128, dtype=torch.bfloat16)
    cases = [
        (dict(recipe=(1, 1, 128)), "argument 'recipe'"),
        (dict(recipe_b=(1, 128)), "argument 'recipe_b'"),
        (dict(c=torch.zeros(4, 128)), "argument 'c'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            deep_gemm.fp8_gemm_nt((a, sa), (b, sb), d, **kwargs)
    with pytest.raises(ValueError, match="argument 'd' must be bfloat16"):
        deep_gemm.fp8_gemm_nt((a, sa), (b, sb), torch.empty(4, 128))
    with pytest.raises(ValueError, match="argument 'b' holds UE8M0-packed"):
        deep_gemm.fp8_gemm_nt((a, sa), (b, torch.zeros(128, 1, dtype=torch.int32)), d)
    with pytest.raises(ValueError, match="argument 'a' scales must have shape"):
        deep_gemm.fp8_gemm_nt((a, sa[:, :0]), (b, sb), d)
    with pytest.raises(ValueError, match="argument 'use_psum_layout'"):
        deep_gemm.m_grouped_fp8_gemm_nt_contiguous((a, sa), (b[None], sb[None]), d, torch.zeros(4, dtype=torch.int32),
                                                   use_psum_layout=True)
    with pytest.raises(ValueError, match="argument 'expected_m'"):
        deep_gemm.m_grouped_fp8_gemm_nt_masked((a[None], sa[None]), (b[None], sb[None]), d[None],
                                               torch.ones(1, dtype=torch.int32), 0)


def indexer_inputs(s: int, h: int, length: int, g: torch.Generator):
    q = (torch.randn(s, h, 128, generator=g) * 8).to(torch.float8_e4m3fn)
    k8, k_scale = ops.quant_fp8_per_token_group(torch.randn(length, 128, generator=g), 128)
    weights = torch.randn(s, h, generator=g)
    return q, k8, k_scale.view(-1), weights


def ref_fp8_mqa_logits(q, k8, k_scale, weights, ks, ke):
    """DeepGEMM's tests' reference: Σ_h w · ReLU(q · k) with k dequantized, −inf outside [ks, ke)."""
    k = k8.double() * k_scale.double()[:, None]
    logits = torch.einsum("shd,ld->shl", q.double(), k).relu().mul(weights.double()[..., None]).sum(1)
    cols = torch.arange(k8.shape[0])
    return logits.masked_fill(~((cols >= ks[:, None]) & (cols < ke[:, None])), -math.inf)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_mqa_logits_full_and_compressed(device):
    g = gen(7)
    s, h, length = 9, 32, 300
    q, k8, k_scale, weights = indexer_inputs(s, h, length, g)
    ks = torch.tensor([0, 0, 10, 100, 290, 0, 50, 299, 7], dtype=torch.int32)
    ke = torch.tensor([1, 300, 60, 100, 300, 200, 51, 300, 250], dtype=torch.int32)
    args = [t.to(device) for t in (q,)] + [(k8.to(device), k_scale.to(device)), weights.to(device), ks.to(device), ke.to(device)]
    logits = deep_gemm.fp8_mqa_logits(*args)
    assert torch.equal(logits.cpu(), ops.indexer_logits(q, weights, k8, k_scale, ks, ke))
    want = ref_fp8_mqa_logits(q, k8, k_scale, weights, ks, ke)
    assert torch.equal(torch.isinf(logits.cpu()), torch.isinf(want))
    torch.testing.assert_close(logits.cpu().double().nan_to_num(neginf=0), want.nan_to_num(neginf=0), rtol=1e-5, atol=1e-3)
    width = int((ke - ks).max())
    compressed = deep_gemm.fp8_mqa_logits(*args, clean_logits=False, max_seqlen_k=width).cpu()
    assert compressed.shape == (s, width)
    for i in range(s):
        n = int(ke[i] - ks[i])
        assert torch.equal(compressed[i, :n], logits.cpu()[i, ks[i] : ke[i]])
    # The top-k of the logits in DeepGEMM's padded-stride layout, each row's window [ks, ke):
    padded = torch.full((s, 512), math.nan)
    padded[:, :length] = logits.cpu()
    got = ops.topk_indices(padded.to(device)[:, :length], 16, (ke - ks).to(device), row_starts=ks.to(device)).cpu()
    assert torch.equal(got, reference.topk_indices(logits.cpu(), 16, ke - ks, ks))


def ref_paged_mqa_logits(q, kv_cache, weights, context_lens, block_table, max_len):
    """DeepGEMM's paged reference over its [num_blocks, 64, 1, 132] view: per block, 64×128 e4m3
    values at ``block * 8448 + t * 128`` and 64 fp32 scales at ``block * 8448 + 8192 + 4 t``; query
    (b, j) sees ``t < context_lens[b, j]``."""
    b, next_n, h, _ = q.shape
    flat = kv_cache.reshape(kv_cache.shape[0], -1)
    values = flat[:, :8192].contiguous().view(torch.float8_e4m3fn).view(-1, 64, 128).double()
    scales = flat[:, 8192:].contiguous().view(torch.float32).view(-1, 64).double()
    keys = values * scales[..., None]  # [num_blocks, 64, 128]
    out = torch.full((b * next_n, max_len), -math.inf, dtype=torch.float64)
    for i in range(b):
        for j in range(next_n):
            n = int(context_lens[i, j])
            k = keys[block_table[i, : (n + 63) // 64].long()].reshape(-1, 128)[:n]
            score = (q[i, j].double() @ k.t()).relu()  # [h, n]
            out[i * next_n + j, :n] = (score * weights[i * next_n + j].double()[:, None]).sum(0)
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lens_2d", [False, True])
def test_fp8_paged_mqa_logits_over_the_132_byte_cache(device, lens_2d):
    g = gen(8)
    batch, next_n, h, num_blocks, max_len = 3, 2, 64, 16, 320
    seq_lens = torch.tensor([70, 1 + next_n, 300], dtype=torch.int32)
    cache = torch.zeros(num_blocks, 64 * 132, dtype=torch.uint8)
    block_table = torch.randperm(num_blocks, generator=g)[: batch * 5].view(batch, 5).int()
    for i, n in enumerate(seq_lens.tolist()):
        slots = (block_table[i].long()[:, None] * 64 + torch.arange(64)).view(-1)[:n]
        ops.indexer_cache_write(torch.randn(n, 128, generator=g), slots, cache)
    view = cache.view(num_blocks, 64, 1, 132)  # DeepGEMM's fused view of the same bytes
    q = (torch.randn(batch, next_n, h, 128, generator=g) * 8).to(torch.float8_e4m3fn)
    weights = torch.randn(batch * next_n, h, generator=g)
    lens_per_query = seq_lens[:, None] - next_n + 1 + torch.arange(next_n, dtype=torch.int32)
    context_lens = lens_per_query if lens_2d else seq_lens
    meta = deep_gemm.get_paged_mqa_logits_metadata(context_lens.to(device), 64, 132)
    logits = deep_gemm.fp8_paged_mqa_logits(q.to(device), view.to(device), weights.to(device), context_lens.to(device),
                                            block_table.to(device), meta, max_len, clean_logits=False).cpu()
    assert logits.shape == (batch * next_n, max_len)
    assert torch.equal(logits, ops.indexer_logits_paged(q, weights.view(batch, next_n, h), cache, block_table,
                                                        lens_per_query, max_len).view(batch * next_n, max_len))
    want = ref_paged_mqa_logits(q, view, weights, lens_per_query, block_table, max_len)
    assert torch.equal(torch.isinf(logits), torch.isinf(want))
    torch.testing.assert_close(logits.double().nan_to_num(neginf=0), want.nan_to_num(neginf=0), rtol=1e-5, atol=1e-3)


def ref_schedule(context_lens: torch.Tensor, num_sms: int) -> torch.Tensor:
    """DeepGEMM's SM90 paged-logits scheduler (sm90_paged_mqa_logits_metadata), transcribed loop by loop."""
    lens = (context_lens[:, -1] if context_lens.dim() == 2 else context_lens).tolist()
    next_n = context_lens.shape[1] if context_lens.dim() == 2 else 1
    atoms = -(-next_n // 2) if next_n >= 2 else 1
    prefix, total = [], 0
    for n in lens:
        total += -(-n // 256)
        prefix.append(total)
    total *= atoms
    q, r = divmod(total, num_sms)
    pivot = num_sms - r
    rows = []
    for sm in range(num_sms):
        start = sm * q + (sm - pivot if sm > pivot else 0)
        idx = sum(1 for p in prefix if p * atoms <= start)
        before = prefix[idx - 1] * atoms if idx > 0 else 0
        own = (prefix[idx] - (prefix[idx - 1] if idx > 0 else 0)) if idx < len(lens) else 0
        offset = start - before
        rows.append([idx * atoms + (offset // own if own else 0), offset % own if own else 0])
    rows.append([len(lens) * atoms, 0])
    return torch.tensor(rows, dtype=torch.int32)


@pytest.mark.parametrize("device", DEVICES)
def test_paged_logits_schedule_matches_deep_gemm(device):
    g = gen(9)
    for lens, num_sms in [([70, 3, 300], 132), ([0, 0], 8), ([5000, 1, 70000, 256, 257], 132), ([1] * 40, 16)]:
        for next_n in (1, 2, 3):
            context = torch.tensor(lens, dtype=torch.int32)[:, None] + torch.arange(next_n, dtype=torch.int32)
            got = deep_gemm.get_paged_mqa_logits_metadata(context.to(device), 64, num_sms)
            assert got.dtype == torch.int32 and got.shape == (num_sms + 1, 2)
            assert torch.equal(got.cpu(), ref_schedule(context, num_sms)), (lens, next_n)
    with pytest.raises(ValueError, match="argument 'block_kv'"):
        deep_gemm.get_paged_mqa_logits_metadata(torch.ones(2, 1, dtype=torch.int32), 32, 8)
    with pytest.raises(ValueError, match="argument 'indices'"):
        deep_gemm.get_paged_mqa_logits_metadata(torch.ones(2, 1, dtype=torch.int32), 64, 8, torch.zeros(2, dtype=torch.int32))
    del g
