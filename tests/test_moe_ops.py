"""The MoE ops against glm52_ext.reference, on every device: FP8 block-scaled GEMMs (contiguous,
masked, dense), routing, permute/unpermute, SwiGLU + FP8 quant; bad inputs rejected."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, poisoned

from glm52_ext import ops, reference
from glm52_ext.reference.moe import dequant_blocks_f64, dequant_rows_f64

ALIGN = 128


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def fp8_activations(shape, g):
    """e4m3 rows with fp32 scales per 128 columns; magnitudes vary per row and per block."""
    k = shape[-1]
    blocks = reference.ceil_div(k, 128)
    mag = torch.exp(torch.randn(*shape[:-1], blocks, generator=g) * 2).repeat_interleave(128, dim=-1)[..., :k]
    x = torch.randn(*shape, generator=g) * mag
    q, s = reference.quant_fp8_per_token_group(x.reshape(-1, k), 128)
    return q.view(shape), s.view(*shape[:-1], blocks)


def fp8_weights(e, n, k, g, dense=False):
    """e4m3 codes over the whole range with fp32 128x128 block scales spanning 2^-12 .. 2^-4."""
    shape = (n, k) if dense else (e, n, k)
    codes = (torch.randn(*shape, generator=g) * 120).clamp(-448, 448).to(torch.float8_e4m3fn)
    sshape = shape[:-2] + (reference.ceil_div(n, 128), reference.ceil_div(k, 128))
    scales = torch.exp2(torch.randint(-12, -4, sshape, generator=g).float()) * (1 + torch.rand(sshape, generator=g))
    return codes, scales


def assert_gemm_close(out, a, a_scale, b, b_scale, device="cpu"):
    """|out - exact| within one bf16 rounding of the fp64 result plus an accumulation term.

    The inputs are exact in fp64, so the only differences are the kernel's sums and the final
    bfloat16 rounding (half an ulp, at most 2^-8 of the value). The sums: fp32 on the CPU
    (2^-17 of sum |a_k b_k| is far above their real error); on Hopper the FP8 wgmma accumulates a
    128-wide K block with ~14 significant bits before the fp32 promotion, so 2^-11 there. A wrong
    scale, block or row is off by O(1) of the value and fails either way.
    """
    a64, b64 = dequant_rows_f64(a, a_scale), dequant_blocks_f64(b, b_scale)
    exact = a64 @ b64.transpose(-1, -2)
    magnitude = a64.abs() @ b64.abs().transpose(-1, -2)
    err = (out.double() - exact).abs()
    tol = 2.0**-8 * exact.abs() + (2.0**-17 if device == "cpu" else 2.0**-11) * magnitude
    assert not out.isnan().any(), "unwritten (NaN) outputs"
    assert (err <= tol).all(), f"max excess {(err - tol).max().item():.3g}, max err {err.max().item():.3g}"


def contiguous_layout(counts, tail_rows=0):
    """m_indices of segments of counts[e] rows, each padded to ALIGN, plus tail_rows of padding."""
    m_indices = []
    for e, c in enumerate(counts):
        m_indices += [e] * c + [-1] * (-c % ALIGN)
    return torch.tensor(m_indices + [-1] * tail_rows, dtype=torch.int32)


GEMM_SHAPES = [(256, 384), (128, 128), (384, 256)]  # (N, K): multiples of 128 (every device)
PARTIAL_SHAPES = [(200, 300), (64, 100), (130, 129)]  # the CPU kernel's partial blocks


def shapes_for(device):
    return GEMM_SHAPES + (PARTIAL_SHAPES if device == "cpu" else [])


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_gemm_contiguous_with_no_local_expert_writes_zeros(device):
    """An expert-parallel rank that owns no expert (E = 0): every row is padding, written as zeros."""
    a, a_scale = fp8_activations((70, 256), gen(3))
    b, b_scale = fp8_weights(0, 128, 256, gen(4))
    m_indices = torch.full((70,), -1, dtype=torch.int32)
    out = poisoned((70, 128), torch.bfloat16, device)
    ops.fp8_grouped_gemm_contiguous(a.to(device), a_scale.to(device), b.to(device), b_scale.to(device),
                                    m_indices.to(device), out=out)
    assert (out.cpu() == 0).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "counts",
    [[5, 0, 130, 1], [0, 0, 0, 0], [300, 0, 0], [1], [128, 127, 129, 0, 2, 0, 0, 3]],
    ids=["mixed", "all-empty", "skew-to-one", "one-row", "edges"],
)
def test_grouped_gemm_contiguous_matches_reference(device, counts):
    g = gen(sum(counts) + len(counts))
    for n, k in shapes_for(device):
        m_indices = contiguous_layout(counts, tail_rows=3)
        a, a_scale = fp8_activations((m_indices.numel(), k), g)
        b, b_scale = fp8_weights(len(counts), n, k, g)
        out = poisoned((m_indices.numel(), n), torch.bfloat16, device)
        ops.fp8_grouped_gemm_contiguous(a.to(device), a_scale.to(device), b.to(device), b_scale.to(device),
                                        m_indices.to(device), out=out)
        out = out.cpu()
        pad = m_indices < 0
        assert (out[pad] == 0).all(), "padding rows must be zeros"
        for e in range(len(counts)):
            rows = m_indices == e
            if rows.any():
                assert_gemm_close(out[rows], a[rows], a_scale[rows], b[e], b_scale[e], device)
        want = reference.fp8_grouped_gemm_contiguous(a, a_scale, b, b_scale, m_indices)
        assert want.shape == out.shape and (want[pad] == 0).all()
        functional = ops.fp8_grouped_gemm_contiguous(a.to(device), a_scale.to(device), b.to(device),
                                                     b_scale.to(device), m_indices.to(device))
        assert torch.equal(functional.cpu(), out)


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_gemm_masked_matches_reference(device):
    g = gen(11)
    e, m_max = 5, 40
    for n, k in shapes_for(device):
        masked_m = torch.tensor([0, 40, 7, 1, 33], dtype=torch.int32)
        a, a_scale = fp8_activations((e, m_max, k), g)
        b, b_scale = fp8_weights(e, n, k, g)
        out = poisoned((e, m_max, n), torch.bfloat16, device)
        ops.fp8_grouped_gemm_masked(a.to(device), a_scale.to(device), b.to(device), b_scale.to(device),
                                    masked_m.to(device), expected_m=16, out=out)
        out = out.cpu()
        for i, rows in enumerate(masked_m.tolist()):
            if rows:
                assert_gemm_close(out[i, :rows], a[i, :rows], a_scale[i, :rows], b[i], b_scale[i], device)


def test_grouped_gemm_config_follows_expected_m():
    """The heuristic (moe_gemm_config.h) without a GPU: up to 64 rows the 64-row tile for the masked
    layout (m = expected_m) and the dense one (m = rows); the contiguous layout keeps the 128-row
    tile its 128-row segment alignment is built for."""
    small, large = "64x128x128_pingpong", "128x128x128_cooperative"
    for m in (0, 1, 8, 63, 64):
        assert ops.grouped_gemm_config(m) == ops.grouped_gemm_config(m, "dense") == small
    for m in (65, 128, 4096):
        assert ops.grouped_gemm_config(m, "masked") == ops.grouped_gemm_config(m, "dense") == large
    for m in (1, 64, 8192):
        assert ops.grouped_gemm_config(m, "contiguous") == large
    assert ops.grouped_gemm_m_alignment() == 128
    with pytest.raises(RuntimeError, match="argument 'layout' must be 'contiguous', 'masked' or 'dense'"):
        ops.grouped_gemm_config(8, "ragged")
    with pytest.raises(RuntimeError, match="argument 'm' must be >= 0"):
        ops.grouped_gemm_config(-1)


@pytest.mark.parametrize("device", DEVICES)
def test_grouped_gemm_masked_matches_reference_with_either_tile(device):
    """expected_m picks the CUDA tile and nothing else: each choice against the exact result, with
    counts past 64 (several 64-row tiles per expert) and an expert of one row."""
    g = gen(12)
    e, m_max, n, k = 4, 100, 256, 384
    masked_m = torch.tensor([1, 64, 0, 100], dtype=torch.int32)
    a, a_scale = fp8_activations((e, m_max, k), g)
    b, b_scale = fp8_weights(e, n, k, g)
    args = [t.to(device) for t in (a, a_scale, b, b_scale, masked_m)]
    tiles = set()
    for expected_m in (1, 64, 65, 128):
        tiles.add(ops.grouped_gemm_config(expected_m))
        out = poisoned((e, m_max, n), torch.bfloat16, device)
        ops.fp8_grouped_gemm_masked(*args, expected_m, out=out)
        out = out.cpu()
        for i, rows in enumerate(masked_m.tolist()):
            if rows:
                assert_gemm_close(out[i, :rows], a[i, :rows], a_scale[i, :rows], b[i], b_scale[i], device)
    assert len(tiles) == 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m", [0, 1, 64, 77, 300])
def test_fp8_gemm_matches_reference(device, m):
    g = gen(m)
    for n, k in shapes_for(device):
        a, a_scale = fp8_activations((m, k), g)
        b, b_scale = fp8_weights(1, n, k, g, dense=True)
        out = ops.fp8_gemm(a.to(device), a_scale.to(device), b.to(device), b_scale.to(device)).cpu()
        assert out.shape == (m, n) and out.dtype == torch.bfloat16
        assert_gemm_close(out, a, a_scale, b, b_scale, device)
        assert_gemm_close(reference.fp8_gemm(a, a_scale, b, b_scale), a, a_scale, b, b_scale)


def test_gemm_tolerance_catches_a_final_rescale():
    """The check above can fail: applying one scale per row after the whole K sum (not per K block)
    breaks it as soon as block scales differ."""
    g = gen(5)
    a, a_scale = fp8_activations((16, 512), g)
    b, b_scale = fp8_weights(1, 128, 512, g, dense=True)
    exact = ops.fp8_gemm(a, a_scale, b, b_scale)
    wrong = ((a.double() @ b.double().T) * a_scale[:, :1].double() * b_scale[0, 0].double()).to(torch.bfloat16)
    assert_gemm_close(exact, a, a_scale, b, b_scale)
    with pytest.raises(AssertionError):
        assert_gemm_close(wrong, a, a_scale, b, b_scale)


@pytest.mark.parametrize("device", DEVICES)
def test_gemm_bad_inputs_are_rejected(device):
    g = gen(3)
    a, a_scale = fp8_activations((128, 256), g)
    b, b_scale = fp8_weights(2, 128, 256, g)
    d = device
    m_indices = torch.zeros(128, dtype=torch.int32, device=d)
    a, a_scale, b, b_scale = a.to(d), a_scale.to(d), b.to(d), b_scale.to(d)
    f = ops.fp8_grouped_gemm_contiguous
    with pytest.raises(RuntimeError, match="argument 'a' must have dtype"):
        f(a.float(), a_scale, b, b_scale, m_indices)
    with pytest.raises(RuntimeError, match="argument 'a_scale' must have shape"):
        f(a, a_scale[:, :1].contiguous(), b, b_scale, m_indices)
    with pytest.raises(RuntimeError, match="argument 'b_scale' must have shape"):
        f(a, a_scale, b, b_scale[:1], m_indices)
    with pytest.raises(RuntimeError, match="argument 'b' must have K = 256"):
        f(a, a_scale, b[..., :128].contiguous(), b_scale[..., :1].contiguous(), m_indices)
    with pytest.raises(RuntimeError, match="argument 'm_indices' must have dtype"):
        f(a, a_scale, b, b_scale, m_indices.long())
    with pytest.raises(RuntimeError, match="argument 'masked_m' must have shape"):
        ops.fp8_grouped_gemm_masked(a.view(2, 64, 256), a_scale.view(2, 64, 2), b, b_scale,
                                    torch.zeros(3, dtype=torch.int32, device=d), 8)
    with pytest.raises(RuntimeError, match="argument 'expected_m'"):
        ops.fp8_grouped_gemm_masked(a.view(2, 64, 256), a_scale.view(2, 64, 2), b, b_scale,
                                    torch.zeros(2, dtype=torch.int32, device=d), -1)
    with pytest.raises(RuntimeError, match="argument 'out' must have dtype"):
        f(a, a_scale, b, b_scale, m_indices, out=torch.empty(128, 128, device=d))
    with pytest.raises(RuntimeError, match="argument 'b' must be 2-D"):
        ops.fp8_gemm(a, a_scale, b, b_scale)


def workspace_cases(device):
    """(op, args, groups) per GEMM layout on shapes every device runs."""
    g = gen(13)
    a, a_scale = fp8_activations((256, 256), g)
    b, b_scale = fp8_weights(2, 128, 256, g)
    m_indices = contiguous_layout([100, 3])
    masked_m = torch.tensor([5, 64], dtype=torch.int32)
    a, a_scale, b, b_scale = (t.to(device) for t in (a, a_scale, b, b_scale))
    return [
        (ops.fp8_grouped_gemm_contiguous, (a, a_scale, b, b_scale, m_indices.to(device)), 2),
        (ops.fp8_grouped_gemm_masked, (a.view(2, 128, 256), a_scale.view(2, 128, 2), b, b_scale, masked_m.to(device), 8), 2),
        (ops.fp8_gemm, (a[:40], a_scale[:40], b[0], b_scale[0]), 1),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_gemm_preallocated_workspace(device):
    """A caller's workspace (CUDA graphs, memory planning) gives the same output as none, at any
    16-byte aligned start; a short, mistyped or misaligned one is rejected by name."""
    for op, args, groups in workspace_cases(device):
        need = ops.fp8_grouped_gemm_workspace_bytes(groups)
        want = op(*args)
        if op is ops.fp8_grouped_gemm_masked:
            want = torch.cat([want[0, :5], want[1, :64]])  # rows past masked_m are unspecified
        exact = torch.empty(need, dtype=torch.uint8, device=device)
        offset = torch.empty(need + 48, dtype=torch.uint8, device=device)[48:]  # 16-, not 128-byte aligned
        for ws in (exact, offset):
            got = op(*args, workspace=ws)
            if op is ops.fp8_grouped_gemm_masked:
                got = torch.cat([got[0, :5], got[1, :64]])
            assert torch.equal(got, want), op.__name__
        with pytest.raises(RuntimeError, match=f"argument 'workspace' must hold at least {need} bytes "
                                               r"\(fp8_grouped_gemm_workspace_bytes\)"):
            op(*args, workspace=exact[1:])
        with pytest.raises(RuntimeError, match="argument 'workspace' must start at a 16-byte aligned address"):
            op(*args, workspace=torch.empty(need + 8, dtype=torch.uint8, device=device)[8:])
        with pytest.raises(RuntimeError, match="argument 'workspace' must have dtype"):
            op(*args, workspace=torch.empty(need, device=device))
        with pytest.raises(RuntimeError, match="argument 'workspace' must be 1-D"):
            op(*args, workspace=exact.view(-1, 8) if need % 8 == 0 else exact[None])


def test_workspace_bytes_queries():
    """The bounds grow with what they cover and hold what the kernels carve from them."""
    per_group = ops.fp8_grouped_gemm_workspace_bytes(2) - ops.fp8_grouped_gemm_workspace_bytes(1)
    assert per_group > 0 and ops.fp8_grouped_gemm_workspace_bytes(0) > 0  # CUTLASS's TMA descriptors
    assert ops.fp8_grouped_gemm_workspace_bytes(256) == ops.fp8_grouped_gemm_workspace_bytes(0) + 256 * per_group
    for routed, experts in [(0, 1), (8, 256), (4800, 32), (65536, 256)]:
        chunks = reference.ceil_div(routed, 256)
        counts_bytes = 4 * (chunks * experts + experts)
        assert ops.moe_permute_workspace_bytes(routed, experts) >= counts_bytes + 8 * (experts + 1)
        assert ops.moe_permute_workspace_bytes(routed, experts) <= counts_bytes + 15 + 8 * (experts + 1)
    with pytest.raises(RuntimeError, match="argument 'groups' must be >= 0"):
        ops.fp8_grouped_gemm_workspace_bytes(-1)
    with pytest.raises(RuntimeError, match="argument 'num_experts' must be >= 1"):
        ops.moe_permute_workspace_bytes(8, 0)


@pytest.mark.cuda
def test_workspace_on_another_device_is_rejected():
    op, args, groups = workspace_cases("cuda")[0]
    with pytest.raises(RuntimeError, match="argument 'workspace' must be on the same device as 'a'"):
        op(*args, workspace=torch.empty(ops.fp8_grouped_gemm_workspace_bytes(groups), dtype=torch.uint8))


def test_gemm_index_contents_are_checked_on_cpu():
    g = gen(4)
    a, a_scale = fp8_activations((256, 128), g)
    b, b_scale = fp8_weights(2, 128, 128, g)
    f = ops.fp8_grouped_gemm_contiguous
    bad_expert = contiguous_layout([3, 4])
    bad_expert[1] = 2
    with pytest.raises(RuntimeError, match="'m_indices' must hold experts in \\[0, E = 2\\)"):
        f(a, a_scale, b, b_scale, bad_expert)
    split = contiguous_layout([3, 4])
    split[1] = -1  # expert 0's rows are 0, 2
    with pytest.raises(RuntimeError, match="must keep each expert's rows contiguous"):
        f(a, a_scale, b, b_scale, split)
    shifted = torch.roll(contiguous_layout([3, 4]), 1)
    with pytest.raises(RuntimeError, match="must start each expert's rows at a multiple of 128"):
        f(a, a_scale, b, b_scale, shifted)
    with pytest.raises(RuntimeError, match="'masked_m' must hold counts in \\[0, m_max = 128\\]"):
        ops.fp8_grouped_gemm_masked(a.view(2, 128, 128), a_scale.view(2, 128, 1), b, b_scale,
                                    torch.tensor([1, 129], dtype=torch.int32), 1)


@pytest.mark.cuda
def test_gemm_cuda_rejects_partial_blocks():
    g = gen(6)
    a, a_scale = fp8_activations((4, 200), g)
    b, b_scale = fp8_weights(1, 128, 200, g, dense=True)
    with pytest.raises(RuntimeError, match="multiples of 128 on CUDA"):
        ops.fp8_gemm(a.cuda(), a_scale.cuda(), b.cuda(), b_scale.cuda())


# --- routing -------------------------------------------------------------------------------------

ROUTE_CASES = [  # (T, E, top_k, n_group, topk_group, renormalize)
    (33, 256, 8, 1, 1, True),  # GLM-5.2
    (17, 256, 8, 8, 4, True),  # DeepSeek-V3 grouping
    (5, 64, 6, 4, 2, False),
    (9, 16, 16, 1, 1, True),
    (3, 1024, 32, 32, 1, True),
    (4, 12, 3, 12, 3, True),  # groups of one expert
    (0, 256, 8, 1, 1, True),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ROUTE_CASES, ids=lambda c: "T{}-E{}-k{}-g{}-{}".format(*c[:5]))
def test_route_matches_reference(device, case):
    t, e, k, n_group, topk_group, renorm = case
    g = gen(t * 7 + e)
    logits = torch.randn(t, e, generator=g) * 2
    bias = torch.randn(e, generator=g) * 0.5
    weights = poisoned((t, k), torch.float32, device)
    ids = poisoned((t, k), torch.int32, device)
    ops.moe_route(logits.to(device), bias.to(device), k, n_group, topk_group, 2.5, renorm, out=(weights, ids))
    want_w, want_ids = reference.moe_route(logits, bias, k, n_group, topk_group, 2.5, renorm)
    assert torch.equal(ids.cpu(), want_ids)
    torch.testing.assert_close(weights.cpu(), want_w, rtol=2e-6, atol=1e-7)
    fw, fi = ops.moe_route(logits.to(device), bias.to(device), k, n_group, topk_group, 2.5, renorm)
    assert torch.equal(fi, ids) and torch.equal(fw, weights)


@pytest.mark.parametrize("device", DEVICES)
def test_route_ties_go_to_the_lower_id(device):
    logits = torch.zeros(2, 64)
    logits[0, [5, 9, 40]] = 1.0  # three equal winners, then 61 equal others
    logits[1] = 0.25
    bias = torch.zeros(64)
    w, ids = ops.moe_route(logits.to(device), bias.to(device), 4, 4, 2, 1.0, True)
    assert ids.cpu().tolist() == [[5, 9, 40, 0], [0, 1, 2, 3]]
    assert torch.allclose(w.cpu()[1], torch.full((4,), 0.25))
    _, grouped = ops.moe_route(logits.to(device), bias.to(device), 4, 4, 1, 1.0, True)
    assert grouped.cpu().tolist() == [[5, 9, 0, 1], [0, 1, 2, 3]]  # group 0 (experts 0-15) wins the tie


@pytest.mark.parametrize("device", DEVICES)
def test_route_bias_selects_but_does_not_weigh(device):
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    bias = torch.tensor([0.0, 0.0, 0.0, 5.0])
    w, ids = ops.moe_route(logits.to(device), bias.to(device), 2, 1, 1, 1.0, False)
    assert ids.cpu().tolist() == [[3, 0]]
    torch.testing.assert_close(w.cpu(), torch.sigmoid(torch.tensor([[0.0, 3.0]])))


@pytest.mark.parametrize("device", DEVICES)
def test_route_bad_arguments_are_rejected(device):
    logits, bias = torch.randn(3, 64, device=device), torch.zeros(64, device=device)
    with pytest.raises(RuntimeError, match="argument 'n_group' must divide E = 64"):
        ops.moe_route(logits, bias, 4, 3, 1, 1.0, True)
    with pytest.raises(RuntimeError, match="argument 'topk_group' must be in \\[1, n_group = 4\\]"):
        ops.moe_route(logits, bias, 4, 4, 5, 1.0, True)
    with pytest.raises(RuntimeError, match="argument 'top_k' must be in"):
        ops.moe_route(logits, bias, 17, 4, 1, 1.0, True)
    with pytest.raises(RuntimeError, match="argument 'logits' must have dtype"):
        ops.moe_route(logits.double(), bias, 4, 1, 1, 1.0, True)
    with pytest.raises(RuntimeError, match="argument 'bias' must have shape"):
        ops.moe_route(logits, bias[:8], 4, 1, 1, 1.0, True)


# --- permute / unpermute -------------------------------------------------------------------------


def random_ids(t, k, e, g, drop=0.0):
    """Distinct experts per token (as routing gives), some dropped to -1 / out of range."""
    ids = torch.stack([torch.randperm(e, generator=g)[:k] for _ in range(t)]) if t else torch.empty(0, k, dtype=torch.long)
    if drop:
        mask = torch.rand(ids.shape, generator=g) < drop
        ids = torch.where(mask, torch.where(torch.rand(ids.shape, generator=g) < 0.5, -1, e + 3), ids)
    return ids.to(torch.int32)


PERMUTE_CASES = [  # (T, k, E, alignment, drop)
    (37, 8, 16, 128, 0.0),
    (50, 4, 8, 16, 0.2),
    (1, 8, 256, 128, 0.0),
    (300, 2, 3, 1, 0.1),
    (600, 8, 32, 128, 0.05),  # 4800 entries: three permute chunks of 2048
    (0, 8, 16, 128, 0.0),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", PERMUTE_CASES, ids=lambda c: "T{}-k{}-E{}-a{}-d{}".format(*c))
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16])
def test_permute_matches_reference(device, case, dtype):
    t, k, e, align, drop = case
    g = gen(t + k + e)
    x = torch.randn(t, 256, generator=g).to(dtype)
    x_scale = torch.rand(t, 2, generator=g) + 0.1 if dtype == torch.float8_e4m3fn else None
    ids = random_ids(t, k, e, g, drop)
    out, out_scale, m_indices, row_map = ops.moe_permute(
        x.to(device), None if x_scale is None else x_scale.to(device), ids.to(device), e, align)
    want = reference.moe_permute(x, x_scale, ids, e, align)
    assert out.shape == want[0].shape and out_scale.shape == want[1].shape
    assert torch.equal(m_indices.cpu(), want[2]) and torch.equal(row_map.cpu(), want[3])
    real = want[2] >= 0
    assert torch.equal(out.cpu()[real].view(torch.uint8), want[0][real].view(torch.uint8))
    assert torch.equal(out_scale.cpu()[real], want[1][real])


def test_permute_layout_is_what_the_docstring_says():
    """Independently of the reference: segment starts aligned, (token, slot) order, counts, bound."""
    ids = torch.tensor([[2, 0], [0, 1], [2, 0], [5, -1]], dtype=torch.int32)
    x = torch.arange(4, dtype=torch.float32)[:, None].repeat(1, 4)
    out, _, m_indices, row_map = ops.moe_permute(x, None, ids, 3, 4)
    assert out.shape[0] == ops.permuted_rows_bound(8, 3, 4) == 20
    assert row_map.tolist() == [[8, 0], [1, 4], [9, 2], [-1, -1]]
    assert m_indices.tolist() == [0, 0, 0, -1, 1, -1, -1, -1, 2, 2] + [-1] * 10
    assert out[[8, 0, 1, 4, 9, 2], 0].tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("device", DEVICES)
def test_permute_preallocated_workspace(device):
    """Both permute layouts give the same outputs with a caller's workspace; a short one is named."""
    g = gen(14)
    t, k, e = 600, 8, 32  # 4800 routed entries: several permute chunks
    x, x_scale = torch.randn(t, 256, generator=g).to(torch.float8_e4m3fn), torch.rand(t, 2, generator=g)
    ids = random_ids(t, k, e, g, drop=0.05)
    args = [x.to(device), x_scale.to(device), ids.to(device), e]
    need = ops.moe_permute_workspace_bytes(t * k, e)
    ws = torch.empty(need + 16, dtype=torch.uint8, device=device)[16:]
    for op in (ops.moe_permute, ops.moe_permute_masked):
        want, got = op(*args), op(*args, workspace=ws)
        real = (want[2] >= 0) if op is ops.moe_permute else None
        for i, (w, o) in enumerate(zip(want, got)):
            if i < 2 and real is not None:  # padding rows of out / out_scale are unspecified
                w, o = w[real], o[real]
            elif i < 2:  # the masked layout's rows past masked_m are unspecified
                keep = torch.arange(t, device=device)[None, :] < want[2][:, None]
                w, o = w[keep], o[keep]
            assert torch.equal(w.view(torch.uint8) if w.dtype == torch.float8_e4m3fn else w,
                               o.view(torch.uint8) if o.dtype == torch.float8_e4m3fn else o), (op.__name__, i)
        with pytest.raises(RuntimeError, match=f"argument 'workspace' must hold at least {need} bytes "
                                               r"\(moe_permute_workspace_bytes\)"):
            op(*args, workspace=ws[:-1])
        with pytest.raises(RuntimeError, match="argument 'workspace' must have dtype"):
            op(*args, workspace=torch.empty(need, dtype=torch.int32, device=device))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_unpermute_matches_reference_bit_for_bit(device, dtype):
    g = gen(8)
    t, k, e = 29, 8, 16
    ids = random_ids(t, k, e, g, drop=0.15)
    _, _, _, row_map = reference.moe_permute(torch.zeros(t, 1), None, ids, e, 16)
    rows = reference.permuted_rows_bound(t * k, e, 16)
    y = torch.randn(rows, 192, generator=g).to(dtype)
    weights = torch.rand(t, k, generator=g)
    out = poisoned((t, 192), dtype, device)
    ops.moe_unpermute(y.to(device), weights.to(device), row_map.to(device), out=out)
    want = reference.moe_unpermute(y, weights, row_map)
    assert torch.equal(out.cpu(), want)
    assert torch.equal(ops.moe_unpermute(y.to(device), weights.to(device), row_map.to(device)).cpu(), want)


