"""Sweep: speculative verification (greedy and sampled) at GLM-5.2's vocabulary, V = 154880.

Memory-bound ops. Bytes counted are those an op must read: greedy reads every logit
(B x (n+1) x V, bf16); sampling reads one probability row per batch row (the stop row, plus its
draft row with draft probabilities) and n probabilities per draft position. Reports GB/s against a
device-to-device copy measured in the same run, and the speedup over the plain-PyTorch reference
path of the same op: torch argmax + comparison for greedy, torch.multinomial-style sampling of
the stop rows for sampling (the Python reference oracle itself loops per row and is not a
meaningful baseline).

    python bench/bench_spec.py [--device cuda] [--out bench/out] [--quick]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import copy_bandwidth_gbs, environment, parse_args, progress, report, rotation_count, time_ms  # noqa: E402

from glm52_ext import ops  # noqa: E402

VOCAB = 154880
SHAPES = [(b, n) for b in (1, 16, 64, 256) for n in (1, 3, 7)]
QUICK_SHAPES, QUICK_VOCAB = [(1, 1), (4, 3)], 4096


def torch_greedy(draft, logits):
    """Baseline: argmax over the logits, then the acceptance in a few vectorized torch ops."""
    argmax = logits.argmax(dim=-1).to(torch.int32)
    n = draft.shape[1]
    match = (draft == argmax[:, :n]).to(torch.int32)
    accepted = match.cumprod(dim=1).sum(dim=1)
    keep = torch.arange(n + 1, device=draft.device)[None, :] <= accepted[:, None]
    return torch.where(keep, argmax, -1), (accepted + 1).to(torch.int32)


def torch_sampling(draft, draft_probs, target_probs, generator):
    """Baseline: the same rules with torch ops (accept tests, residual rows, torch.multinomial)."""
    batch, n = draft.shape
    p_d = target_probs[:, :n].gather(2, draft[..., None].long())[..., 0]
    q_d = draft_probs.gather(2, draft[..., None].long())[..., 0]
    u = torch.rand(batch, n, device=draft.device, generator=generator)
    ok = ((p_d >= q_d) | (u * q_d < p_d)).to(torch.int32)
    k = ok.cumprod(dim=1).sum(dim=1)
    rows = torch.arange(batch, device=draft.device)
    p_k = target_probs[rows, k]
    q_k = torch.where((k < n)[:, None], draft_probs[rows, k.clamp_max(n - 1)], 0.0)
    sample = torch.multinomial((p_k - q_k).clamp_min(0.0) + 1e-30, 1, generator=generator)[:, 0]
    return sample, k + 1


def make_inputs(batch, n, vocab, device, g):
    logits = torch.randn(batch, n + 1, vocab, device=device, generator=g) * 3
    target = torch.softmax(logits, dim=-1)
    draft_probs = torch.softmax(torch.randn(batch, n, vocab, device=device, generator=g) * 3, dim=-1)
    draft = torch.multinomial(draft_probs.view(-1, vocab), 1, generator=g).view(batch, n)
    return draft, logits.bfloat16(), draft_probs, target


def sweep(args, shapes, vocab, ceiling_gbs):
    rows = []
    g = torch.Generator(device=args.device).manual_seed(0)
    for batch, n in shapes:
        progress(f"spec_verify B={batch} n={n} V={vocab}")
        greedy_bytes = batch * (n + 1) * vocab * 2 + batch * n * 4
        pool = [make_inputs(batch, n, vocab, args.device, g) for _ in range(rotation_count(greedy_bytes, args.device))]
        base_iters = max(5, args.iters // 5)

        ours = time_ms(lambda i: ops.spec_verify_greedy(pool[i][0], pool[i][1]), args.device, args.iters, args.warmup, len(pool))
        base = time_ms(lambda i: torch_greedy(pool[i][0], pool[i][1]), args.device, base_iters, 2, len(pool))
        gbs = greedy_bytes / ours / 1e6
        rows.append({"op": "spec_verify_greedy", "B": batch, "n": n, "V": vocab, "dtype": "bf16", "time_us": 1e3 * ours,
                     "GB/s": gbs, "frac_of_copy": gbs / ceiling_gbs, "baseline": "torch argmax+compare",
                     "baseline_us": 1e3 * base, "speedup": base / ours})

        # Sampling reads the stop row of p and of q (q is absent only after n acceptances: counted anyway).
        sampling_bytes = batch * (2 * vocab * 4 + 2 * n * 4 + n * 4)
        ours = time_ms(lambda i: ops.spec_verify_sampling(pool[i][0], pool[i][2], pool[i][3], 1, i), args.device,
                       args.iters, args.warmup, len(pool))
        base = time_ms(lambda i: torch_sampling(pool[i][0], pool[i][2], pool[i][3], g), args.device, base_iters, 2,
                       len(pool))
        gbs = sampling_bytes / ours / 1e6
        rows.append({"op": "spec_verify_sampling", "B": batch, "n": n, "V": vocab, "dtype": "fp32", "time_us": 1e3 * ours,
                     "GB/s": gbs, "frac_of_copy": gbs / ceiling_gbs, "baseline": "torch rules+multinomial",
                     "baseline_us": 1e3 * base, "speedup": base / ours})
    return rows


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    ceiling = copy_bandwidth_gbs(args.device)
    progress(f"copy ceiling on {args.device}: {ceiling:.1f} GB/s")
    rows = sweep(args, QUICK_SHAPES if args.quick else SHAPES, QUICK_VOCAB if args.quick else VOCAB, ceiling)
    report("spec", rows, {**environment(args.device), "copy_ceiling_GBps": ceiling}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
