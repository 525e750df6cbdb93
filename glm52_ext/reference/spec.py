"""Oracles of the speculative verification ops (DESIGN §2.1 "Speculative verification").

One batch row b holds draft tokens ``d_0..d_{n-1}``; target row ``j`` in ``[0, n]`` scores the
token that follows ``d_{j-1}`` (row 0: the one after the last verified token). Outputs: ``tokens``
``[B, n + 1]`` int32 (−1 after the last emitted) and ``num_emitted`` ``[B]`` int32 in ``[1, n + 1]``.

The sampling oracle draws its uniforms from Philox 4x32-10 exactly as the kernels do and sums
probabilities in the kernels' documented fp32 order, so it agrees with them token for token.
"""

from __future__ import annotations

import torch

__all__ = [
    "PHILOX_M",
    "PHILOX_W",
    "SCAN_TILE",
    "philox4x32_10",
    "philox_uniform",
    "sample_inverse_cdf",
    "scan_tile",
    "spec_verify_greedy",
    "spec_verify_sampling",
]

MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
"""Philox 4x32 round multipliers."""
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
"""Philox 4x32 key schedule increments."""
DRAW_ACCEPT, DRAW_SAMPLE = 0, 1
SCAN_TILE = 1024
"""Weights are summed in tiles of 1024 (256 threads x 4 elements), see :func:`scan_tile`."""


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """Random123's Philox 4x32 with 10 rounds on 32-bit words (plain Python integers)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        p0, p1 = PHILOX_M[0] * c0, PHILOX_M[1] * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return c0, c1, c2, c3


def philox_uniform(seed: int, offset: int, row: int, position: int, draw: int) -> float:
    """The uniform in [0, 1) the kernels draw for batch ``row``, ``position`` and ``draw`` (0: the
    accept test, 1: the sample): key = seed (64 bits), counter = (row, 2 * position + draw,
    offset low, offset high); the top 24 bits of the first output word times 2^-24."""
    seed, offset = seed & (2**64 - 1), offset & (2**64 - 1)
    counter = (row & MASK32, (2 * position + draw) & MASK32, offset & MASK32, offset >> 32)
    word = philox4x32_10(counter, (seed & MASK32, seed >> 32))[0]
    return (word >> 8) * 2.0**-24


def spec_verify_greedy(draft: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: ``a_j = argmax target_logits[b, j]`` (ties to the lowest index, NaN
    first, as ``torch.argmax``); accept ``d_j`` while ``d_j == a_j``; emit ``a_k`` at the first
    mismatch ``k`` (or the bonus ``a_n``). So ``tokens[b, :k+1] = a[:k+1]``, ``num_emitted = k + 1``."""
    batch, n = draft.shape
    argmax = target_logits.float().argmax(dim=-1).to(torch.int32).cpu()
    draft = draft.cpu()
    tokens = torch.full((batch, n + 1), -1, dtype=torch.int32)
    num_emitted = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        k = 0
        while k < n and int(draft[b, k]) == int(argmax[b, k]):
            k += 1
        tokens[b, : k + 1] = argmax[b, : k + 1]
        num_emitted[b] = k + 1
    return tokens, num_emitted


def _ks_scan(x: torch.Tensor, lanes: int) -> torch.Tensor:
    """Inclusive Kogge-Stone scan along the last dim (``x_l = x_{l-off} + x_l`` for off = 1, 2, 4, ...)."""
    off = 1
    while off < lanes:
        x = torch.cat([x[..., :off], x[..., :-off] + x[..., off:]], dim=-1)
        off *= 2
    return x