@pytest.mark.parametrize("device", DEVICES)
def test_permute_unpermute_bad_inputs_are_rejected(device):
    x, ids = torch.randn(4, 8, device=device), torch.zeros(4, 2, dtype=torch.int32, device=device)
    with pytest.raises(RuntimeError, match="argument 'ids' must have dtype"):
        ops.moe_permute(x, None, ids.long(), 4, 16)
    with pytest.raises(RuntimeError, match="argument 'x_scale' must have shape"):
        ops.moe_permute(x, torch.ones(3, 1, device=device), ids, 4, 16)
    with pytest.raises(RuntimeError, match="argument 'alignment' must be in"):
        ops.moe_permute(x, None, ids, 4, 0)
    with pytest.raises(RuntimeError, match="argument 'row_map' must have shape"):
        ops.moe_unpermute(x, torch.ones(4, 2, device=device), ids[:, :1].contiguous())
    with pytest.raises(RuntimeError, match="argument 'y' must have dtype"):
        ops.moe_unpermute(x.to(torch.float8_e4m3fn), torch.ones(4, 2, device=device), ids)


def test_unpermute_row_map_contents_are_checked_on_cpu():
    with pytest.raises(RuntimeError, match="argument 'row_map' must hold rows of 'y' in \\[0, 4\\)"):
        ops.moe_unpermute(torch.randn(4, 8), torch.ones(2, 2), torch.tensor([[0, 1], [4, -1]], dtype=torch.int32))


