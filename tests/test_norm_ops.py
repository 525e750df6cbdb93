"""rms_norm and add_rms_norm against glm52_ext.reference, on every device; the CUDA kernel and
the CPU twin share one summation order, so they agree bit for bit."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference

# One rounding of the output (plus, for add_rms_norm, the rounded sum it is computed from).
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def inputs(shape, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(*shape[:-1], 1, generator=g))
    r = torch.randn(shape, generator=g)
    w = 1 + 0.3 * torch.randn(shape[-1], generator=g)
    return (t.to(dtype).to(device) for t in (x, r, w))


def close(got, want, dtype):
    scale = want.double().abs().amax(-1, keepdim=True).clamp_min(1e-30)
    return ((got.double() - want.double()).abs() / scale).max() <= TOLERANCE[dtype]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", [(1, 64), (5, 300), (2, 3, 6144), (4, 1)])
def test_rms_norm_matches_reference(device, dtype, shape):
    x, r, w = inputs(shape, dtype, device, sum(shape))
    out = poisoned(shape, dtype, device)
    ops.rms_norm(x, w, 1e-6, out=out)
    assert close(out.cpu(), reference.rms_norm(x.cpu(), w.cpu(), 1e-6), dtype)
    out, total = poisoned(shape, dtype, device), poisoned(shape, dtype, device)
    ops.add_rms_norm(x, r, w, 1e-5, out=out, sum=total)
    want_out, want_sum = reference.add_rms_norm(x.cpu(), r.cpu(), w.cpu(), 1e-5)
    assert torch.equal(total.cpu(), want_sum)  # one rounding of an exact fp32/fp64 sum
    assert close(out.cpu(), want_out, dtype)


def test_cpu_twin_replays_the_kernel_order_and_matches_the_model_norm():
    """The fused op equals the unfused torch math the model used to run, to fp32 rounding."""
    x, r, w = inputs((3, 700), torch.float32, "cpu", 1)
    h = x + r
    want = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    out, total = ops.add_rms_norm(x, r, w, 1e-6)
    assert torch.equal(total, h)
    torch.testing.assert_close(out, want, rtol=2e-6, atol=1e-6)


def test_empty_rows():
    x = torch.empty(0, 16)
    assert ops.rms_norm(x, torch.ones(16), 1e-6).shape == (0, 16)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_input_is_named(device):
    x, r, w = inputs((4, 32), torch.float32, device, 0)
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm(x, w[:16], 1e-6)
    with pytest.raises(RuntimeError, match="weight"):
        ops.rms_norm(x, w.double(), 1e-6)
    with pytest.raises(RuntimeError, match="'x'"):
        ops.rms_norm(x.t(), w[:4], 1e-6)
    with pytest.raises(RuntimeError, match="residual"):
        ops.add_rms_norm(x, r[:2], w, 1e-6)
    with pytest.raises(RuntimeError, match="eps"):
        ops.rms_norm(x, w, -1.0)
    with pytest.raises(RuntimeError, match="'x'"):
        ops.rms_norm(x.int(), w, 1e-6)