def scan_tile(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' fp32 summation order for tiles ``x[..., 1024]``: thread t of a 256-thread
    block sums ``x[4t:4t+4]`` left to right; a Kogge-Stone scan runs inside each warp of 32, then
    over the 8 warp totals, which are added to the next warps. Returns (inclusive value of every
    element ``[..., 1024]``, tile total ``[...]`` = the last scanned warp total)."""
    x = x.to(torch.float32)
    lead = x.shape[:-1]
    x4 = x.reshape(*lead, 256, 4)
    running = [x4[..., 0]]
    for i in range(1, 4):
        running.append(running[-1] + x4[..., i])
    partial = torch.stack(running, dim=-1)  # [..., 256, 4]: q_{t,i}
    warps = _ks_scan(partial[..., 3].reshape(*lead, 8, 32), 32)
    totals = _ks_scan(warps[..., 31], 8)
    warps = torch.cat([warps[..., :1, :], totals[..., :-1, None] + warps[..., 1:, :]], dim=-2)
    inclusive = warps.reshape(*lead, 256)
    exclusive = torch.cat([torch.zeros_like(inclusive[..., :1]), inclusive[..., :-1]], dim=-1)
    elements = (exclusive[..., None] + partial).reshape(*lead, SCAN_TILE)
    return elements, totals[..., 7]


def _pad_tiles(w: torch.Tensor) -> torch.Tensor:
    pad = -w.numel() % SCAN_TILE
    return torch.nn.functional.pad(w, (0, pad)).view(-1, SCAN_TILE)


def _weights(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` with NaN as 0 (the kernels' fmaxf)."""
    return torch.where(torch.isnan(x), 0.0, x).clamp_min(0.0)


def _usable(total: torch.Tensor) -> bool:
    return bool(total > 0) and bool(torch.isfinite(total))


def sample_inverse_cdf(w: torch.Tensor, u: float) -> int:
    """Inverse-CDF sample of the index of ``w[V]`` (fp32 weights >= 0, unnormalized) for the
    uniform ``u``, in the kernels' order: tile totals; their scan in chunks of 1024 tiles with a
    running carry gives ``cum(c)`` and the total S; ``target = u * S``; the first tile with a
    positive total and ``cum(c) > target`` (else the last positive tile), then in it the first
    positive weight with ``cum(c - 1) + e_v > target`` (else its last positive weight).
    Returns -1 when S is zero or not finite."""
    w = w.to(torch.float32)
    tiles_e, tile_totals = scan_tile(_pad_tiles(w))
    chunks_e, chunk_totals = scan_tile(_pad_tiles(tile_totals))
    zero = torch.zeros((), dtype=torch.float32)
    carries = [zero]
    for total in chunk_totals:
        carries.append(carries[-1] + total)
    s = carries[-1]
    if not _usable(s):
        return -1
    target = torch.tensor(u, dtype=torch.float32) * s
    cum = (torch.stack(carries[:-1])[:, None] + chunks_e).reshape(-1)[: tile_totals.numel()]
    positive = tile_totals > 0
    passing = torch.nonzero(positive & (cum > target)).flatten()
    if passing.numel():
        c, passed = int(passing[0]), True
        base = cum[c - 1] if c > 0 else zero
    else:
        c, passed = int(torch.nonzero(positive).flatten()[-1]), False
    weights = _pad_tiles(w)[c]
    if passed:
        hit = torch.nonzero((weights > 0) & (base + tiles_e[c] > target)).flatten()
        if hit.numel():
            return c * SCAN_TILE + int(hit[0])
    return c * SCAN_TILE + int(torch.nonzero(weights > 0).flatten()[-1])


def spec_verify_sampling(
    draft: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling, exact in distribution (Leviathan et al. 2023; Chen et al. 2023).

    For j = 0..n-1 with ``p = target_probs[b, j, d_j]``, ``q = draft_probs[b, j, d_j]`` (1 when
    ``draft_probs`` is None: a deterministic draft): accept ``d_j`` when ``p >= q`` or
    ``u * q < p`` (fp32), u the accept uniform of (b, j); a token outside [0, V) is rejected.
    At the first rejection k, sample from ``max(p_k - q_k, 0)`` (``q_k`` one-hot at ``d_k``
    without draft probs); after n acceptances sample the bonus from ``p_n``. The sample uniform
    is that of (b, k). A residual without usable mass falls back to ``p_k``, then to token 0.
    """
    batch, n = draft.shape
    vocab = target_probs.shape[-1]
    p_all = target_probs.detach().to("cpu", torch.float32)
    q_all = None if draft_probs is None else draft_probs.detach().to("cpu", torch.float32)
    draft = draft.cpu()
    tokens = torch.full((batch, n + 1), -1, dtype=torch.int32)
    num_emitted = torch.zeros(batch, dtype=torch.int32)
    for b in range(batch):
        k = 0
        while k < n:
            d = int(draft[b, k])
            if not 0 <= d < vocab:
                break
            p = p_all[b, k, d]
            q = q_all[b, k, d] if q_all is not None else torch.tensor(1.0)
            u = torch.tensor(philox_uniform(seed, offset, b, k, DRAW_ACCEPT), dtype=torch.float32)
            if not (p >= q or u * q < p):
                break
            k += 1
        pk = p_all[b, k]
        if k == n:
            qk = torch.zeros_like(pk)
        elif q_all is not None:
            qk = q_all[b, k]
        else:
            qk = torch.zeros_like(pk)
            d = int(draft[b, k])
            if 0 <= d < vocab:
                qk[d] = 1.0
        u = philox_uniform(seed, offset, b, k, DRAW_SAMPLE)
        token = sample_inverse_cdf(_weights(pk - qk), u)
        if token < 0:
            token = sample_inverse_cdf(_weights(pk), u)
        tokens[b, :k] = draft[b, :k].to(torch.int32)
        tokens[b, k] = max(token, 0)
        num_emitted[b] = k + 1
    return tokens, num_emitted