# --- SwiGLU + FP8 quant --------------------------------------------------------------------------


def e4m3_half_ulp(v: torch.Tensor) -> torch.Tensor:
    """Half the e4m3 spacing at |v| (values already scaled into [0, 448]); subnormal spacing 2^-9."""
    exponent = torch.floor(torch.log2(v.abs().clamp_min(2.0**-6)))
    return torch.exp2(exponent - 3) / 2


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
@pytest.mark.parametrize("m,n,group_size", [(7, 2048, 128), (33, 384, 128), (5, 200, 128), (3, 96, 32), (0, 256, 128)])
@pytest.mark.parametrize("ue8m0", [False, True])
def test_silu_and_mul_quant_matches_reference(device, dtype, m, n, group_size, ue8m0):
    g = gen(m + n)
    x = (torch.randn(m, 2 * n, generator=g) * torch.exp(torch.randn(m, 1, generator=g))).to(dtype)
    q = poisoned((m, n), torch.float8_e4m3fn, device)
    s = poisoned((m, reference.ceil_div(n, group_size)), torch.float32, device)
    ops.silu_and_mul_quant_fp8(x.to(device), group_size, ue8m0, out=q, out_scale=s)
    q, s = q.cpu(), s.cpu()
    want_q, want_s = reference.silu_and_mul_quant_fp8(x, group_size, ue8m0)
    if ue8m0:
        assert torch.equal(s, want_s)  # exp's last bit cannot move a power of two but at an exact boundary
    else:
        torch.testing.assert_close(s, want_s, rtol=1e-6, atol=0)
    # Each code is the reference value rounded to e4m3 (up to an exp ulp at rounding midpoints).
    h = reference.silu_and_mul(x)
    scaled = h / s.repeat_interleave(group_size, dim=1)[:, :n]
    err = (q.float() - scaled.clamp(-448, 448)).abs()
    assert (err <= e4m3_half_ulp(scaled) * (1 + 1e-4) + 1e-6 * scaled.abs()).all()
    assert (q.view(torch.uint8) == want_q.view(torch.uint8)).float().mean() > 0.999 if m else True


@pytest.mark.parametrize("device", DEVICES)
def test_silu_and_mul_quant_bad_inputs_are_rejected(device):
    with pytest.raises(RuntimeError, match="argument 'x' must have an even number of columns"):
        ops.silu_and_mul_quant_fp8(torch.randn(2, 7, device=device))
    with pytest.raises(RuntimeError, match="argument 'x' must have dtype"):
        ops.silu_and_mul_quant_fp8(torch.randn(2, 8, device=device).double())
    with pytest.raises(RuntimeError, match="argument 'out_scale' must have shape"):
        ops.silu_and_mul_quant_fp8(torch.randn(2, 256, device=device), out=torch.empty(2, 128, device=device).to(torch.float8_e4m3fn),
                                   out_scale=torch.empty(2, 2, device=device))
