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


CHECKS: dict[str, Callable[[str], bool]] = {
    "quant_fp8_per_token_group": _check_quant,
    "dequant_fp8_block": _check_dequant,
    "spec_verify_greedy": _check_spec_greedy,
    "spec_verify_sampling": _check_spec_sampling,
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
        print(f"  {status} {row['op']:<28} {row['device']:<5} {row['ms']:8.1f} ms {row['error']}")
    failed = [row for row in rows if not row["ok"]]
    if failed:
        print(f"self-check FAILED: {len(failed)} of {len(rows)} checks", file=sys.stderr)
        return 1
    print(f"self-check passed: {len(rows)} checks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
