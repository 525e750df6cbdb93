"""quant_fp8_per_token_group and dequant_fp8_block against glm52_ext.reference, on every device."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def codes(q: torch.Tensor) -> torch.Tensor:
    return q.view(torch.uint8)


def random_activations(m, k, dtype, device, seed):
    """Mixed magnitudes per row (so groups get very different scales), plus a zero group."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, 1, generator=g) * 4)
    if m and k > 3:
        x[0, :3] = 0.0
    return x.to(dtype).to(device)


def quantize_out(x, group_size, ue8m0):
    """Run the out-variant into poisoned buffers, so an unwritten element fails the comparison."""
    m, k = x.shape
    q = poisoned((m, k), torch.float8_e4m3fn, x.device)
    s = poisoned((m, reference.ceil_div(k, group_size)), torch.float32, x.device)
    ops.quant_fp8_per_token_group(x, group_size, ue8m0, out=q, out_scale=s)
    return q, s


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "m,k,group_size",
    [(1, 128, 128), (7, 6144, 128), (33, 300, 128), (5, 2048, 64), (4, 7168, 7168), (9, 100, 32), (3, 129, 128),
     (2, 24, 8), (6, 13, 5), (0, 256, 128), (3, 0, 128)],
)
@pytest.mark.parametrize("ue8m0", [False, True])
def test_quant_matches_reference_bit_for_bit(device, dtype, m, k, group_size, ue8m0):
    x = random_activations(m, k, dtype, device, seed=m * 1000 + k + group_size)
    want_q, want_s = reference.quant_fp8_per_token_group(x.cpu(), group_size, ue8m0)
    q, s = quantize_out(x, group_size, ue8m0)
    assert torch.equal(codes(q).cpu(), codes(want_q))
    assert torch.equal(s.cpu(), want_s)
    fq, fs = ops.quant_fp8_per_token_group(x, group_size, ue8m0)
    assert torch.equal(codes(fq), codes(q)) and torch.equal(fs, s)


