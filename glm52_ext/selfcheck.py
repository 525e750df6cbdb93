"""A short self-check: every op on the CPU (and on the GPU when one is visible and the CUDA
kernels were built) against glm52_ext.reference, plus the build facts.

Run as ``glm52 selfcheck`` or ``python -m glm52_ext.selfcheck``; exits non-zero on any mismatch.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import torch

from . import build_info, ops, reference


def _check_quant(device: str) -> bool:
    x = torch.randn(37, 1000, device=device, dtype=torch.bfloat16) * 3
    q, s = ops.quant_fp8_per_token_group(x, 128, scale_ue8m0=True)
    rq, rs = reference.quant_fp8_per_token_group(x.cpu(), 128, scale_ue8m0=True)
    return torch.equal(q.view(torch.uint8).cpu(), rq.view(torch.uint8)) and torch.equal(s.cpu(), rs)


def _check_dequant(device: str) -> bool:
    w = (torch.randn(2, 300, 260) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(2, 3, 3) + 0.5
    out = ops.dequant_fp8_block(w.to(device), s.to(device))
    return torch.equal(out.cpu(), reference.dequant_fp8_block(w, s))


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> bool:
    got = got.cpu()
    same_inf = torch.equal(torch.isneginf(got), torch.isneginf(want))
    fin = torch.isfinite(want)
    return same_inf and torch.allclose(got[fin].float(), want[fin].float(), rtol=rtol, atol=atol)


def _check_cache_writes(device: str) -> bool:
    kv, k = torch.randn(100, 576).bfloat16(), torch.randn(100, 128)
    slots = torch.randperm(192)[:100]
    ok = True
    for cache in (torch.zeros(3, 64, 1152, dtype=torch.uint8), torch.zeros(3, 64, 656, dtype=torch.uint8)):
        got = cache.to(device)
        ops.mla_cache_write(kv.to(device), slots.to(device), got)
        ok &= torch.equal(got.cpu(), reference.mla_cache_write(kv, slots, cache))
    icache = torch.zeros(3, 8448, dtype=torch.uint8)
    got = icache.to(device)
    ops.indexer_cache_write(k.to(device), slots.to(device), got)
    return ok and torch.equal(got.cpu(), reference.indexer_cache_write(k, slots, icache))


def _check_indexer_logits(device: str) -> bool:
    q8 = (torch.randn(33, 32, 128) * 40).to(torch.float8_e4m3fn)
    w, k8 = torch.randn(33, 32) * 1e-3, (torch.randn(1000, 128) * 40).to(torch.float8_e4m3fn)
    ksc, ks = torch.rand(1000), torch.arange(33, dtype=torch.int32) * 10
    ke = ks + 500
    args = (q8, w, k8, ksc, ks, ke)
    want = reference.indexer_logits(*args)
    return _close(ops.indexer_logits(*(t.to(device) for t in args)), want, 1e-5, 1e-5 * want[want.isfinite()].abs().max().item())


def _check_indexer_logits_paged(device: str) -> bool:
    cache = torch.zeros(8, 8448, dtype=torch.uint8)
    ops.indexer_cache_write(torch.randn(512, 128), torch.arange(512), cache)
    q8 = (torch.randn(2, 3, 64, 128) * 40).to(torch.float8_e4m3fn)
    w = torch.randn(2, 3, 64) * 1e-3
    table = torch.tensor([[7, 2, 5, 0], [1, 3, 4, 6]], dtype=torch.int32)
    lengths = torch.tensor([[198, 199, 200], [254, 255, 256]], dtype=torch.int32)
    args = (q8, w, cache, table, lengths)
    want = reference.indexer_logits_paged(*args, 256)
    got = ops.indexer_logits_paged(*(t.to(device) for t in args), 256)
    return _close(got, want, 1e-5, 1e-5 * want[want.isfinite()].abs().max().item())


def _check_topk(device: str) -> bool:
    logits = torch.randn(8, 200_000)
    lengths = torch.tensor([200_000, 100_000, 2048, 2047, 1, 0, 150_000, 3000], dtype=torch.int32)
    got = ops.topk_indices(logits.to(device), 2048, lengths.to(device))
    return torch.equal(got.cpu(), reference.topk_indices(logits, 2048, lengths))


def _check_sparse_prefill(device: str) -> bool:
    q, kv = torch.randn(4, 64, 576).bfloat16(), torch.randn(3000, 576).bfloat16()
    idx = torch.randint(-1, 3000, (4, 2048), dtype=torch.int32)
    want_out, want_lse = reference.sparse_mla_prefill(q, kv, idx, 256**-0.5)
    out, lse = ops.sparse_mla_prefill(q.to(device), kv.to(device), idx.to(device), 256**-0.5)
    return _close(out, want_out, 1e-2, 1e-2) and _close(lse, want_lse, 1e-5, 1e-4)


def _check_sparse_decode(device: str) -> bool:
    ok = True
    for token_bytes in (1152, 656):
        cache = torch.zeros(40, 64, token_bytes, dtype=torch.uint8)
        ops.mla_cache_write(torch.randn(2560, 576).bfloat16(), torch.arange(2560), cache)
        q, idx = torch.randn(2, 2, 16, 576).bfloat16(), torch.randint(-1, 2560, (2, 2, 2048), dtype=torch.int32)
        want_out, want_lse = reference.sparse_mla_decode(q, cache, idx, 256**-0.5)
        out, lse = ops.sparse_mla_decode(q.to(device), cache.to(device), idx.to(device), 256**-0.5)
        ok &= _close(out, want_out, 1e-2, 1e-2) and _close(lse, want_lse, 1e-5, 1e-4)
    return ok


CHECKS: dict[str, Callable[[str], bool]] = {
    "quant_fp8_per_token_group": _check_quant,
    "dequant_fp8_block": _check_dequant,
    "mla_cache_write+indexer_cache_write": _check_cache_writes,
    "indexer_logits": _check_indexer_logits,
    "indexer_logits_paged": _check_indexer_logits_paged,
    "topk_indices": _check_topk,
    "sparse_mla_prefill": _check_sparse_prefill,
    "sparse_mla_decode": _check_sparse_decode,
}


def run() -> tuple[dict, list[dict]]:
    """(build info, one row per op and device: op, device, ok, ms)."""
    info = build_info()
    devices = ["cpu"] + (["cuda"] if info["cuda"] and torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        for name, check in CHECKS.items():
            start = time.perf_counter()
            try:
                ok, error = check(device), ""
            except Exception as exc:  # reported, not raised: the self-check lists every failure
                ok, error = False, f"{type(exc).__name__}: {exc}"
            rows.append({"op": name, "device": device, "ok": ok, "ms": 1e3 * (time.perf_counter() - start), "error": error})
    return info, rows


def main(argv: list[str] | None = None) -> int:
    info, rows = run()
    print("glm52_ext build: " + json.dumps(info))
    if not (info["cuda"] and torch.cuda.is_available()):
        why = "no CUDA device visible" if info["cuda"] else "extension built CPU-only"
        print(f"GPU checks skipped: {why}")
    for row in rows:
        status = "ok  " if row["ok"] else "FAIL"
        print(f"  {status} {row['op']:<36} {row['device']:<5} {row['ms']:8.1f} ms {row['error']}")
    failed = [row for row in rows if not row["ok"]]
    if failed:
        print(f"self-check FAILED: {len(failed)} of {len(rows)} checks", file=sys.stderr)
        return 1
    print(f"self-check passed: {len(rows)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
