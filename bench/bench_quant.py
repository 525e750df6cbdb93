"""Sweep: FP8 per-token-group quantization and block dequantization at GLM-5.2 shapes.

Memory-bound ops: reports GB/s against a device-to-device copy measured in the same run, and the
speedup over the plain-PyTorch reference (glm52_ext.reference) on the same device.

    python bench/bench_quant.py [--device cuda] [--out bench/out] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import copy_bandwidth_gbs, environment, parse_args, progress, report, rotation_count, time_ms  # noqa: E402

from glm52_ext import ops, reference  # noqa: E402

# Activations entering the GLM-5.2 projections: hidden 6144, expert intermediate 2048, q_lora 2048.
QUANT_SHAPES = [(m, k) for m in (1, 64, 512, 4096, 16384) for k in (2048, 6144)]
# Checkpoint weights: q_b_proj [16384, 2048], an expert's gate/up [2048, 6144], o_proj [6144, 16384].
DEQUANT_SHAPES = [(16384, 2048), (2048, 6144), (6144, 16384)]
QUICK_QUANT, QUICK_DEQUANT = [(64, 512), (300, 1000)], [(256, 384)]


def sweep_quant(args, shapes, ceiling_gbs):
    rows = []
    for m, k in shapes:
        progress(f"quant_fp8_per_token_group m={m} k={k}")
        nbytes = m * k * 2 + m * k + m * (k // 128) * 4
        pool = [torch.randn(m, k, device=args.device, dtype=torch.bfloat16) for _ in range(rotation_count(nbytes, args.device))]
        ours = time_ms(lambda i: ops.quant_fp8_per_token_group(pool[i], 128), args.device, args.iters, args.warmup, len(pool))
        base = time_ms(lambda i: reference.quant_fp8_per_token_group(pool[i], 128), args.device, max(5, args.iters // 5), 2, len(pool))
        gbs = nbytes / ours / 1e6
        rows.append({"op": "quant_fp8_per_token_group", "shape": f"{m}x{k}", "dtype": "bf16", "time_us": 1e3 * ours,
                     "GB/s": gbs, "frac_of_copy": gbs / ceiling_gbs, "baseline": "reference",
                     "baseline_us": 1e3 * base, "speedup": base / ours})
    return rows


def sweep_dequant(args, shapes, ceiling_gbs):
    rows = []
    for n, k in shapes:
        progress(f"dequant_fp8_block n={n} k={k}")
        nbytes = n * k + n * k * 2
        pool = []
        for _ in range(rotation_count(nbytes, args.device)):
            w = torch.randn(n, k, device=args.device).to(torch.float8_e4m3fn)
            pool.append((w, torch.rand(-(-n // 128), -(-k // 128), device=args.device)))
        ours = time_ms(lambda i: ops.dequant_fp8_block(*pool[i]), args.device, args.iters, args.warmup, len(pool))
        base = time_ms(lambda i: reference.dequant_fp8_block(*pool[i]), args.device, max(5, args.iters // 5), 2, len(pool))
        gbs = nbytes / ours / 1e6
        rows.append({"op": "dequant_fp8_block", "shape": f"{n}x{k}", "dtype": "fp8->bf16", "time_us": 1e3 * ours,
                     "GB/s": gbs, "frac_of_copy": gbs / ceiling_gbs, "baseline": "reference",
                     "baseline_us": 1e3 * base, "speedup": base / ours})
    return rows


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    ceiling = copy_bandwidth_gbs(args.device)
    progress(f"copy ceiling on {args.device}: {ceiling:.1f} GB/s")
    rows = sweep_quant(args, QUICK_QUANT if args.quick else QUANT_SHAPES, ceiling)
    rows += sweep_dequant(args, QUICK_DEQUANT if args.quick else DEQUANT_SHAPES, ceiling)
    report("quant", rows, {**environment(args.device), "copy_ceiling_GBps": ceiling}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