@pytest.mark.parametrize("device", DEVICES)
def test_quant_semantics(device):
    """The documented contract, independently of the reference: saturation, zero groups, ue8m0."""
    x = torch.tensor([[1000.0, -1000.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], device=device)
    q, s = ops.quant_fp8_per_token_group(x, group_size=4)
    assert s[0, 0].item() == pytest.approx(1000.0 / 448.0)
    assert q[0, :2].float().tolist() == [448.0, -448.0]
    assert q[1].float().abs().sum().item() == 0.0 and s[1, 0].item() > 0.0
    q8, s8 = ops.quant_fp8_per_token_group(x, group_size=4, scale_ue8m0=True)
    assert s8[0, 0].item() == 4.0  # 1000/448 = 2.23 -> 4
    assert s8[1, 0].item() == 2.0 ** -42  # 1e-10/448 = 2.2e-13 -> 2^-42


@pytest.mark.parametrize("device", DEVICES)
def test_quant_error_is_within_e4m3_precision(device):
    x = random_activations(16, 512, torch.float32, device, seed=7)
    q, s = ops.quant_fp8_per_token_group(x)
    back = reference.dequant_fp8_block(q.cpu(), s.cpu(), torch.float32, block=(1, 128))
    rel = ((back - x.cpu()).abs() / s.cpu().repeat_interleave(128, dim=1)).max().item()
    assert rel <= 16.0  # half an e4m3 ulp at the top binade (32) in units of the scale


@pytest.mark.parametrize("device", DEVICES)
def test_quant_row_strided_view_is_handled(device):
    """A column slice (row stride > K) is accepted and read in place; a column-strided view is not."""
    base = random_activations(6, 640, torch.bfloat16, device, seed=3)
    view = base[:, 128:512]
    want_q, want_s = reference.quant_fp8_per_token_group(view.cpu().contiguous())
    q, s = quantize_out(view, 128, False)
    assert torch.equal(codes(q).cpu(), codes(want_q)) and torch.equal(s.cpu(), want_s)
    with pytest.raises(RuntimeError, match="argument 'x' must have unit stride along K"):
        ops.quant_fp8_per_token_group(base.t())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("out_dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,block",
    [((256, 384), (128, 128)), ((300, 200), (128, 128)), ((2, 130, 257), (128, 128)), ((64, 48), (16, 16)),
     ((5, 7), (2, 3)), ((0, 128), (128, 128)), ((3, 0, 5), (128, 128))],
)
def test_dequant_matches_reference_bit_for_bit(device, out_dtype, shape, block):
    g = torch.Generator().manual_seed(sum(shape) + block[0])
    w = (torch.randn(shape, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    scale_shape = (*shape[:-2], reference.ceil_div(shape[-2], block[0]), reference.ceil_div(shape[-1], block[1]))
    scale_inv = torch.rand(scale_shape, generator=g) * 1e-2 + 1e-4
    want = reference.dequant_fp8_block(w, scale_inv, out_dtype, block)
    out = poisoned(shape, out_dtype, device)
    ops.dequant_fp8_block(w.to(device), scale_inv.to(device), out_dtype, block, out=out)
    assert torch.equal(out.cpu(), want)
    assert torch.equal(ops.dequant_fp8_block(w.to(device), scale_inv.to(device), out_dtype, block).cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_quant_then_dequant_round_trip_reproduces_reference(device):
    """The checkpoint path: weight quantized per 1x128 row group then read back as [N, K] blocks."""
    x = random_activations(64, 640, torch.float32, device, seed=11)
    q, s = ops.quant_fp8_per_token_group(x)
    back = ops.dequant_fp8_block(q, s, torch.float32, block=(1, 128))
    want = reference.dequant_fp8_block(*reference.quant_fp8_per_token_group(x.cpu()), torch.float32, (1, 128))
    assert torch.equal(back.cpu(), want)


BAD_QUANT = [
    (lambda d: (torch.randn(2, 3, 4, device=d), 128), "argument 'x' must be 2-D"),
    (lambda d: (torch.randn(4, device=d), 128), "argument 'x' must be 2-D"),
    (lambda d: (torch.randint(0, 5, (4, 128), device=d), 128), "argument 'x' must have dtype"),
    (lambda d: (torch.randn(4, 128, device=d).double(), 128), "argument 'x' must have dtype"),
    (lambda d: (torch.randn(4, 128, device=d), 0), "argument 'group_size' must be positive"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make,message", BAD_QUANT)
def test_quant_rejects_bad_input(device, make, message):
    x, group_size = make(device)
    with pytest.raises(RuntimeError, match=message):
        ops.quant_fp8_per_token_group(x, group_size)


@pytest.mark.parametrize("device", DEVICES)
def test_quant_rejects_bad_outputs(device):
    x = torch.randn(4, 256, device=device)
    good_q = torch.empty(4, 256, dtype=torch.float8_e4m3fn, device=device)
    good_s = torch.empty(4, 2, device=device)
    cases = [
        (torch.empty(4, 256, dtype=torch.uint8, device=device), good_s, "argument 'out' must have dtype"),
        (torch.empty(4, 255, dtype=torch.float8_e4m3fn, device=device), good_s, "argument 'out' must have shape"),
        (good_q, torch.empty(4, 3, device=device), r"argument 'out_scale' must have shape \[4, 2\]"),
        (good_q, torch.empty(2, 4, device=device).t(), "argument 'out_scale' must be contiguous"),
        (good_q, torch.empty(4, 2, device=device, dtype=torch.float16), "argument 'out_scale' must have dtype"),
    ]
    for q, s, message in cases:
        with pytest.raises(RuntimeError, match=message):
            ops.quant_fp8_per_token_group(x, 128, out=q, out_scale=s)


@pytest.mark.parametrize("device", DEVICES)
def test_dequant_rejects_bad_input(device):
    w = torch.randn(256, 256, device=device).to(torch.float8_e4m3fn)
    s = torch.rand(2, 2, device=device)
    with pytest.raises(RuntimeError, match="argument 'w' must have dtype"):
        ops.dequant_fp8_block(w.float(), s)
    with pytest.raises(RuntimeError, match=r"argument 'scale_inv' must have shape \[2, 2\]"):
        ops.dequant_fp8_block(w, torch.rand(2, 3, device=device))
    with pytest.raises(RuntimeError, match="argument 'scale_inv' must have dtype"):
        ops.dequant_fp8_block(w, s.half())
    with pytest.raises(RuntimeError, match="argument 'w' must be"):
        ops.dequant_fp8_block(w.view(-1), s)
    with pytest.raises(RuntimeError, match="argument 'block' must be two positive sizes"):
        ops.dequant_fp8_block(w, s, block=(0, 128))
    with pytest.raises(RuntimeError, match="argument 'w' must be contiguous"):
        ops.dequant_fp8_block(w.t(), s)


@pytest.mark.cuda
def test_device_mismatch_is_rejected():
    x = torch.randn(4, 128, device="cuda")
    with pytest.raises(RuntimeError, match="argument 'out' must be on the same device as 'x'"):
        ops.quant_fp8_per_token_group(
            x, out=torch.empty(4, 128, dtype=torch.float8_e4m3fn), out_scale=torch.empty(4, 1, device="cuda")
        )
    w = torch.randn(128, 128, device="cuda").to(torch.float8_e4m3fn)
    with pytest.raises(RuntimeError, match="argument 'scale_inv' must be on the same device as 'w'"):
        ops.dequant_fp8_block(w, torch.rand(1, 1))
