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


def _check_spec_greedy(device: str) -> bool:
    logits = torch.randn(8, 4, 5000).bfloat16()
    draft = logits.float().argmax(dim=-1)[:, :3].contiguous()
    draft[::2, 1] = 7
    got = ops.spec_verify_greedy(draft.to(device), logits.to(device))
    want = reference.spec_verify_greedy(draft, logits)
    return all(torch.equal(a.cpu(), b) for a, b in zip(got, want))


def _check_spec_sampling(device: str) -> bool:
    target = torch.softmax(torch.randn(8, 4, 5000) * 3, dim=-1)
    draft_probs = torch.softmax(torch.randn(8, 3, 5000) * 3, dim=-1)
    draft = torch.multinomial(draft_probs.view(-1, 5000), 1).view(8, 3)
    got = ops.spec_verify_sampling(draft.to(device), draft_probs.to(device), target.to(device), 1234, 5)
    want = reference.spec_verify_sampling(draft, draft_probs, target, 1234, 5)
    return all(torch.equal(a.cpu(), b) for a, b in zip(got, want))


def _fp8_operands(m: int, n: int, k: int, experts: int):
    a, a_scale = reference.quant_fp8_per_token_group(torch.randn(m, k) * 4, 128)
    b = (torch.randn(experts, n, k) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    return a, a_scale, b, torch.rand(experts, n // 128, k // 128) * 0.01 + 0.001


def _gemm_close(out: torch.Tensor, want: torch.Tensor) -> bool:
    """Within 1% of the reference in norm (bf16 output rounding is 0.4%; a wrong scale or row is ~100%)."""
    diff = (out.cpu().double() - want.double()).norm()
    return not out.isnan().any().item() and bool(diff <= 1e-2 * want.double().norm())


def _check_grouped_gemm_contiguous(device: str) -> bool:
    m_indices = torch.tensor([1] * 70 + [-1] * 58 + [0] * 128, dtype=torch.int32)
    a, a_scale, b, b_scale = _fp8_operands(256, 256, 384, 2)
    args = (a, a_scale, b, b_scale, m_indices)
    return _gemm_close(ops.fp8_grouped_gemm_contiguous(*(t.to(device) for t in args)), reference.fp8_grouped_gemm_contiguous(*args))


def _check_grouped_gemm_masked(device: str) -> bool:
    a, a_scale, b, b_scale = _fp8_operands(3 * 64, 128, 256, 3)
    args = (a.view(3, 64, 256), a_scale.view(3, 64, 2), b, b_scale, torch.tensor([64, 0, 9], dtype=torch.int32))
    out = ops.fp8_grouped_gemm_masked(*(t.to(device) for t in args), 16)
    want = reference.fp8_grouped_gemm_masked(*args, 16)
    return _gemm_close(out[0], want[0]) and _gemm_close(out[2, :9], want[2, :9])


def _check_gemm(device: str) -> bool:
    a, a_scale, b, b_scale = _fp8_operands(50, 256, 512, 1)
    args = (a, a_scale, b[0], b_scale[0])
    return _gemm_close(ops.fp8_gemm(*(t.to(device) for t in args)), reference.fp8_gemm(*args))


def _check_route(device: str) -> bool:
    logits, bias = torch.randn(40, 256), torch.randn(256) * 0.1
    w, ids = ops.moe_route(logits.to(device), bias.to(device), 8, 8, 4, 2.5, True)
    rw, rids = reference.moe_route(logits, bias, 8, 8, 4, 2.5, True)
    return torch.equal(ids.cpu(), rids) and torch.allclose(w.cpu(), rw, rtol=2e-6, atol=0)


def _check_permute(device: str) -> bool:
    x, x_scale = reference.quant_fp8_per_token_group(torch.randn(30, 256), 128)
    ids = torch.stack([torch.randperm(32)[:8] for _ in range(30)]).to(torch.int32)
    out, out_scale, m_indices, row_map = ops.moe_permute(x.to(device), x_scale.to(device), ids.to(device), 32, 128)
    want = reference.moe_permute(x, x_scale, ids, 32, 128)
    real = want[2] >= 0
    return (torch.equal(m_indices.cpu(), want[2]) and torch.equal(row_map.cpu(), want[3])
            and torch.equal(out.cpu()[real].view(torch.uint8), want[0][real].view(torch.uint8))
            and torch.equal(out_scale.cpu()[real], want[1][real]))


def _check_unpermute(device: str) -> bool:
    ids = torch.stack([torch.randperm(32)[:8] for _ in range(30)]).to(torch.int32)
    row_map = reference.moe_permute(torch.zeros(30, 1), None, ids, 32, 128)[3]
    y = torch.randn(reference.permuted_rows_bound(240, 32, 128), 512, dtype=torch.bfloat16)
    w = torch.rand(30, 8)
    return torch.equal(ops.moe_unpermute(y.to(device), w.to(device), row_map.to(device)).cpu(), reference.moe_unpermute(y, w, row_map))


def _check_silu_quant(device: str) -> bool:
    x = torch.randn(37, 2 * 1024, dtype=torch.bfloat16) * 3
    q, s = ops.silu_and_mul_quant_fp8(x.to(device), 128, scale_ue8m0=True)
    rq, rs = reference.silu_and_mul_quant_fp8(x, 128, scale_ue8m0=True)
    # exp may differ in its last bit between libraries: codes at rounding midpoints may flip.
    return torch.equal(s.cpu(), rs) and (q.view(torch.uint8).cpu() == rq.view(torch.uint8)).float().mean().item() > 0.999
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
    for hadamard in (False, True):
        got = icache.clone().to(device)
        ops.indexer_cache_write(k.to(device), slots.to(device), got, hadamard=hadamard)
        ok &= torch.equal(got.cpu(), reference.indexer_cache_write(k, slots, icache, hadamard=hadamard))
    return ok


def _check_hadamard(device: str) -> bool:
    x = torch.randn(1000, 128).bfloat16()
    return torch.equal(ops.hadamard_rotate(x.to(device)).cpu(), reference.hadamard_rotate(x))


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
    "spec_verify_greedy": _check_spec_greedy,
    "spec_verify_sampling": _check_spec_sampling,
    "fp8_grouped_gemm_contiguous": _check_grouped_gemm_contiguous,
    "fp8_grouped_gemm_masked": _check_grouped_gemm_masked,
    "fp8_gemm": _check_gemm,
    "moe_route": _check_route,
    "moe_permute": _check_permute,
    "moe_unpermute": _check_unpermute,
    "silu_and_mul_quant_fp8": _check_silu_quant,
    "mla_cache_write+indexer_cache_write": _check_cache_writes,
    "hadamard_rotate": _check_hadamard,
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
