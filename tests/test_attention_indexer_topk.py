"""indexer_topk / indexer_topk_paged (fused streaming logits -> top-k): exactly topk_indices of the
matching indexer_logits* on the same device, on random data (several running-selection reductions per
row, L not a multiple of the tile), exact-integer data full of ties (also against the reference),
empty and -inf rows, k beyond the range, and paged rows with several query tokens per sequence.
On CUDA both kernels: SIMT scoring (GLM52_INDEXER_KERNEL=simt, every head count) and QGMMA scoring
(32 and 64 heads), and the host-side rule that picks one (indexer_topk_kernel)."""

from __future__ import annotations

import pytest
import torch
from attention_testing import gen, paged_indexer_case
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference


@pytest.fixture(autouse=True)
def simt_logits(monkeypatch):
    """On CUDA the fused kernel and indexer_logits score with the fp32 SIMT indexer code unless a
    test asks for tensor cores (tensor_core_logits)."""
    monkeypatch.setenv("GLM52_INDEXER_KERNEL", "simt")


@pytest.fixture
def tensor_core_logits(monkeypatch):
    """The default kernels: QGMMA scoring for 32 and 64 heads, in indexer_logits and the fused op."""
    monkeypatch.delenv("GLM52_INDEXER_KERNEL")


def fp8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-448, 448).to(torch.float8_e4m3fn)


def random_inputs(s: int, h: int, l: int, g: torch.Generator, integer: bool = False):
    """Random indexer inputs; `integer`: small integer codes, power-of-two weights, unit scales, so
    every score is exact in fp32 (many exact ties, and fp32 equals the fp64 reference)."""
    if integer:
        q8 = fp8(torch.randint(-2, 3, (s, h, 128), generator=g).float())
        k8 = fp8(torch.randint(-2, 3, (l, 128), generator=g).float())
        w = 2.0 ** torch.randint(-3, 1, (s, h), generator=g).float()
        k_scale = torch.ones(l)
    else:
        q8, k8 = fp8(torch.randn(s, h, 128, generator=g) * 40), fp8(torch.randn(l, 128, generator=g) * 40)
        w, k_scale = torch.randn(s, h, generator=g) * 1e-3, torch.rand(l, generator=g) + 0.1
    return q8, w, k8, k_scale


def ranges(s: int, l: int, g: torch.Generator):
    """Row ranges: full, causal, empty, negative start, beyond L, random."""
    ks = torch.randint(-5, max(l, 1), (s,), generator=g, dtype=torch.int32)
    ke = ks + torch.randint(-2, l + 10, (s,), generator=g, dtype=torch.int32)
    ks[0], ke[0] = 0, l
    if s > 2:
        ks[1], ke[1] = 0, l // 3 + 1
        ks[2], ke[2] = 7, 7
    return ks, ke


def fused_and_materialized(args, k, device):
    args = [t.to(device) for t in args]
    out = poisoned((args[0].shape[0], k), torch.int32, device)
    ops.indexer_topk(*args, k, out=out)
    assert torch.equal(ops.indexer_topk(*args, k), out)
    return out.cpu(), ops.topk_indices(ops.indexer_logits(*args), k).cpu()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads", [1, 32])
