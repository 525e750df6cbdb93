"""topk_indices (radix selection) against the reference: lengths 0, 1, exactly k and more than k,
non-finite entries, ties, 1M-column rows, padded row strides and per-row start columns."""

from __future__ import annotations

import math

import pytest
import torch
from attention_testing import gen
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference


def check(logits, k, lengths, device):
    want = reference.topk_indices(logits, k, lengths)
    out = poisoned((logits.shape[0], k), torch.int32, device)
    ops.topk_indices(logits.to(device), k, None if lengths is None else lengths.to(device), out=out)
    assert torch.equal(out.cpu(), want)
    return want


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k", [1, 7, 64, 2048])
def test_topk_matches_reference(device, k):
    g = gen(k)
    rows, cols = 9, 3000
    logits = torch.randn(rows, cols, generator=g) * torch.exp(torch.randn(rows, 1, generator=g) * 3)
    logits[1] = -logits[1].abs()  # all negative
    logits[2, ::2] = -math.inf  # causal-style masking
    logits[3, :] = -math.inf
    logits[3, [5, 17]] = 1.0  # fewer than k finite
    logits[4, 100:200] = float("nan")
    logits[4, 300] = math.inf  # +inf is not finite: never selected
    lengths = torch.tensor([cols, cols, cols, cols, cols, 0, 1, k, k + 1], dtype=torch.int32)
    want = check(logits, k, lengths, device)
    assert (want[5] == -1).all() and want[6, 0] == 0 and (want[6, 1:] == -1).all()
    assert (want[7, : min(k, cols)] >= 0).all()
    assert 300 not in want[4].tolist() and not any(100 <= c < 200 for c in want[4].tolist())


@pytest.mark.parametrize("device", DEVICES)
def test_topk_ties_go_to_lower_columns(device):
    """Values from a small set (many ties at the threshold), zeros of both signs, denormals."""
    g = gen(3)
    logits = torch.randint(-3, 4, (6, 5000), generator=g).float()
    logits[0, ::3] = -0.0
    logits[1, :50] = 1e-40
    want = check(logits, 300, None, device)
    for r in range(6):  # the k-th largest value is respected and ties are the lowest columns
        sel = want[r][want[r] >= 0]
        kth = logits[r, sel].min()
        assert (logits[r, sel] >= kth).all() and int((logits[r] > kth).sum()) <= 300


@pytest.mark.parametrize("device", DEVICES)
def test_topk_of_a_million_columns(device):
    """A 1M-column row (1M-token context) with distinct values: the set equals torch.topk's."""
    g = gen(4)
    cols, k = 1 << 20, 2048
    logits = torch.randperm(cols, generator=g).float().view(1, cols) * 1e-3 - 300.0
    logits = torch.cat((logits, logits.flip(1)))
    lengths = torch.tensor([cols, cols - 12345], dtype=torch.int32)
    got = ops.topk_indices(logits.to(device), k, lengths.to(device)).cpu()
    for r in range(2):
        n = int(lengths[r])
        want = torch.topk(logits[r, :n], k).indices.sort().values.int()
        assert torch.equal(got[r], want)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_padded_stride_and_row_starts(device):
    """DeepGEMM-style logits: rows in a wider, padded buffer (poison in the padding), each row's
    candidates a window [ks, ke) of the columns (ragged prefill), indices relative to ks."""
    g = gen(11)
    rows, cols, stride, k = 7, 700, 1024, 64
    buffer = torch.full((rows, stride), math.inf)  # +inf in the padding would win if it were read
    buffer[:, :cols] = torch.randn(rows, cols, generator=g)
    logits = buffer[:, :cols]
    starts = torch.tensor([0, 5, 100, 699, 700, -3, 650], dtype=torch.int32)
    lengths = torch.tensor([700, 64, 63, 1, 0, 10, 1000], dtype=torch.int32)  # past the row end: clamped
    want = reference.topk_indices(logits.contiguous(), k, lengths, starts)
    out = poisoned((rows, k), torch.int32, device)
    ops.topk_indices(buffer.to(device)[:, :cols], k, lengths.to(device),
                     row_starts=starts.to(device), out=out)
    assert torch.equal(out.cpu(), want)
    assert torch.equal(want[1], torch.arange(64, dtype=torch.int32))  # window of exactly k: all, relative
    assert want[3, 0] == 0 and (want[3, 1:] == -1).all() and (want[4] == -1).all()
    assert (want[6, :50] >= 0).all() and (want[6, 50:] == -1).all()  # 650 + 1000 clamps to 50 columns
    # Without lengths: every column from the start.
    assert torch.equal(ops.topk_indices(logits.to(device), k, row_starts=starts.to(device)).cpu(),
                       reference.topk_indices(logits.contiguous(), k, None, starts))


@pytest.mark.parametrize("device", DEVICES)
def test_topk_empty_shapes(device):
    assert ops.topk_indices(torch.randn(0, 100, device=device), 8).shape == (0, 8)
    assert (ops.topk_indices(torch.randn(3, 0, device=device), 4) == -1).all()
    assert ops.topk_indices(torch.randn(3, 10, device=device), 0).shape == (3, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_topk_rejects_bad_input(device):
    x = torch.randn(4, 100, device=device)
    cases = [
        (lambda: ops.topk_indices(x.double(), 8), "argument 'logits' must have dtype"),
        (lambda: ops.topk_indices(x.view(-1), 8), "argument 'logits' must be 2-D"),
        (lambda: ops.topk_indices(x.t(), 8), "argument 'logits' must have unit stride along L"),
        (lambda: ops.topk_indices(x.as_strided((4, 100), (50, 1)), 8), "argument 'logits' must have a row stride >= L"),
        (lambda: ops.topk_indices(x, 8, row_starts=torch.zeros(4, dtype=torch.int64, device=device)),
         "argument 'row_starts' must have dtype"),
        (lambda: ops.topk_indices(x, -1), "argument 'k' must be >= 0"),
        (lambda: ops.topk_indices(x, 8, torch.zeros(3, dtype=torch.int32, device=device)), r"argument 'lengths' must have shape \[4\]"),
        (lambda: ops.topk_indices(x, 8, torch.zeros(4, device=device)), "argument 'lengths' must have dtype"),
        (lambda: ops.topk_indices(x, 8, out=torch.empty(4, 8, device=device)), "argument 'out' must have dtype"),
    ]
    for call, message in cases:
        with pytest.raises(RuntimeError, match=message):
            call()
