"""Split-KV sparse MLA decode: the plan (sparse_mla_decode_metadata) against its unit-by-unit
definition and its invariants, and sparse_mla_decode with a plan against the unsplit op and the
reference across part counts (1, 2, uneven, more pieces than key blocks), −1 and out-of-range
indices, empty rows, plans from row lengths, poisoned outputs and workspace."""

from __future__ import annotations

import pytest
import torch
from attention_testing import gen, random_latent
from conftest import DEVICES, poisoned
from test_attention_sparse_mla import SM_SCALE, assert_attention_close

from glm52_ext import ops, reference

PLAN_CASES = [([2048, 2048, 2048], 132), ([2048] * 5, 4), ([10, 0, 2048, 64, 65], 7), ([], 3), ([0], 2),
              ([3000, 1, 4000], 33), ([1] * 40, 3), ([700, 5, 0, 900], 200), ([-5, 64, 128], 5),
              ([2**31 - 1, 3], 4)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("row_topk,parts", PLAN_CASES)
def test_metadata_matches_its_definition(device, row_topk, parts):
    topk = torch.tensor(row_topk, dtype=torch.int32)
    meta, splits = ops.sparse_mla_decode_metadata(topk.to(device), parts)
    assert meta.dtype == splits.dtype == torch.int32 and meta.shape == (parts, 8) and splits.shape == (len(row_topk) + 1,)
    want_meta, want_splits = reference.sparse_mla_decode_metadata(topk, parts)
    assert torch.equal(meta.cpu(), want_meta) and torch.equal(splits.cpu(), want_splits)


def pieces_of(meta: torch.Tensor, splits: torch.Tensor, row_topk: list[int]):
    """{(row, piece index): (first block, end block)} read off the plan's layout."""
    rows = len(row_topk)
    blocks = [-(-max(t, 0) // 64) for t in row_topk]
    out = {}
    for br, bb, er, eb, split, *rest in meta.tolist():
        assert rest == [0, 0, 0]
        for r in range(br, min(er, rows - 1) + 1):
            key = (r, split if r == br else 0)
            assert key not in out, f"piece {key} run twice"
            out[key] = (bb if r == br else 0, eb if r == er else blocks[r])
    return out


@pytest.mark.parametrize("seed", range(6))
def test_metadata_covers_every_row_block_exactly_once(seed):
    g = gen(seed)
    rows = int(torch.randint(1, 30, (), generator=g))
    row_topk = (torch.randint(0, 3000, (rows,), generator=g) * (torch.rand(rows, generator=g) > 0.2)).int()
    parts = int(torch.randint(1, 160, (), generator=g))
    meta, splits = ops.sparse_mla_decode_metadata(row_topk, parts)
    pieces = pieces_of(meta, splits, row_topk.tolist())
    counts = (splits[1:] - splits[:-1]).tolist()
    assert splits[0] == 0 and min(counts) >= 1 and int(splits[-1]) <= rows + parts - 1
    for r, t in enumerate(row_topk.tolist()):
        spans = [pieces[(r, i)] for i in range(counts[r])]  # every piece index 0..n-1 exactly once
        assert len([k for k in pieces if k[0] == r]) == counts[r]
        ends = [0] + [e for _, e in spans]
        assert all(b == ends[i] and e >= b for i, (b, e) in enumerate(spans)), spans  # contiguous, in order
        assert ends[-1] == -(-t // 64)


def decode_inputs(g, batch, sq, heads, k, token_bytes, num_blocks=12):
    cache = torch.zeros(num_blocks, 64, token_bytes, dtype=torch.uint8)
    ops.mla_cache_write(random_latent(num_blocks * 64, g), torch.randperm(num_blocks * 64, generator=g), cache)
    idx = torch.stack([torch.randperm(num_blocks * 64 + 40, generator=g)[:k] for _ in range(batch * sq)]).int()
    idx = idx.view(batch, sq, k)
    idx[idx >= num_blocks * 64 + 20] = -1  # −1 entries; the rest past the cache are out of range: ignored
    if batch > 1:
        idx[1] = -1  # a batch row with nothing to attend to
    q = random_latent(batch * sq * heads, g, scale=0.5).view(batch, sq, heads, 576)
    return q, cache, idx


def split_decode(q, cache, idx, row_topk, parts, device, workspace=True):
    meta, splits = ops.sparse_mla_decode_metadata(row_topk.to(device), parts)
    b, sq, h, _ = q.shape
    out, lse = poisoned((b, sq, h, 512), torch.bfloat16, device), poisoned((b, sq, h), torch.float32, device)
    ws = None
    if workspace:  # NaN bytes: nothing may be read before it is written
        ws = torch.full((ops.sparse_mla_decode_workspace_bytes(b, sq, h, parts),), 0xFF, dtype=torch.uint8, device=device)
    ops.sparse_mla_decode(q.to(device), cache.to(device), idx.to(device), SM_SCALE, tile_scheduler_metadata=meta,
                          num_splits=splits, workspace=ws, out=out, lse=lse)
    return out.cpu(), lse.cpu(), meta.cpu(), splits.cpu()


def assert_split_equals_unsplit(out, lse, want_out, want_lse):
    """The merge reorders fp32 sums only: lse to fp32 rounding, out to one bf16 rounding step."""
    assert torch.equal(torch.isneginf(lse), torch.isneginf(want_lse))
    fin = torch.isfinite(want_lse)
    torch.testing.assert_close(lse[fin], want_lse[fin], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(out.float(), want_out.float(), rtol=2**-7, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("token_bytes", [1152, 656])
@pytest.mark.parametrize("parts", [1, 2, 5, 64])
@pytest.mark.parametrize("heads,sq", [(1, 1), (16, 2), (128, 1)])
def test_split_decode_matches_unsplit_and_reference(device, token_bytes, parts, heads, sq):
    """Plans over the whole k: 1 part (one piece per row), 2, an uneven 5, and 64 (more pieces than
    key blocks: empty pieces in the rows' overhead units)."""
    g = gen(parts * 7 + heads + sq + token_bytes)
    batch, k = 3, 200
    q, cache, idx = decode_inputs(g, batch, sq, heads, k, token_bytes)
    out, lse, meta, splits = split_decode(q, cache, idx, torch.full((batch,), k, dtype=torch.int32), parts, device)
    if parts > 1:
        assert int(splits[-1]) > batch  # some row really ran in several pieces
    want_out, want_lse = ops.sparse_mla_decode(q, cache, idx, SM_SCALE)
    assert_split_equals_unsplit(out, lse, want_out, want_lse)
    assert_attention_close(out, lse, *reference.sparse_mla_decode(q, cache, idx, SM_SCALE))
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all()
    if parts == 1:  # every row in one piece, written straight to the output: the unsplit result bit for bit
        assert torch.equal(out, want_out) and torch.equal(lse, want_lse)


@pytest.mark.parametrize("device", DEVICES)
def test_plan_from_row_lengths(device):
    """A plan from each row's valid length (what the model passes: the indexer pads with −1 at the
    end) balances the parts by the real work and gives the unsplit result; so does one whose rows
    hold valid indices past their planned length (the last piece of a row runs to k)."""
    g = gen(11)
    batch, sq, heads, k = 4, 2, 8, 300
    q, cache, idx = decode_inputs(g, batch, sq, heads, k, 656)
    lengths = torch.tensor([300, 70, 0, 129], dtype=torch.int32)
    padded = torch.where(torch.arange(k) < lengths.view(-1, 1, 1), idx, -1)
    for indices in (padded, idx):
        want_out, want_lse = ops.sparse_mla_decode(q, cache, indices, SM_SCALE)
        for parts in (1, 3, 4, 9):
            out, lse, _, splits = split_decode(q, cache, indices, lengths, parts, device, workspace=parts != 3)
            assert_split_equals_unsplit(out, lse, want_out, want_lse)
    assert int(splits[-1]) > batch
    assert torch.isneginf(lse[1]).all() and (out[1] == 0).all()


@pytest.mark.parametrize("device", DEVICES)
def test_split_decode_empty_shapes(device):
    cache = torch.zeros(1, 64, 656, dtype=torch.uint8, device=device)
    meta, splits = ops.sparse_mla_decode_metadata(torch.zeros(0, dtype=torch.int32, device=device), 4)
    assert splits.tolist() == [0] and (meta.cpu() == torch.tensor([0, 0, 0, 0, 0, 0, 0, 0])).all()
    out, lse = ops.sparse_mla_decode(torch.zeros(0, 1, 4, 576, device=device).bfloat16(), cache,
                                     torch.zeros(0, 1, 8, dtype=torch.int32, device=device), 0.1,
                                     tile_scheduler_metadata=meta, num_splits=splits)
    assert out.shape == (0, 1, 4, 512) and lse.shape == (0, 1, 4)
    meta, splits = ops.sparse_mla_decode_metadata(torch.zeros(2, dtype=torch.int32, device=device), 3)
    out, lse = ops.sparse_mla_decode(torch.randn(2, 1, 4, 576, device=device).bfloat16(), cache,
                                     torch.zeros(2, 1, 0, dtype=torch.int32, device=device), 0.1,
                                     tile_scheduler_metadata=meta, num_splits=splits)
    assert (out == 0).all() and torch.isneginf(lse).all()


def test_workspace_bytes_bound_the_plan():
    assert ops.sparse_mla_decode_workspace_bytes(3, 2, 16, 5) == (3 + 5) * 2 * 16 * 513 * 4
    assert ops.sparse_mla_decode_workspace_bytes(0, 1, 1, 1) == 1 * 512 * 4 + 16


@pytest.mark.parametrize("device", DEVICES)
def test_split_decode_rejects_bad_input(device):
    q = torch.randn(2, 1, 8, 576, device=device).bfloat16()
    cache = torch.zeros(1, 64, 656, dtype=torch.uint8, device=device)
    idx = torch.zeros(2, 1, 4, dtype=torch.int32, device=device)
    meta, splits = ops.sparse_mla_decode_metadata(torch.full((2,), 4, dtype=torch.int32, device=device), 3)
    need = ops.sparse_mla_decode_workspace_bytes(2, 1, 8, 3)
    decode = lambda **kw: ops.sparse_mla_decode(q, cache, idx, 0.1, **kw)  # noqa: E731
    cases = [
        (lambda: decode(tile_scheduler_metadata=meta), "argument 'num_splits' must be given with 'tile_scheduler_metadata'"),
        (lambda: decode(num_splits=splits), "argument 'tile_scheduler_metadata' must be given with 'num_splits'"),
        (lambda: decode(tile_scheduler_metadata=meta.long(), num_splits=splits), "argument 'tile_scheduler_metadata' must have dtype"),
        (lambda: decode(tile_scheduler_metadata=meta[:, :4].contiguous(), num_splits=splits),
         r"argument 'tile_scheduler_metadata' must have shape \[3, 8\]"),
        (lambda: decode(tile_scheduler_metadata=meta, num_splits=splits[:2]), r"argument 'num_splits' must have shape \[3\]"),
        (lambda: decode(tile_scheduler_metadata=meta, num_splits=splits,
                        workspace=torch.empty(need - 1, dtype=torch.uint8, device=device)),
         "argument 'workspace' must hold at least"),
        (lambda: decode(tile_scheduler_metadata=meta, num_splits=splits,
                        workspace=torch.empty(need, dtype=torch.float32, device=device)), "argument 'workspace' must have dtype"),
        (lambda: decode(workspace=torch.empty(need, dtype=torch.uint8, device=device)),
         "argument 'workspace' is only used with a split plan"),
        (lambda: ops.sparse_mla_decode_metadata(torch.zeros(2, 1, dtype=torch.int32, device=device), 3),
         "argument 'row_topk' must be 1-D"),
        (lambda: ops.sparse_mla_decode_metadata(torch.zeros(2, device=device), 3), "argument 'row_topk' must have dtype"),
        (lambda: ops.sparse_mla_decode_metadata(torch.zeros(2, dtype=torch.int32, device=device), 0),
         "argument 'num_sm_parts' must be in 1..65536"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()


def test_sm_parts_share_the_device_among_a_step_s_ctas():
    threads = torch.get_num_threads()
    assert ops.sparse_mla_decode_sm_parts("cpu", 1, 64) == threads
    assert ops.sparse_mla_decode_sm_parts("cpu", 4 * threads, 128) == 1


@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ["hgmma", "simt"])
@pytest.mark.parametrize("heads,sq,parts", [(64, 1, 132), (16, 2, 7), (128, 1, 33), (100, 3, 2)])
def test_cuda_split_decode_matches_cpu(monkeypatch, kernel, heads, sq, parts):
    """CUDA split kernels and merge against the CPU twin's split path and the CUDA unsplit path;
    the device plan against the CPU plan (600 rows: several chunks of the metadata kernel's scan)."""
    monkeypatch.setenv("GLM52_SPARSE_MLA_KERNEL", kernel)
    for rows, p in [(600, 132), (5, 1), (0, 3)]:
        row_topk = torch.randint(0, 4000, (rows,), generator=gen(rows)).int()
        want = ops.sparse_mla_decode_metadata(row_topk, p)
        got = ops.sparse_mla_decode_metadata(row_topk.cuda(), p)
        assert all(torch.equal(a.cpu(), b) for a, b in zip(got, want))
    g = gen(heads + sq)
    batch, k = 3, 2048
    q, cache, idx = decode_inputs(g, batch, sq, heads, k, 656, num_blocks=40)
    lengths = torch.tensor([2048, 1000, 0], dtype=torch.int32)
    idx = torch.where(torch.arange(k) < lengths.view(-1, 1, 1), idx, -1)
    out, lse, _, _ = split_decode(q, cache, idx, lengths, parts, "cuda")
    unsplit = ops.sparse_mla_decode(q.cuda(), cache.cuda(), idx.cuda(), SM_SCALE)
    assert_split_equals_unsplit(out, lse, unsplit[0].cpu(), unsplit[1].cpu())
    cpu_out, cpu_lse, _, _ = split_decode(q, cache, idx, lengths, parts, "cpu")
    if kernel == "simt":  # fp32 throughout: the CPU twin's numbers
        assert_split_equals_unsplit(out, lse, cpu_out, cpu_lse)
    else:  # BF16 P and keys on the tensor cores: the unsplit kernel's documented roundings
        torch.testing.assert_close(out.float(), cpu_out.float(), rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(lse, cpu_lse, rtol=1e-4, atol=1e-3)
