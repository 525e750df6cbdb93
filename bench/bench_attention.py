"""Sweep: the DSA attention path at GLM-5.2 shapes (DESIGN §5).

- indexer logits (paged decode form, 32 heads x 128) and top-2048 at contexts 8K..1M, batch 1..64:
  TFLOPS vs the FP8 peak and GB/s vs a device copy, both measured in this run; top-k against
  torch.topk;
- sparse MLA prefill and decode at top-k 2048 with 8/16/64/128 heads, BF16 and FP8 caches: TFLOPS
  (vs the BF16 ceiling, half the FP8 peak) and GB/s; against dense attention at the same context
  (torch scaled_dot_product_attention) and against glm52_ext.reference (small shapes only);
- split-KV sparse MLA decode (a plan from sparse_mla_decode_metadata, the pieces merged by LSE)
  against the unsplit decode at batch 1, 8, 64 (64 heads, FP8 cache, top-k 2048): the small batches
  whose unsplit grid (batch x ceil(heads / 64) CTAs) leaves most SMs idle; the plan's own time too;
- the IndexShare effect: per-token attention cost of 78 layers all full vs freq-4 sharing (21 full
  layers) at 128K and 1M context: counted FLOPs and bytes, and a time composed from this run's
  measured indexer, top-k and sparse-decode times (extrapolated linearly in context where the
  context was not measured).

    python bench/bench_attention.py [--device cuda] [--out bench/out] [--quick]
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

INDEX_HEADS, INDEX_DIM, TOPK, LAYERS, FULL_LAYERS, MLA_HEADS = 32, 128, 2048, 78, 21, 64
REST_GFLOP_PER_TOKEN = 2 * 40.3  # 2 x active parameters (DESIGN §2.3): projections, MoE, lm_head
SM_SCALE = 256**-0.5
INDEXER_SHAPES = [(1, 8192), (64, 8192), (1, 131072), (16, 131072), (64, 131072), (1, 1 << 20), (8, 1 << 20)]
PREFILL_SHAPES = [(512, h, 16384) for h in (8, 16, 64, 128)]  # (query tokens, heads, context)
DECODE_SHAPES = [(b, h, 32768) for b in (1, 16, 64) for h in (8, 16, 64, 128)]  # (batch, heads, context)
QUICK_INDEXER, QUICK_PREFILL, QUICK_DECODE = [(1, 2048), (2, 4096)], [(4, 8, 1024)], [(2, 8, 1024)]
QUICK_TOPK = 64
SPLIT_SHAPES, QUICK_SPLIT = [(b, MLA_HEADS, 32768) for b in (1, 8, 64)], [(1, 8, 1024), (8, 8, 1024)]


def paged_indexer_inputs(b: int, ctx: int, device: str):
    blocks = b * (-(-ctx // 64))
    cache = torch.randint(0, 0x7F, (blocks, 8448), dtype=torch.uint8, device=device)
    table = torch.randperm(blocks, device=device).int().view(b, -1)
    q8 = (torch.randn(b, 1, INDEX_HEADS, INDEX_DIM, device=device) * 30).to(torch.float8_e4m3fn)
    w = torch.randn(b, 1, INDEX_HEADS, device=device) * 1e-3
    lengths = torch.full((b, 1), ctx, dtype=torch.int32, device=device)
    return q8, w, cache, table, lengths


def torch_indexer_ms(args, inputs, ctx: int) -> float:
    """What plain PyTorch does with the same data: keys gathered to a dense bf16 [B, ctx, 128] (not
    timed), then the two einsums of the indexer (timed)."""
    q8, w, cache, table, _ = inputs
    b = q8.shape[0]
    codes, scale = reference.indexer_cache_read(cache)
    slots = reference.positions_to_slots(table, torch.arange(ctx, device=table.device).expand(b, ctx), cache.shape[0])
    k = (codes[slots].to(torch.bfloat16) * scale[slots].unsqueeze(-1).to(torch.bfloat16))  # [B, ctx, 128]
    q = q8.to(torch.bfloat16)[:, 0]  # [B, H, 128]

    def run(_):
        dots = torch.einsum("bhd,btd->bht", q, k).relu_()
        return torch.einsum("bh,bht->bt", w[:, 0].to(torch.bfloat16), dots)

    return time_ms(run, args.device, max(3, args.iters // 5), 2, 1)


def sweep_indexer(args, shapes, k, peak, ceiling):
    rows, measured = [], {}
    for b, ctx in shapes:
        progress(f"indexer_logits_paged + topk_indices b={b} ctx={ctx}")
        per_call = b * ctx * (8448 // 64 + 4)
        pool = [paged_indexer_inputs(b, ctx, args.device) for _ in range(min(4, rotation_count(per_call, args.device)))]
        logits_ms = time_ms(lambda i: ops.indexer_logits_paged(*pool[i], ctx), args.device, args.iters, args.warmup, len(pool))
        logits = [ops.indexer_logits_paged(*p, ctx).view(b, ctx) for p in pool]
        topk_ms = time_ms(lambda i: ops.topk_indices(logits[i], k), args.device, args.iters, args.warmup, len(pool))
        base_ms = time_ms(lambda i: torch.topk(logits[i], min(k, ctx), dim=-1), args.device, args.iters, args.warmup, len(pool))
        flops = 2.0 * b * ctx * INDEX_HEADS * INDEX_DIM
        tflops = flops / logits_ms / 1e9
        gbs = per_call / logits_ms / 1e6
        base_logits_ms = torch_indexer_ms(args, pool[0], ctx)
        rows.append({"op": "indexer_logits_paged", "shape": f"b{b}xctx{ctx}", "dtype": "fp8", "time_us": 1e3 * logits_ms,
                     "TFLOPS": tflops, "GB/s": gbs, "frac_of_fp8_peak": tflops / peak if peak else None,
                     "frac_of_copy": gbs / ceiling, "baseline": "torch bf16 einsum, keys pre-gathered",
                     "baseline_us": 1e3 * base_logits_ms, "speedup": base_logits_ms / logits_ms})
        topk_gbs = b * ctx * 4 / topk_ms / 1e6
        rows.append({"op": "topk_indices", "shape": f"b{b}xctx{ctx}", "dtype": "fp32", "time_us": 1e3 * topk_ms,
                     "TFLOPS": None, "GB/s": topk_gbs, "frac_of_fp8_peak": None, "frac_of_copy": topk_gbs / ceiling,
                     "baseline": "torch.topk", "baseline_us": 1e3 * base_ms, "speedup": base_ms / topk_ms})
        measured[(b, ctx)] = (logits_ms, topk_ms)
    return rows, measured


def latent_rows(n: int, device: str) -> torch.Tensor:
    return torch.randn(n, 576, device=device).bfloat16()


def dense_baseline_ms(args, s: int, h: int, ctx: int) -> float:
    """Dense attention of s queries x h heads over all ctx keys of width 576 (values 512), via SDPA:
    what the model would run without the indexer (the queries are the last s tokens of the context)."""
    q = torch.randn(1, h, s, 576, device=args.device, dtype=torch.bfloat16)
    kv = torch.randn(1, 1, ctx, 576, device=args.device, dtype=torch.bfloat16)
    k, v = kv.expand(1, h, ctx, 576), kv[..., :512].expand(1, h, ctx, 512)
    fn = lambda _: torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=SM_SCALE)
    return time_ms(fn, args.device, max(3, args.iters // 5), 2, 1)


def attention_row(op, shape, dtype, ms, flops, nbytes, bf16_peak, ceiling, baseline, base_ms):
    tflops, gbs = flops / ms / 1e9, nbytes / ms / 1e6
    return {"op": op, "shape": shape, "dtype": dtype, "time_us": 1e3 * ms, "TFLOPS": tflops, "GB/s": gbs,
            "frac_of_bf16_peak": tflops / bf16_peak if bf16_peak else None, "frac_of_copy": gbs / ceiling,
            "baseline": baseline, "baseline_us": 1e3 * base_ms if base_ms else None,
            "speedup": base_ms / ms if base_ms else None}


def sweep_prefill(args, shapes, k, bf16_peak, ceiling):
    rows = []
    for s, h, ctx in shapes:
        progress(f"sparse_mla_prefill s={s} h={h} ctx={ctx}")
        q = torch.randn(s, h, 576, device=args.device).bfloat16()
        kv = latent_rows(ctx, args.device)
        idx = torch.stack([torch.randperm(ctx, device=args.device)[:k] for _ in range(s)]).int()
        ms = time_ms(lambda _: ops.sparse_mla_prefill(q, kv, idx, SM_SCALE), args.device, args.iters, args.warmup, 1)
        flops = 2.0 * s * h * k * (576 + 512)
        nbytes = s * k * 1152 + q.numel() * 2 + s * h * 512 * 2
        rows.append(attention_row("sparse_mla_prefill", f"s{s}xh{h}xk{k}", "bf16", ms, flops, nbytes, bf16_peak,
                                  ceiling, f"dense SDPA over ctx {ctx}", dense_baseline_ms(args, s, h, ctx)))
        if args.quick:
            ref_ms = time_ms(lambda _: reference.sparse_mla_prefill(q.cpu(), kv.cpu(), idx.cpu(), SM_SCALE), "cpu", 2, 1, 1)
            rows.append(attention_row("sparse_mla_prefill", f"s{s}xh{h}xk{k}", "bf16", ms, flops, nbytes, bf16_peak,
                                      ceiling, "reference", ref_ms))
    return rows


def sweep_decode(args, shapes, k, bf16_peak, ceiling):
    rows, measured = [], {}
    for b, h, ctx in shapes:
        for token_bytes, fmt in ((1152, "bf16"), (656, "fp8")):
            progress(f"sparse_mla_decode b={b} h={h} ctx={ctx} cache={fmt}")
            blocks = b * (-(-ctx // 64))
            cache = torch.randint(0, 0x7F, (blocks, 64, token_bytes), dtype=torch.uint8, device=args.device)
            ops.mla_cache_write(latent_rows(blocks * 64, args.device), torch.arange(blocks * 64, device=args.device), cache)
            q = torch.randn(b, 1, h, 576, device=args.device).bfloat16()
            idx = torch.randint(0, blocks * 64, (b, 1, k), device=args.device, dtype=torch.int32)
            ms = time_ms(lambda _: ops.sparse_mla_decode(q, cache, idx, SM_SCALE), args.device, args.iters, args.warmup, 1)
            flops = 2.0 * b * h * k * (576 + 512)
            nbytes = b * k * token_bytes + q.numel() * 2 + b * h * 512 * 2
            rows.append(attention_row("sparse_mla_decode", f"b{b}xh{h}xk{k}", fmt, ms, flops, nbytes, bf16_peak, ceiling,
                                      f"dense SDPA over ctx {ctx} (x batch)", dense_baseline_ms(args, 1, h, ctx) * b))
            if args.quick:
                ref_ms = time_ms(lambda _: reference.sparse_mla_decode(q.cpu(), cache.cpu(), idx.cpu(), SM_SCALE), "cpu", 2, 1, 1)
                rows.append(attention_row("sparse_mla_decode", f"b{b}xh{h}xk{k}", fmt, ms, flops, nbytes, bf16_peak,
                                          ceiling, "reference", ref_ms))
            measured[(b, h, fmt)] = ms
    return rows, measured


def sweep_split_decode(args, shapes, k, bf16_peak, ceiling):
    """Split-KV vs unsplit sparse MLA decode over the FP8 cache, same inputs; the plan is made once
    (per step in the model, shared by every layer) and timed on its own."""
    rows = []
    for b, h, ctx in shapes:
        progress(f"sparse_mla_decode split vs unsplit b={b} h={h} ctx={ctx}")
        blocks = b * (-(-ctx // 64))
        cache = torch.zeros(blocks, 64, 656, dtype=torch.uint8, device=args.device)
        ops.mla_cache_write(latent_rows(blocks * 64, args.device), torch.arange(blocks * 64, device=args.device), cache)
        q = torch.randn(b, 1, h, 576, device=args.device).bfloat16()
        idx = torch.randint(0, blocks * 64, (b, 1, k), device=args.device, dtype=torch.int32)
        parts = ops.sparse_mla_decode_sm_parts(args.device, 1, h)
        row_topk = torch.full((b,), k, dtype=torch.int32, device=args.device)
        meta, splits = ops.sparse_mla_decode_metadata(row_topk, parts)
        ws = torch.empty(ops.sparse_mla_decode_workspace_bytes(b, 1, h, parts), dtype=torch.uint8, device=args.device)
        plan_ms = time_ms(lambda _: ops.sparse_mla_decode_metadata(row_topk, parts), args.device, args.iters,
                          args.warmup, 1)
        split_ms = time_ms(lambda _: ops.sparse_mla_decode(q, cache, idx, SM_SCALE, tile_scheduler_metadata=meta,
                                                           num_splits=splits, workspace=ws),
                           args.device, args.iters, args.warmup, 1)
        unsplit_ms = time_ms(lambda _: ops.sparse_mla_decode(q, cache, idx, SM_SCALE), args.device, args.iters,
                             args.warmup, 1)
        flops = 2.0 * b * h * k * (576 + 512)
        nbytes = b * k * 656 + q.numel() * 2 + b * h * 512 * 2
        row = attention_row("sparse_mla_decode_split", f"b{b}xh{h}xk{k}", "fp8", split_ms, flops, nbytes, bf16_peak,
                            ceiling, "unsplit sparse_mla_decode", unsplit_ms)
        rows.append({**row, "num_sm_parts": parts, "pieces": int(splits[-1]), "plan_us": 1e3 * plan_ms})
    return rows


def index_share_rows(indexer_ms, decode_ms, k):
    """Per-token attention cost of 78 layers at 128K and 1M: all full vs freq-4 (21 full layers).
    Counted FLOPs and bytes per token; time composed from this run's per-layer measurements at
    batch 1 (indexer + top-k at the nearest measured context, scaled linearly in context; sparse
    decode with 64 heads and the FP8 cache, independent of context)."""
    rows = []
    ctx_measured = sorted(c for (b, c) in indexer_ms if b == 1)
    attn_key = next((key for key in ((1, 64, "fp8"), *sorted(decode_ms)) if key in decode_ms))
    attn_ms = decode_ms[attn_key] / attn_key[0]
    for ctx in (131072, 1 << 20):
        near = min(ctx_measured, key=lambda c: abs(c - ctx))
        logits_ms, topk_ms = indexer_ms[(1, near)]
        select_ms = (logits_ms + topk_ms) * ctx / near
        idx_flops = 2.0 * ctx * INDEX_HEADS * INDEX_DIM
        attn_flops = 2.0 * MLA_HEADS * min(k, ctx) * (576 + 512)
        idx_bytes, attn_bytes = ctx * 132 + ctx * 4, min(k, ctx) * 656
        for pattern, full in (("all-full", LAYERS), ("freq-4", FULL_LAYERS)):
            t_ms = full * select_ms + LAYERS * attn_ms
            t_full_ms = LAYERS * (select_ms + attn_ms)
            flops = full * idx_flops + LAYERS * attn_flops
            rows.append({"op": "index_share", "shape": f"ctx{ctx}", "dtype": pattern, "time_us": 1e3 * t_ms,
                         "TFLOPS": None, "GB/s": None, "per_token_GFLOP": flops / 1e9,
                         "per_token_MB": (full * idx_bytes + LAYERS * attn_bytes) / 1e6,
                         "flops_vs_all_full": flops / (LAYERS * (idx_flops + attn_flops)),
                         "whole_token_flops_vs_all_full": (flops / 1e9 + REST_GFLOP_PER_TOKEN)
                         / (LAYERS * (idx_flops + attn_flops) / 1e9 + REST_GFLOP_PER_TOKEN),
                         "frac_of_all_full_time": t_ms / t_full_ms,
                         "baseline": "all-full (composed)", "baseline_us": 1e3 * t_full_ms,
                         "speedup": t_full_ms / t_ms,
                         "time_source": "measured" if near == ctx else f"extrapolated from ctx {near}"})
    return rows


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    ceiling = copy_bandwidth_gbs(args.device)
    peak = fp8_peak_tflops(args.device)
    bf16_peak = peak / 2 if peak else None
    progress(f"ceilings on {args.device}: copy {ceiling:.1f} GB/s, FP8 {peak} TFLOPS")
    k = QUICK_TOPK if args.quick else TOPK
    idx_rows, indexer_ms = sweep_indexer(args, QUICK_INDEXER if args.quick else INDEXER_SHAPES, k, peak, ceiling)
    pre_rows = sweep_prefill(args, QUICK_PREFILL if args.quick else PREFILL_SHAPES, k, bf16_peak, ceiling)
    dec_rows, decode_ms = sweep_decode(args, QUICK_DECODE if args.quick else DECODE_SHAPES, k, bf16_peak, ceiling)
    split_rows = sweep_split_decode(args, QUICK_SPLIT if args.quick else SPLIT_SHAPES, k, bf16_peak, ceiling)
    meta = {**environment(args.device), "copy_ceiling_GBps": ceiling, "fp8_peak_TFLOPS": peak, "topk": k}
    report("attention_indexer", idx_rows, meta, args.out)
    report("attention_sparse_mla", pre_rows + dec_rows, meta, args.out)
    report("attention_split_decode", split_rows, meta, args.out)
    report("attention_index_share", index_share_rows(indexer_ms, decode_ms, k), meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
