"""Sweep: the MoE ops at GLM-5.2 shapes.

GEMMs (``moe_gemm``): the FP8 block-scaled grouped GEMM in the contiguous (prefill) and masked
(decode) layouts at the expert shapes (gate+up fused N=4096, K=6144; down N=6144, K=2048) with
256/EP experts per rank for EP in {1, 8, 32} and 1..8192 tokens per expert, and the dense GEMM
at projection shapes. Reports time, TFLOPS, the fraction of the FP8 peak measured in the same
run (a large ``torch._scaled_mm``), the weight-streaming GB/s against a device copy, and the
speedup over the baseline: ``torch._scaled_mm`` per expert in a loop on CUDA (block-scaled when
this torch/cuBLAS supports it, else per-tensor scaled: named in the row), the plain-PyTorch
reference on the CPU.

Tiles (``moe_masked_tiles``): the masked decode GEMM at M = 1, 8, 64 rows per expert with the
64-row tile its ``expected_m`` selects against the 128-row tile forced by ``expected_m = 128``
(same kernel code either way on the CPU: there the table only checks the path runs).

Helpers (``moe_helpers``): routing, permute, unpermute and SwiGLU+quant, memory-bound: GB/s
against the copy ceiling, speedup over the reference.

    python bench/bench_moe.py [--device cuda] [--out bench/out] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    copy_bandwidth_gbs,
    environment,
    fp8_peak_tflops,
    parse_args,
    progress,
    report,
    rotation_count,
    time_ms,
)

from glm52_ext import ops, reference  # noqa: E402

EXPERT_SHAPES = {"gate_up": (4096, 6144), "down": (6144, 2048)}  # (N, K) of one expert
EP_DEGREES = (1, 8, 32)
TOKENS_PER_EXPERT = (1, 8, 64, 256, 1024, 4096, 8192)
MAX_ROWS = 1 << 16  # routed rows per rank in one call (64K: 8K tokens x top-8 at EP 1)
MASKED_M = (1, 8, 32, 64, 128)
TILE_M = (1, 8, 64)  # decode rows per expert: the 64-row tile against the 128-row one
LARGE_TILE_EXPECTED_M = 128  # an expected_m that selects the 128-row tile
DENSE_SHAPES = [(m, n, k) for m in (128, 1024, 8192) for (n, k) in ((16384, 2048), (6144, 16384), (4096, 6144))]
HELPER_TOKENS = (1, 64, 4096, 16384)

QUICK_EXPERT_SHAPES = {"tiny": (256, 256)}
QUICK = {"eps": (64,), "tpe": (1, 8), "masked": (4,), "tile_m": (1, 8), "dense": [(16, 256, 256)], "tokens": (8,),
         "experts": 8}


def fp8_operands(rows, experts, n, k, device, dense=False):
    """Random e4m3 operands and fp32 scales in the op layouts (never zeros)."""
    a = (torch.randn(rows, k, device=device) * 64).to(torch.float8_e4m3fn)
    a_scale = torch.rand(rows, k // 128, device=device) + 0.01
    shape = (n, k) if dense else (experts, n, k)
    b = (torch.randn(*shape, device=device) * 64).to(torch.float8_e4m3fn)
    b_scale = torch.rand(*shape[:-2], n // 128, k // 128, device=device) + 0.01
    return a, a_scale, b, b_scale


def scaled_mm_baseline(device):
    """A per-expert torch._scaled_mm on CUDA: (name, fn(a, a_scale, b, b_scale) -> out)."""
    if device != "cuda":
        return None

    def blockwise(a, a_scale, b, b_scale):
        return torch._scaled_mm(a, b.t(), a_scale, b_scale.t(), out_dtype=torch.bfloat16)

    def per_tensor(a, a_scale, b, b_scale):
        one = torch.ones((), device=a.device)
        return torch._scaled_mm(a, b.t(), one, one, out_dtype=torch.bfloat16)

    a, a_scale, b, b_scale = fp8_operands(128, 1, 256, 256, device, dense=True)
    try:
        blockwise(a, a_scale, b, b_scale)
        return "scaled_mm_blockwise_loop", blockwise
    except RuntimeError as exc:
        progress(f"torch._scaled_mm takes no block scales here ({exc.__class__.__name__}); per-tensor baseline")
        return "scaled_mm_per_tensor_loop", per_tensor


def gemm_row(op, layout, shape, experts, tpe, rows, n, k, ms, peak, copy_gbs, baseline, base_ms):
    flops = 2 * rows * n * k
    weight_bytes = experts * n * k
    tflops = flops / ms / 1e9
    gbs = weight_bytes / ms / 1e6
    return {"op": op, "layout": layout, "shape": shape, "experts": experts, "tokens_per_expert": tpe,
            "time_us": 1e3 * ms, "TFLOPS": tflops, "frac_of_peak": tflops / peak if peak else None,
            "weight_GB/s": gbs, "frac_of_copy": gbs / copy_gbs, "baseline": baseline,
            "baseline_us": 1e3 * base_ms if base_ms else None, "speedup": base_ms / ms if base_ms else None}


def sweep_contiguous(args, shapes, eps, tpes, peak, copy_gbs, baseline):
    rows_out = []
    align = ops.grouped_gemm_m_alignment()
    for name, (n, k) in shapes.items():
        for ep in eps:
            experts = 256 // ep
            for tpe in tpes:
                if experts * tpe > MAX_ROWS:
                    continue
                progress(f"grouped contiguous {name} E={experts} tokens/expert={tpe}")
                segment = -(-tpe // align) * align
                m_indices = torch.tensor(sum(([e] * tpe + [-1] * (segment - tpe) for e in range(experts)), []),
                                         dtype=torch.int32, device=args.device)
                nbytes = experts * (segment * k + n * k)
                pool = [fp8_operands(experts * segment, experts, n, k, args.device)
                        for _ in range(rotation_count(nbytes, args.device))]
                ours = time_ms(lambda i: ops.fp8_grouped_gemm_contiguous(*pool[i], m_indices), args.device,
                               args.iters, args.warmup, len(pool))
                base_name, base_ms = "reference", None
                if baseline:
                    base_name, fn = baseline
                    a, a_scale, b, b_scale = pool[0]

                    def loop(_):
                        for e in range(experts):
                            rows = slice(e * segment, e * segment + tpe)
                            fn(a[rows], a_scale[rows], b[e], b_scale[e])

                    base_ms = time_ms(loop, args.device, max(3, args.iters // 5), 2, 1)
                elif args.device == "cpu":
                    base_ms = time_ms(lambda i: reference.fp8_grouped_gemm_contiguous(*pool[i], m_indices.cpu()),
                                      args.device, 2, 1, len(pool))
                rows_out.append(gemm_row("fp8_grouped_gemm_contiguous", "contiguous", f"{name} {n}x{k}", experts, tpe,
                                         experts * tpe, n, k, ours, peak, copy_gbs, base_name, base_ms))
    return rows_out


def sweep_masked(args, shapes, eps, masked, peak, copy_gbs):
    rows_out = []
    for name, (n, k) in shapes.items():
        for ep in eps:
            experts = 256 // ep
            for m in masked:
                progress(f"grouped masked {name} E={experts} m={m}")
                counts = torch.full((experts,), m, dtype=torch.int32, device=args.device)
                nbytes = experts * (m * k + n * k)
                pool = []
                for _ in range(rotation_count(nbytes, args.device)):
                    a, a_scale, b, b_scale = fp8_operands(experts * m, experts, n, k, args.device)
                    pool.append((a.view(experts, m, k), a_scale.view(experts, m, k // 128), b, b_scale))
                ours = time_ms(lambda i: ops.fp8_grouped_gemm_masked(*pool[i], counts, m), args.device,
                               args.iters, args.warmup, len(pool))
                base_ms = None
                if args.device == "cpu":
                    base_ms = time_ms(lambda i: reference.fp8_grouped_gemm_masked(*pool[i], counts.cpu(), m),
                                      args.device, 2, 1, len(pool))
                rows_out.append(gemm_row("fp8_grouped_gemm_masked", "masked", f"{name} {n}x{k}", experts, m,
                                         experts * m, n, k, ours, peak, copy_gbs, "reference" if base_ms else "none",
                                         base_ms))
    return rows_out


def sweep_masked_tiles(args, shapes, eps, tile_m, copy_gbs):
    """The masked GEMM at m rows per expert: the tile expected_m = m selects against the 128-row
    tile (the baseline, forced by expected_m = 128) on the same inputs."""
    rows_out = []
    tile_name = (lambda m: ops.grouped_gemm_config(m)) if args.device == "cuda" else (lambda m: "cpu (no tiles)")
    for name, (n, k) in shapes.items():
        for ep in eps:
            experts = 256 // ep
            for m in tile_m:
                progress(f"masked tiles {name} E={experts} m={m}")
                counts = torch.full((experts,), m, dtype=torch.int32, device=args.device)
                pool = []
                for _ in range(rotation_count(experts * (m * k + n * k), args.device)):
                    a, a_scale, b, b_scale = fp8_operands(experts * m, experts, n, k, args.device)
                    pool.append((a.view(experts, m, k), a_scale.view(experts, m, k // 128), b, b_scale))
                ours, large = (time_ms(lambda i: ops.fp8_grouped_gemm_masked(*pool[i], counts, hint), args.device,
                                       args.iters, args.warmup, len(pool))
                               for hint in (m, LARGE_TILE_EXPECTED_M))
                gbs = experts * n * k / ours / 1e6
                rows_out.append({"shape": f"{name} {n}x{k}", "experts": experts, "m": m, "tile": tile_name(m),
                                 "time_us": 1e3 * ours, "weight_GB/s": gbs, "frac_of_copy": gbs / copy_gbs,
                                 "baseline": tile_name(LARGE_TILE_EXPECTED_M), "baseline_us": 1e3 * large,
                                 "speedup": large / ours})
    return rows_out


def sweep_dense(args, shapes, peak, copy_gbs, baseline):
    rows_out = []
    for m, n, k in shapes:
        progress(f"dense m={m} n={n} k={k}")
        pool = [fp8_operands(m, 1, n, k, args.device, dense=True)
                for _ in range(rotation_count(m * k + n * k, args.device))]
        ours = time_ms(lambda i: ops.fp8_gemm(*pool[i]), args.device, args.iters, args.warmup, len(pool))
        if baseline:
            base_name, fn = baseline
            base_ms = time_ms(lambda i: fn(*pool[i]), args.device, args.iters, args.warmup, len(pool))
        else:
            base_name = "reference"
            base_ms = time_ms(lambda i: reference.fp8_gemm(*pool[i]), args.device, 2, 1, len(pool))
        rows_out.append(gemm_row("fp8_gemm", "dense", f"{n}x{k}", 1, m, m, n, k, ours, peak, copy_gbs, base_name,
                                 base_ms))
    return rows_out


def helper_row(op, tokens, nbytes, ms, copy_gbs, base_ms):
    gbs = nbytes / ms / 1e6
    return {"op": op, "tokens": tokens, "time_us": 1e3 * ms, "GB/s": gbs, "frac_of_copy": gbs / copy_gbs,
            "baseline": "reference", "baseline_us": 1e3 * base_ms, "speedup": base_ms / ms}


def sweep_helpers(args, token_counts, experts, copy_gbs):
    """GLM-5.2 routing (E experts, top-8) and the per-token data movement around the expert GEMMs."""
    rows = []
    hidden, inter, top_k = (256, 128, 8) if args.quick else (6144, 2048, 8)
    slow = max(3, args.iters // 10)
    for t in token_counts:
        progress(f"helpers tokens={t}")
        logits, bias = torch.randn(t, experts, device=args.device), torch.randn(experts, device=args.device) * 0.1
        run = lambda _: ops.moe_route(logits, bias, top_k, 1, 1, 2.5, True)  # noqa: E731
        ref = lambda _: reference.moe_route(logits, bias, top_k, 1, 1, 2.5, True)  # noqa: E731
        rows.append(helper_row("moe_route", t, t * experts * 4 + t * top_k * 8, time_ms(run, args.device, args.iters, args.warmup, 1),
                               copy_gbs, time_ms(ref, args.device, slow, 1, 1)))
        _, ids = ops.moe_route(logits, bias, top_k, 1, 1, 2.5, True)
        x, x_scale = ops.quant_fp8_per_token_group(torch.randn(t, hidden, device=args.device))
        moved = t * top_k * (hidden + hidden // 128 * 4) * 2 + t * hidden
        run = lambda _: ops.moe_permute(x, x_scale, ids, experts)  # noqa: E731
        ref = lambda _: reference.moe_permute(x.cpu(), x_scale.cpu(), ids.cpu(), experts, 128)  # noqa: E731
        rows.append(helper_row("moe_permute", t, moved, time_ms(run, args.device, args.iters, args.warmup, 1), copy_gbs,
                               time_ms(ref, args.device, slow, 1, 1)))
        _, _, _, row_map = ops.moe_permute(x, x_scale, ids, experts)
        y = torch.randn(ops.permuted_rows_bound(t * top_k, experts, 128), hidden, device=args.device, dtype=torch.bfloat16)
        w = torch.rand(t, top_k, device=args.device)
        run = lambda _: ops.moe_unpermute(y, w, row_map)  # noqa: E731
        ref = lambda _: reference.moe_unpermute(y.cpu(), w.cpu(), row_map.cpu())  # noqa: E731
        rows.append(helper_row("moe_unpermute", t, t * top_k * hidden * 2 + t * hidden * 2,
                               time_ms(run, args.device, args.iters, args.warmup, 1), copy_gbs, time_ms(ref, args.device, slow, 1, 1)))
        h = torch.randn(t * top_k, 2 * inter, device=args.device, dtype=torch.bfloat16)
        run = lambda _: ops.silu_and_mul_quant_fp8(h)  # noqa: E731
        ref = lambda _: reference.silu_and_mul_quant_fp8(h.cpu())  # noqa: E731
        rows.append(helper_row("silu_and_mul_quant_fp8", t, t * top_k * (2 * inter * 2 + inter + inter // 32),
                               time_ms(run, args.device, args.iters, args.warmup, 1), copy_gbs, time_ms(ref, args.device, slow, 1, 1)))
    return rows


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    copy_gbs = copy_bandwidth_gbs(args.device)
    peak = fp8_peak_tflops(args.device)
    progress(f"on {args.device}: copy {copy_gbs:.1f} GB/s, FP8 peak {peak if peak is None else round(peak, 1)} TFLOPS")
    baseline = scaled_mm_baseline(args.device)
    shapes = QUICK_EXPERT_SHAPES if args.quick else EXPERT_SHAPES
    eps = QUICK["eps"] if args.quick else EP_DEGREES
    rows = sweep_contiguous(args, shapes, eps, QUICK["tpe"] if args.quick else TOKENS_PER_EXPERT, peak, copy_gbs, baseline)
    rows += sweep_masked(args, shapes, eps, QUICK["masked"] if args.quick else MASKED_M, peak, copy_gbs)
    rows += sweep_dense(args, QUICK["dense"] if args.quick else DENSE_SHAPES, peak, copy_gbs, baseline)
    meta = {**environment(args.device), "copy_ceiling_GBps": copy_gbs, "fp8_peak_TFLOPS": peak}
    report("moe_gemm", rows, meta, args.out)
    tiles = sweep_masked_tiles(args, shapes, eps, QUICK["tile_m"] if args.quick else TILE_M, copy_gbs)
    report("moe_masked_tiles", tiles, meta, args.out)
    helpers = sweep_helpers(args, QUICK["tokens"] if args.quick else HELPER_TOKENS, QUICK["experts"] if args.quick else 256,
                            copy_gbs)
    report("moe_helpers", helpers, meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