@pytest.mark.parametrize("k,l", [(1, 1000), (7, 3001), (300, 1000), (2048, 1500), (256, 4097)])
def test_indexer_topk_equals_logits_then_topk(device, heads, k, l):
    g = gen(k * 7 + l + heads)
    s = 6
    q8, w, k8, k_scale = random_inputs(s, heads, l, g)
    k8.view(torch.uint8)[l // 2] = 0x7F  # a NaN key: never selected by either path
    ks, ke = ranges(s, l, g)
    got, want = fused_and_materialized((q8, w, k8, k_scale, ks, ke), k, device)
    assert torch.equal(got, want)
    assert (got[2] == -1).all()  # the empty range
    assert l // 2 not in got.tolist()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 5, 63, 701])
def test_indexer_topk_ties_match_reference(device, k):
    """Integer data where every key has a twin 1300 columns later (so with an odd k the k-th score
    of a full row is always a cut tie): ties go to the lower column, and the fused result equals the
    fp64 reference exactly."""
    g = gen(k)
    s, h, l = 5, 4, 2600
    q8, w, k8, k_scale = random_inputs(s, h, l, g, integer=True)
    k8[l // 2 :] = k8[: l // 2]
    ks, ke = ranges(s, l, g)
    got, want = fused_and_materialized((q8, w, k8, k_scale, ks, ke), k, device)
    ref = reference.indexer_topk(q8, w, k8, k_scale, ks, ke, k)
    assert torch.equal(got, ref) and torch.equal(want, ref)
    logits = reference.indexer_logits(q8, w, k8, k_scale, ks, ke)
    sel = ref[0][ref[0] >= 0].long()
    kth = logits[0, sel].min()
    assert int((logits[0] == kth).sum()) > int((logits[0, sel] == kth).sum())  # the tie was really cut


@pytest.mark.parametrize("device", DEVICES)
def test_indexer_topk_all_negative_and_zero_scores(device):
    """Scores that are all 0 (ReLU of negative dots) or negative (negative weights): still finite,
    still selected, ties to the lowest columns."""
    g = gen(11)
    s, h, l, k = 3, 2, 900, 100
    q8, w, k8, k_scale = random_inputs(s, h, l, g)
    w[0] = -w[0].abs()
    q8[1] = fp8(-q8[1].float().abs())
    k8 = fp8(k8.float().abs())  # row 1: every dot <= 0 -> all scores 0
    ks, ke = torch.zeros(s, dtype=torch.int32), torch.full((s,), l, dtype=torch.int32)
    got, want = fused_and_materialized((q8, w, k8, k_scale, ks, ke), k, device)
    assert torch.equal(got, want)
    assert torch.equal(got[1], torch.arange(k, dtype=torch.int32))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("heads,k", [(1, 3), (32, 100), (8, 2048)])
def test_indexer_topk_paged_equals_logits_then_topk(device, heads, k):
    """Scattered pages, several query tokens per sequence with their own causal lengths, an
    unmapped block, a zero length, lengths past the table."""
    g = gen(heads + k)
    seq_lens, n, num_blocks = [1, 64, 700, 1300], 3, 40
    table, cache, lengths = paged_indexer_case(seq_lens, n, num_blocks, g)
    b = len(seq_lens)
    lengths[1, 0] = 0
    lengths[0, 2] = 10**6  # beyond the table: only mapped positions count
    table[3, 2] = -1
    q8, w, _, _ = random_inputs(b * n, heads, 0, g)
    q8, w = q8.view(b, n, heads, 128), w.view(b, n, heads)
    args = [t.to(device) for t in (q8, w, cache, table, lengths)]
    out = poisoned((b, n, k), torch.int32, device)
    ops.indexer_topk_paged(*args, k, out=out)
    logits = ops.indexer_logits_paged(*args, table.shape[1] * 64)
    want = ops.topk_indices(logits.view(b * n, -1), k).view(b, n, k)
    assert torch.equal(out.cpu(), want.cpu())
    assert torch.equal(ops.indexer_topk_paged(*args, k).cpu(), want.cpu())
    assert (out[1, 0] == -1).all()
    assert not ((out[3] >= 128) & (out[3] < 192)).any()  # the unmapped block


@pytest.mark.parametrize("device", DEVICES)
def test_indexer_topk_empty_shapes(device):
    g = gen(2)
    q8, w, k8, k_scale = (t.to(device) for t in random_inputs(3, 2, 0, g))
    ks = ke = torch.zeros(3, dtype=torch.int32, device=device)
    assert (ops.indexer_topk(q8, w, k8, k_scale, ks, ke, 4) == -1).all()
    assert ops.indexer_topk(q8, w, k8, k_scale, ks, ke, 0).shape == (3, 0)
    q8, w, k8, k_scale = (t.to(device) for t in random_inputs(0, 2, 10, g))
    ks = ke = torch.zeros(0, dtype=torch.int32, device=device)
    assert ops.indexer_topk(q8, w, k8, k_scale, ks, ke, 4).shape == (0, 4)


@pytest.mark.parametrize("device", DEVICES)
def test_indexer_topk_rejects_bad_input(device):
    g = gen(3)
    q8, w, k8, k_scale = (t.to(device) for t in random_inputs(2, 2, 10, g))
    ks = ke = torch.zeros(2, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match=r"indexer_topk: argument 'k' must be in \[0, 8192\]"):
        ops.indexer_topk(q8, w, k8, k_scale, ks, ke, 9000)
    with pytest.raises(RuntimeError, match="indexer_topk: argument 'k'"):
        ops.indexer_topk(q8, w, k8, k_scale, ks, ke, -1)
    with pytest.raises(RuntimeError, match="indexer_topk: argument 'out'"):
        ops.indexer_topk(q8, w, k8, k_scale, ks, ke, 4, out=torch.empty(2, 5, dtype=torch.int32, device=device))
    with pytest.raises(RuntimeError, match="indexer_topk: argument 'ks'"):
        ops.indexer_topk(q8, w, k8, k_scale, ks.long(), ke, 4)
    cache = torch.zeros(2, 8448, dtype=torch.uint8, device=device)
    table = torch.zeros(1, 2, dtype=torch.int32, device=device)
    lengths = torch.ones(1, 1, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match="indexer_topk_paged: argument 'q8'"):
        ops.indexer_topk_paged(q8, w, cache, table, lengths, 4)


SM90_SMEM = 227 * 1024
QGMMA_FIXED_SMEM = 48 * 1024


def candidate_bytes(k: int) -> int:
    return (2 * k + 256) * 8


@pytest.mark.parametrize(
    "heads,k,tensor_cores,kernel,rows,smem",
    [
        (32, 2048, True, "qgmma", 2, QGMMA_FIXED_SMEM + 2 * candidate_bytes(2048)),  # GLM-5.2: 116 KiB
        (64, 2048, True, "qgmma", 1, QGMMA_FIXED_SMEM + candidate_bytes(2048)),
        (64, 8192, True, "qgmma", 1, QGMMA_FIXED_SMEM + candidate_bytes(8192)),
        (32, 5600, True, "qgmma", 2, SM90_SMEM),  # the largest k whose two buffers fit
        (32, 5601, True, "qgmma", 1, QGMMA_FIXED_SMEM + candidate_bytes(5601)),  # one query per CTA
        (32, 8192, True, "qgmma", 1, QGMMA_FIXED_SMEM + candidate_bytes(8192)),
        (32, 0, True, "qgmma", 2, QGMMA_FIXED_SMEM + 2 * candidate_bytes(0)),
        (32, 2048, False, "simt", 1, 32 * 512 + candidate_bytes(2048)),
        (64, 100, False, "simt", 1, 64 * 512 + candidate_bytes(100)),
        (1, 2048, True, "simt", 1, 512 + candidate_bytes(2048)),
        (16, 7, True, "simt", 1, 16 * 512 + candidate_bytes(7)),
        (128, 8192, True, "simt", 1, 128 * 512 + candidate_bytes(8192)),
    ],
)
def test_indexer_topk_kernel_choice(heads, k, tensor_cores, kernel, rows, smem):
    """The launcher's rule, answered on any build: QGMMA for 32 or 64 heads (as indexer_logits), one
    CTA selecting for the 64 / H queries of its wgmma tile when their 2k + 256 candidates fit next to
    the fixed 48 KiB, else for one; SIMT otherwise."""
    assert ops.indexer_topk_kernel(heads, k, tensor_cores) == (kernel, rows, smem)
    assert smem <= SM90_SMEM


def test_indexer_topk_kernel_every_shape_fits():
    """Whatever heads and k the op accepts, the chosen kernel's shared memory fits a CTA: nothing to
    refuse."""
    for heads in range(1, 129):
        for k in (0, 1, 2048, 5600, 5601, 8192):
            for tensor_cores in (True, False):
                kernel, rows, smem = ops.indexer_topk_kernel(heads, k, tensor_cores)
                assert kernel == ("qgmma" if tensor_cores and heads in (32, 64) else "simt")
                assert rows == (2 if kernel == "qgmma" and heads == 32 and k <= 5600 else 1)
                assert 0 < smem <= SM90_SMEM


def test_indexer_topk_kernel_follows_the_environment(monkeypatch):
    assert ops.indexer_topk_kernel(32, 2048)[0] == "simt"  # the autouse fixture's GLM52_INDEXER_KERNEL=simt
    monkeypatch.delenv("GLM52_INDEXER_KERNEL")
    assert ops.indexer_topk_kernel(32, 2048)[0] == "qgmma"
    assert ops.indexer_topk_kernel(8, 2048)[0] == "simt"


def test_indexer_topk_kernel_rejects_bad_input():
    with pytest.raises(RuntimeError, match=r"indexer_topk_kernel: argument 'heads' must be in \[1, 128\]"):
        ops.indexer_topk_kernel(0, 16)
    with pytest.raises(RuntimeError, match=r"indexer_topk_kernel: argument 'k' must be in \[0, 8192\]"):
        ops.indexer_topk_kernel(32, 8193)


@pytest.mark.cuda
@pytest.mark.usefixtures("tensor_core_logits")
@pytest.mark.parametrize("heads", [32, 64])
@pytest.mark.parametrize("k,l", [(1, 1000), (7, 3001), (300, 1000), (256, 4097), (2048, 9000), (6000, 14000)])
def test_indexer_topk_qgmma_equals_logits_then_topk(heads, k, l):
    """QGMMA scoring: the fused result is topk_indices of the QGMMA indexer_logits, bit for bit (same
    tile code), on random data with ragged ranges (empty, negative start, past L, two queries of one
    CTA with different ranges), an odd row count (the last 32-head CTA has one query) and a NaN key."""
    assert ops.indexer_topk_kernel(heads, k)[0] == "qgmma"
    g = gen(k * 5 + l + heads)
    s = 7
    q8, w, k8, k_scale = random_inputs(s, heads, l, g)
    k8.view(torch.uint8)[l // 2] = 0x7F
    ks, ke = ranges(s, l, g)
    got, want = fused_and_materialized((q8, w, k8, k_scale, ks, ke), k, "cuda")
    assert torch.equal(got, want)
    assert (got[2] == -1).all()
    assert l // 2 not in got.tolist()


@pytest.mark.cuda
@pytest.mark.usefixtures("tensor_core_logits")
@pytest.mark.parametrize("heads,k", [(32, 5), (32, 63), (32, 701), (64, 5), (64, 701), (32, 5601), (64, 8192)])
def test_indexer_topk_qgmma_ties_match_reference_and_cpu(heads, k):
    """Exact-integer data (every score exact on tensor cores too) where every key has a twin half the
    keys later: the QGMMA path (32 heads with k > 5600: one query per CTA) equals the fp64 reference
    and the CPU twin exactly, ties to the lower column."""
    g = gen(k + heads)
    s, l = 5, max(2600, 2 * k + 600)
    l += l % 2
    q8, w, k8, k_scale = random_inputs(s, heads, l, g, integer=True)
    k8[l // 2 :] = k8[: l // 2]
    ks, ke = ranges(s, l, g)
    args = (q8, w, k8, k_scale, ks, ke)
    got, want = fused_and_materialized(args, k, "cuda")
    ref = reference.indexer_topk(*args, k)
    assert torch.equal(got, ref) and torch.equal(want, ref)
    assert torch.equal(ops.indexer_topk(*args, k), ref)


@pytest.mark.cuda
@pytest.mark.usefixtures("tensor_core_logits")
@pytest.mark.parametrize("heads,k", [(32, 3), (32, 100), (64, 100), (32, 2048), (32, 6000)])
def test_indexer_topk_paged_qgmma_equals_logits_then_topk(heads, k):
    """Paged keys on the QGMMA path: scattered pages, an odd n (32 heads: a CTA with one query), an
    unmapped block, a zero length, lengths past the table."""
    g = gen(heads * 3 + k)
    seq_lens, n, num_blocks = [1, 64, 700, 2500], 3, 60
    table, cache, lengths = paged_indexer_case(seq_lens, n, num_blocks, g)
    b = len(seq_lens)
    lengths[1, 0] = 0
    lengths[0, 2] = 10**6
    table[3, 2] = -1
    q8, w, _, _ = random_inputs(b * n, heads, 0, g)
    args = [t.cuda() for t in (q8.view(b, n, heads, 128), w.view(b, n, heads), cache, table, lengths)]
    out = poisoned((b, n, k), torch.int32, "cuda")
    ops.indexer_topk_paged(*args, k, out=out)
    logits = ops.indexer_logits_paged(*args, table.shape[1] * 64)
    want = ops.topk_indices(logits.view(b * n, -1), k).view(b, n, k)
    assert torch.equal(out.cpu(), want.cpu())
    assert (out[1, 0] == -1).all()
    assert not ((out[3] >= 128) & (out[3] < 192)).any()
