"""The FP8 MoE layer path (route -> quant -> permute -> grouped GEMM gate+up -> SwiGLU-quant ->
grouped GEMM down -> combine, plus the dense shared expert) against a plain-PyTorch MoE on the
dequantized weights."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES

from glm52_ext import ops, reference

H, INTER, E, TOP_K = 256, 128, 8, 4


def quantize_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A checkpoint-style FP8 weight: e4m3 codes and fp32 scale per 128x128 block."""
    *lead, n, k = w.shape
    blocks = w.reshape(*lead, n // 128, 128, k // 128, 128)
    scale = blocks.abs().amax(dim=(-3, -1)) / 448.0
    codes = (blocks / scale[..., :, None, :, None]).to(torch.float8_e4m3fn).reshape(w.shape)
    return codes, scale


def dequant(codes, scale):
    return reference.dequant_fp8_block(codes, scale, torch.float64)


def experts_weights(g):
    gate, up = torch.randn(E, INTER, H, generator=g) * 0.05, torch.randn(E, INTER, H, generator=g) * 0.05
    down = torch.randn(E, H, INTER, generator=g) * 0.05
    w13, w13_scale = quantize_blocks(torch.cat([gate, up], dim=1))
    w2, w2_scale = quantize_blocks(down)
    return w13, w13_scale, w2, w2_scale


def swiglu(x64, w13, w2):
    h = x64 @ w13.T
    return (torch.nn.functional.silu(h[:, :INTER]) * h[:, INTER:]) @ w2.T


def plain_moe(x, weights, ids, w13, w13_scale, w2, w2_scale):
    """float64, unquantized activations, dequantized weights: the model's math."""
    x64 = x.double()
    out = torch.zeros_like(x64)
    for e in range(E):
        tokens, slot = (ids == e).nonzero(as_tuple=True)
        if tokens.numel():
            y = swiglu(x64[tokens], dequant(w13[e], w13_scale[e]), dequant(w2[e], w2_scale[e]))
            out.index_add_(0, tokens, y * weights[tokens, slot, None].double())
    return out


def quantized_moe(x, weights, ids, w13, w13_scale, w2, w2_scale):
    """The same quantized math in plain PyTorch: FP8 activations per 128 columns, bf16 GEMM outputs."""
    xq, xs = reference.quant_fp8_per_token_group(x, 128)
    x64 = reference.dequant_fp8_block(xq, xs, torch.float64, (1, 128))
    out = torch.zeros_like(x64)
    for e in range(E):
        tokens, slot = (ids == e).nonzero(as_tuple=True)
        if tokens.numel():
            h = (x64[tokens] @ dequant(w13[e], w13_scale[e]).T).to(torch.bfloat16)
            hq, hs = reference.silu_and_mul_quant_fp8(h)
            h64 = reference.dequant_fp8_block(hq, hs, torch.float64, (1, 128))
            y = (h64 @ dequant(w2[e], w2_scale[e]).T).to(torch.bfloat16).double()
            out.index_add_(0, tokens, y * weights[tokens, slot, None].double())
    return out


def routed_inputs(t, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(t, H, generator=g) * torch.exp(torch.randn(t, 1, generator=g))).to(torch.bfloat16)
    logits, bias = torch.randn(t, E, generator=g), torch.randn(E, generator=g) * 0.1
    weights, ids = reference.moe_route(logits, bias, TOP_K, 1, 1, 2.5, True)
    return x, weights, ids, experts_weights(g)


def rel(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("t", [1, 37, 300])
def test_fp8_moe_experts_match_plain_pytorch_moe(device, t):
    x, weights, ids, w = routed_inputs(t, seed=t)
    d = device
    ours = ops.fp8_moe_experts(x.to(d), weights.to(d), ids.to(d), *(p.to(d) for p in w)).cpu()
    assert ours.shape == x.shape and ours.dtype == x.dtype
    exact = plain_moe(x, weights, ids, *w)
    same_math = quantized_moe(x, weights, ids, *w)
    # Our kernels vs the same quantized math: only accumulation order and rounding ties differ.
    assert rel(ours, same_math) < 1e-2
    # Against the unquantized model: no worse than a small factor of what FP8 itself costs.
    assert rel(ours, exact) <= 1.25 * rel(same_math.to(torch.bfloat16), exact) + 1e-3
    assert rel(ours, exact) < 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_moe_experts_split_across_ranks_sums_to_the_whole(device):
    """Expert parallelism: each rank holds half of the experts and drops the others' ids."""
    x, weights, ids, (w13, w13_scale, w2, w2_scale) = routed_inputs(50, seed=2)
    d = device
    args = (x.to(d), weights.to(d), ids.to(d))
    whole = ops.fp8_moe_experts(*args, w13.to(d), w13_scale.to(d), w2.to(d), w2_scale.to(d)).cpu().double()
    half = E // 2
    parts = [ops.fp8_moe_experts(*args, w13[s].to(d), w13_scale[s].to(d), w2[s].to(d), w2_scale[s].to(d),
                                 first_expert=s.start).cpu().double() for s in (slice(0, half), slice(half, E))]
    # Each part and the whole are rounded to bf16 once (half an ulp, 2^-8 relative, each).
    bound = 2.0**-8 * (parts[0].abs() + parts[1].abs() + whole.abs()) + 1e-6
    assert ((parts[0] + parts[1] - whole).abs() <= bound).all()


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_swiglu_mlp_matches_plain_pytorch(device):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(20, H, generator=g).to(torch.bfloat16)
    w13, w13_scale = quantize_blocks(torch.randn(2 * INTER, H, generator=g) * 0.05)
    w2, w2_scale = quantize_blocks(torch.randn(H, INTER, generator=g) * 0.05)
    ours = ops.fp8_swiglu_mlp(x.to(device), w13.to(device), w13_scale.to(device), w2.to(device), w2_scale.to(device))
    exact = swiglu(x.double(), dequant(w13, w13_scale), dequant(w2, w2_scale))
    assert rel(ours.cpu(), exact) < 0.1


@pytest.mark.parametrize("device", DEVICES)
def test_fp8_moe_experts_trace_under_torch_compile(device):
    x, weights, ids, w = routed_inputs(24, seed=4)
    args = (x.to(device), weights.to(device), ids.to(device), *(p.to(device) for p in w))
    torch._dynamo.reset()
    compiled = torch.compile(ops.fp8_moe_experts, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(*args), ops.fp8_moe_experts(*args))
