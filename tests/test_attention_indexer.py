"""indexer_logits (ragged prefill) and indexer_logits_paged (decode, MTP rows) against the reference;
the FP8 indexer's selections against the exact indexer's."""

from __future__ import annotations


import pytest
import torch
from attention_testing import gen, paged_indexer_case
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference


def fp8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-448, 448).to(torch.float8_e4m3fn)


def random_query(s: int, h: int, g: torch.Generator):
    q8 = fp8(torch.randn(s, h, 128, generator=g) * 40)
    weights = torch.randn(s, h, generator=g) * 1e-3
    return q8, weights


def assert_logits_close(got: torch.Tensor, want: torch.Tensor):
    """Same −inf pattern; finite values within fp32 accumulation error of the fp64 reference (on GPUs,
    within the FP8 tensor cores' accumulation error)."""
    # Hopper's FP8 wgmma keeps ~13-14 mantissa bits while it accumulates a K step (DeepSeek-V3 §3.3);
    # emulating that on this test's data gave errors up to 1.4e-4 of the row scale.
    tol = 1e-5 if got.device.type == "cpu" else 3e-4
    got = got.cpu()
    assert torch.equal(torch.isneginf(got), torch.isneginf(want))
    finite = torch.isfinite(want)
    assert torch.isfinite(got[finite]).all()
    scale = want[finite].abs().amax().item() if finite.any() else 0.0
    torch.testing.assert_close(got[finite], want[finite], rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads", [1, 8, 32, 64, 128])
@pytest.mark.parametrize("s,l", [(0, 10), (5, 0), (1, 1), (13, 300)])
def test_indexer_logits_matches_reference(device, heads, s, l):
    g = gen(heads * 100 + s + l)
    q8, w = random_query(s, heads, g)
    k8, k_scale = fp8(torch.randn(l, 128, generator=g) * 40), torch.rand(l, generator=g) + 0.1
    # ranges: empty, negative start, beyond L, full, causal-like
    ks = torch.randint(-5, max(l, 1), (s,), generator=g, dtype=torch.int32)
    ke = ks + torch.randint(-2, l + 10, (s,), generator=g, dtype=torch.int32)
    want = reference.indexer_logits(q8, w, k8, k_scale, ks, ke)
    args = [t.to(device) for t in (q8, w, k8, k_scale, ks, ke)]
    out = poisoned((s, l), torch.float32, device)
    ops.indexer_logits(*args, out=out)
    assert_logits_close(out, want)
    assert_logits_close(ops.indexer_logits(*args), want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads", [1, 32, 64])
def test_indexer_logits_paged_matches_reference(device, heads):
    """Scattered pages, several query tokens per sequence each with its own causal length, an
    unmapped (−1) table entry, and a max_len beyond what the table maps."""
    g = gen(heads)
    seq_lens, n, num_blocks = [1, 64, 130, 257], 3, 16
    table, cache, lengths = paged_indexer_case(seq_lens, n, num_blocks, g)
    b = len(seq_lens)
    lengths[2, 0] = 0
    table[3, 1] = -1  # an unmapped block: its positions read as -inf
    q8, w = random_query(b * n, heads, g)
    q8, w = q8.view(b, n, heads, 128), w.view(b, n, heads)
    max_len = 300
    want = reference.indexer_logits_paged(q8, w, cache, table, lengths, max_len)
    assert torch.isneginf(want[3, :, 64:128]).all() and torch.isfinite(want[3, 2, :64]).all()
    args = [t.to(device) for t in (q8, w, cache, table, lengths)]
    out = poisoned((b, n, max_len), torch.float32, device)
    ops.indexer_logits_paged(*args, max_len, out=out)
    assert_logits_close(out, want)
    assert_logits_close(ops.indexer_logits_paged(*args, max_len), want)


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_indexer_selects_what_the_exact_indexer_selects(device):
    """DESIGN §2.1's two indexer paths on i.i.d. random inputs. The FP8 path (q quantized with ue8m0
    scales folded into the weights, k through the indexer cache) selects exactly what the fp64
    reference of the same quantized math selects, and >= 95% of the exact indexer's top-k; every
    exact choice it misses lies within the FP8 error of the exact k-th value (measured: 96-97%
    overlap on such inputs, so the issue's ">= 99%" does not hold for i.i.d. Gaussian data)."""
    g = gen(1)
    s, h, l, k = 8, 32, 8192, 2048
    q = torch.randn(s, h, 128, generator=g)
    key = torch.randn(l, 128, generator=g) + 0.5 * torch.randn(1, 128, generator=g)
    w = torch.randn(s, h, generator=g) * h**-0.5
    exact = torch.einsum("sh,sht->st", w, (torch.einsum("shd,td->sht", q, key) * 128**-0.5).relu())
    q8, q_scale = reference.quant_fp8_per_token_group(q.view(-1, 128), 128, scale_ue8m0=True)
    q8, folded = q8.view(s, h, 128), w * q_scale.view(s, h) * 128**-0.5
    cache = torch.zeros(l // 64, 8448, dtype=torch.uint8, device=device)
    ops.indexer_cache_write(key.to(device), torch.arange(l, device=device), cache)
    codes, k_scale = reference.indexer_cache_read(cache.cpu())
    ks, ke = torch.zeros(s, dtype=torch.int32), torch.full((s,), l, dtype=torch.int32)
    args = (q8, folded, codes.contiguous(), k_scale, ks, ke)
    logits = ops.indexer_logits(*(t.to(device) for t in args))
    chosen = ops.topk_indices(logits, k).cpu()
    same_math = reference.topk_indices(reference.indexer_logits(*args), k)
    agree = (chosen.unsqueeze(-1) == same_math.unsqueeze(-2)).any(-1).float().mean().item()
    assert agree >= 0.999, agree  # only fp32-vs-fp64 near-ties may differ
    want = reference.topk_indices(exact, k)
    fp8_error = (logits.cpu() - exact).abs().amax().item()
    for r in range(s):
        missed = sorted(set(want[r].tolist()) - set(chosen[r].tolist()))
        assert len(missed) <= 0.05 * k, len(missed)
        kth = exact[r, want[r]].min()
        assert (exact[r, missed] <= kth + 2 * fp8_error).all()
        assert (exact[r, chosen[r]] >= kth - 2 * fp8_error).all()


@pytest.mark.parametrize("device", DEVICES)
def test_indexer_logits_reject_bad_input(device):
    g = gen(0)
    q8, w = random_query(4, 8, g)
    k8, ks_ = fp8(torch.randn(16, 128, generator=g)), torch.rand(16, generator=g)
    r = torch.zeros(4, dtype=torch.int32)
    q8, w, k8, ks_, r = (t.to(device) for t in (q8, w, k8, ks_, r))
    cases = [
        (lambda: ops.indexer_logits(q8.float(), w, k8, ks_, r, r), "argument 'q8' must have dtype"),
        (lambda: ops.indexer_logits(q8[..., :64].contiguous(), w, k8, ks_, r, r), "argument 'q8' must have head dim 128"),
        (lambda: ops.indexer_logits(q8, w[:, :4].contiguous(), k8, ks_, r, r), r"argument 'weights' must have shape \[4, 8\]"),
        (lambda: ops.indexer_logits(q8, w, k8, ks_[:3], r, r), r"argument 'k_scale' must have shape \[16\]"),
        (lambda: ops.indexer_logits(q8, w, k8, ks_, r.long(), r), "argument 'ks' must have dtype"),
        (lambda: ops.indexer_logits(q8, w, k8.t(), ks_, r, r), "argument 'k8'"),
        (lambda: ops.indexer_logits(q8, w, k8, ks_, r, r, out=torch.empty(4, 15, device=device)),
         r"argument 'out' must have shape \[4, 16\]"),
        (lambda: ops.indexer_logits(torch.zeros(4, 129, 128, device=device).to(torch.float8_e4m3fn), w, k8, ks_, r, r),
         "argument 'q8' must have 1 to 128 heads"),
    ]
    cache = torch.zeros(2, 8448, dtype=torch.uint8, device=device)
    table = torch.zeros(2, 2, dtype=torch.int32, device=device)
    lengths = torch.zeros(2, 2, dtype=torch.int32, device=device)
    qp, wp = q8.view(2, 2, 8, 128), w.view(2, 2, 8)
    cases += [
        (lambda: ops.indexer_logits_paged(qp, wp, cache[:, :100], table, lengths, 10), "argument 'cache' must have shape"),
        (lambda: ops.indexer_logits_paged(qp, wp, cache, table[:1], lengths, 10), "argument 'block_table' must have shape"),
        (lambda: ops.indexer_logits_paged(qp, wp, cache, table, lengths[:, :1], 10), r"argument 'lengths' must have shape \[2, 2\]"),
        (lambda: ops.indexer_logits_paged(qp, wp, cache, table, lengths, -1), "argument 'max_len' must be >= 0"),
        (lambda: ops.indexer_logits_paged(q8, w, cache, table, lengths, 10), "argument 'q8' must be 4-D"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["qgmma", "simt"])
@pytest.mark.parametrize("heads", [32, 64])
def test_both_cuda_kernels_match_reference(monkeypatch, kernel, heads):
    """The QGMMA kernel (default for 32/64 heads) and the SIMT one (GLM52_INDEXER_KERNEL=simt):
    causal ragged prefill over 3000 keys (odd row count, partial key tiles) and paged decode with
    3 query tokens per sequence (odd n: with 32 heads the last CTA of a sequence has one query)."""
    monkeypatch.setenv("GLM52_INDEXER_KERNEL", kernel)
    g = gen(heads + 7)
    s, l = 37, 3000
    q8, w = random_query(s, heads, g)
    k8, k_scale = fp8(torch.randn(l, 128, generator=g) * 40), torch.rand(l, generator=g) + 0.1
    ke = torch.randint(1, l + 1, (s,), generator=g, dtype=torch.int32)
    ks = (ke - 2500).clamp_min(0).int()
    want = reference.indexer_logits(q8, w, k8, k_scale, ks, ke)
    assert_logits_close(ops.indexer_logits(*(t.cuda() for t in (q8, w, k8, k_scale, ks, ke))), want)
    seq_lens, n, num_blocks = [3, 700, 1500], 3, 40
    table, cache, lengths = paged_indexer_case(seq_lens, n, num_blocks, g)  # every length >= 1
    qp, wp = random_query(len(seq_lens) * n, heads, g)
    qp, wp = qp.view(len(seq_lens), n, heads, 128), wp.view(len(seq_lens), n, heads)
    want = reference.indexer_logits_paged(qp, wp, cache, table, lengths, 1600)
    got = ops.indexer_logits_paged(*(t.cuda() for t in (qp, wp, cache, table, lengths)), 1600)
    assert_logits_close(got, want)
