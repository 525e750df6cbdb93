"""Long-context prefill on the tiny model, and the fused indexer top-k against the materialized path.

    python bench/bench_long_context.py [--device cpu] [--out bench/out] [--quick] [--lengths 4096,8192,...]

1. ``long_context``: ``Engine.generate`` of one prompt of each length (2 new tokens, MTP spec_steps 3,
   ``prefill_chunk_tokens`` 8192), each length in its own subprocess so its peak RSS
   (``ru_maxrss``) is its own. The baseline is linear growth from the shortest length:
   ``frac_of_linear_rss`` = peak RSS / (RSS at the first length × length / first length)
   (≤ 1: memory grows at most linearly).
2. ``indexer_topk_fused``: ``indexer_topk`` against ``indexer_logits`` + ``topk_indices`` (same
   result, checked) for 32 heads, k = 2048, 8K to 1M keys on CUDA: time and the bytes each writes
   (the materialized path's ``[S, L]`` fp32 scores vs the fused path's ``[S, k]`` int32 plus its
   per-row candidates, which the CUDA kernels hold in shared memory: ``smem_per_cta``). On CUDA
   twice: default scoring (``kernel`` qgmma: the fused QGMMA top-k vs QGMMA logits + top-k) and
   ``GLM52_INDEXER_KERNEL=simt`` (both on the fp32 SIMT scoring).

On the CPU these are the C++ twins and plain-PyTorch model code: they show memory scaling, not the
kernels' GPU speed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, parse_args, progress, report, time_ms  # noqa: E402

NEW_TOKENS, SPEC_STEPS, CHUNK = 2, 3, 8192


def one_length(length: int) -> dict:
    """Runs in a subprocess: build the tiny model, prefill `length` tokens, report time and peak RSS."""
    from glm52 import GLM52Config, GLM52ForCausalLM
    from glm52.checkpoint import init_random_
    from glm52.engine import Engine
    from glm52.kv_cache import PagedKVCache

    torch.set_grad_enabled(False)
    context = length + NEW_TOKENS + SPEC_STEPS + 64
    config = GLM52Config.preset("tiny").replace(max_position_embeddings=max(context, 4096))
    model = init_random_(GLM52ForCausalLM(config), 0).eval()
    cache_bytes = (-(-context // 64) + 1) * PagedKVCache.bytes_per_block(config, torch.float32)
    engine = Engine(model, cache_bytes=cache_bytes, spec_steps=SPEC_STEPS, prefill_chunk_tokens=CHUNK)
    prompt = torch.randint(0, config.vocab_size, (length,), generator=torch.Generator().manual_seed(0)).tolist()
    start = time.perf_counter()
    engine.generate([prompt], NEW_TOKENS)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "cache_bytes": cache_bytes}


def long_context_rows(lengths: list[int]) -> list[dict]:
    rows, first = [], None
    for length in lengths:
        progress(f"long context: {length} tokens (subprocess)")
        cmd = [sys.executable, __file__, "--one-length", str(length)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode:
            raise RuntimeError(f"length {length} failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        first = first or (length, r["peak_rss_bytes"])
        linear = first[1] * length / first[0]
        rows.append({"prompt_tokens": length, "time_us": 1e6 * r["seconds"], "seconds": r["seconds"],
                     "us_per_token": 1e6 * r["seconds"] / length, "peak_rss_gb": r["peak_rss_bytes"] / 1e9,
                     "cache_gb": r["cache_bytes"] / 1e9, "frac_of_linear_rss": r["peak_rss_bytes"] / linear,
                     "baseline": f"linear RSS from {first[0]} tokens"})
    return rows


def scoring_modes(device: str) -> list[str | None]:
    """GLM52_INDEXER_KERNEL settings to run: on CUDA the default (QGMMA scoring for 32 heads) and
    "simt"; the CPU twin has one path."""
    return [None, "simt"] if device == "cuda" else [None]


def fused_rows(shapes: list[tuple[int, int]], args) -> list[dict]:
    from glm52_ext import ops

    heads, k, rows = 32, 2048, []
    for s, length in shapes:
        g = torch.Generator().manual_seed(length)
        q8 = (torch.randn(s, heads, 128, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
        k8 = (torch.randn(length, 128, generator=g) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
        w, k_scale = torch.randn(s, heads, generator=g) * 1e-3, torch.rand(length, generator=g) + 0.1
        ks = torch.zeros(s, dtype=torch.int32)
        ke = torch.arange(length - s + 1, length + 1, dtype=torch.int32)  # causal tail of a prefill chunk
        inputs = [t.to(args.device) for t in (q8, w, k8, k_scale, ks, ke)]
        for mode in scoring_modes(args.device):
            with indexer_kernel_env(mode):
                kernel, smem = ops.indexer_topk_kernel(heads, k) if args.device == "cuda" else ("cpu twin", 0)
                progress(f"fused ({kernel}) vs materialized: S={s} L={length}")
                fused = ops.indexer_topk(*inputs, k)
                assert torch.equal(fused, ops.topk_indices(ops.indexer_logits(*inputs), k)), "fused != materialized"
                iters, warmup = max(1, min(args.iters, 3)), min(args.warmup, 1)
                t_fused = time_ms(lambda i: ops.indexer_topk(*inputs, k), args.device, iters, warmup, 1)
                t_mat = time_ms(lambda i: ops.topk_indices(ops.indexer_logits(*inputs), k), args.device, iters, warmup, 1)
            # Candidates: per CPU worker thread in RAM; on CUDA per row in shared memory (never global).
            workers = torch.get_num_threads() if args.device == "cpu" else s
            fused_bytes = s * k * 4 + workers * (2 * k + 256) * 8
            mat_bytes = s * length * 4 + s * k * 4
            rows.append({"queries": s, "keys": length, "k": k, "kernel": kernel, "time_us": 1e3 * t_fused,
                         "materialized_us": 1e3 * t_mat, "fused_bytes": fused_bytes, "smem_per_cta": smem,
                         "materialized_bytes": mat_bytes, "frac_of_materialized_bytes": fused_bytes / mat_bytes,
                         "speedup": t_mat / t_fused,
                         "baseline": f"indexer_logits ({'simt' if mode else 'default'} scoring) + topk_indices"})
    return rows


@contextlib.contextmanager
def indexer_kernel_env(mode: str | None):
    """GLM52_INDEXER_KERNEL=mode (unset for None) while inside; read by the ops on every call."""
    saved = os.environ.pop("GLM52_INDEXER_KERNEL", None)
    if mode is not None:
        os.environ["GLM52_INDEXER_KERNEL"] = mode
    try:
        yield
    finally:
        os.environ.pop("GLM52_INDEXER_KERNEL", None)
        if saved is not None:
            os.environ["GLM52_INDEXER_KERNEL"] = saved


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--one-length"]:
        print(json.dumps(one_length(int(argv[1]))))
        return 0
    lengths = None
    if "--lengths" in argv:
        i = argv.index("--lengths")
        lengths = [int(x) for x in argv[i + 1].split(",")]
        argv = argv[:i] + argv[i + 2:]
    args = parse_args(__doc__, argv)
    if lengths is None:
        lengths = [256, 512] if args.quick else [4096, 8192, 16384, 32768, 65536]
    if args.quick:
        shapes = [(4, 2048)]
    elif args.device == "cuda":
        shapes = [(64, 8192), (64, 65536), (64, 262144), (64, 1048576)]
    else:
        shapes = [(64, 8192), (64, 32768), (64, 131072)]
    meta = environment(args.device)
    report("long_context", long_context_rows(lengths), meta, args.out)
    report("indexer_topk_fused", fused_rows(shapes, args), meta, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
