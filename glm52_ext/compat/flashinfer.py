"""FlashInfer's ``flashinfer.sampling.chain_speculative_sampling`` on glm52's ``spec_verify_sampling``.

Same arguments, outputs and counting conventions as FlashInfer: token ids ``[B, n + 1]`` int32,
−1 after the last emitted token; ``output_emitted_draft_token_num`` counts the accepted draft tokens
*without* the bonus or correction token (glm52's ``num_emitted`` minus one);
``output_accepted_token_num`` counts the positions whose draft token passes the acceptance test on
its own (not stopping at the first rejection: how well draft and target agree); both are *added* to
the ``maybe_output_*`` tensors in place when those are given. The emitted tokens are distributed
exactly as sampling the target (glm52's guarantee; chi-square tested).

Randomness: Philox 4x32-10 keyed by a seed and an offset (``glm52_ext.ops.spec_verify_sampling``).
They come from ``seed``/``offset`` (ints; or int64 tensors of length 1 or ``B``: one stream per
request, whose draws then do not depend on the request's batch position) or are drawn from
``generator`` (the device's default generator when None). Differences from FlashInfer: tensor
seeds and a CUDA generator are read on the host (a synchronization, so not CUDA-graph capturable:
pass int seeds there), and per-request seeds run one op call per request.
"""

from __future__ import annotations

import torch

from .. import ops
from ..reference.spec import DRAW_ACCEPT, MASK32, PHILOX_M, PHILOX_W

__all__ = ["chain_speculative_sampling", "philox_uniforms"]


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of ``a * b`` for uint32 values held in int64 (the product wraps
    modulo 2^64 in two's complement, so both words are exact)."""
    product = b * a
    return (product >> 32) & MASK32, product & MASK32


def philox_uniforms(seed: int, offset: int, rows: torch.Tensor, positions: torch.Tensor, draw: int) -> torch.Tensor:
    """Vectorized ``glm52_ext.reference.spec.philox_uniform``: the kernels' uniform for each
    (row, position) pair (broadcast), as float32, computed with int64 torch ops on their device."""
    seed, offset = seed & (2**64 - 1), offset & (2**64 - 1)
    c0 = rows.long() & MASK32
    c1 = (2 * positions.long() + draw) & MASK32
    c0, c1 = torch.broadcast_tensors(c0, c1)
    c2 = torch.full_like(c0, offset & MASK32)
    c3 = torch.full_like(c0, offset >> 32)
    k0, k1 = seed & MASK32, seed >> 32
    for r in range(10):
        if r:
            k0, k1 = (k0 + PHILOX_W[0]) & MASK32, (k1 + PHILOX_W[1]) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo(PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return (c0 >> 8).to(torch.float32) * 2.0**-24


def _independent_accepts(draft_ids, draft_probs, target_probs, seed, offset, rows) -> torch.Tensor:
    """Per request, how many positions pass the acceptance test on their own: ``p >= q`` or
    ``u · q < p`` with the op's accept uniform (a token outside the vocabulary fails)."""
    vocab = target_probs.shape[-1]
    ids = draft_ids.long()
    inside = (ids >= 0) & (ids < vocab)
    safe = ids.clamp(0, vocab - 1).unsqueeze(-1)
    p = target_probs[:, :-1].gather(-1, safe).squeeze(-1)
    q = draft_probs.gather(-1, safe).squeeze(-1)
    u = philox_uniforms(seed, offset, rows[:, None], torch.arange(ids.shape[1], device=ids.device)[None, :], DRAW_ACCEPT)
    return (inside & ((p >= q) | (u * q < p))).sum(dim=1).to(torch.int32)


def _streams(seed, offset, generator, batch: int, device: torch.device) -> list[tuple[int, int]]:
    """One (seed, offset) pair for the batch, or one per request."""
    if seed is None or offset is None:
        if generator is None:
            generator = torch.cuda.default_generators[device.index or 0] if device.type == "cuda" else torch.default_generator
        drawn = torch.randint(0, 2**62, (2,), generator=generator, device=generator.device)
        return [tuple(int(v) for v in drawn.tolist())]
    seeds = torch.as_tensor(seed).reshape(-1).tolist()
    offsets = torch.as_tensor(offset).reshape(-1).tolist()
    for name, values in (("seed", seeds), ("offset", offsets)):
        if len(values) not in (1, batch):
            raise ValueError(f"chain_speculative_sampling: argument '{name}' must be an int or a tensor of length 1 "
                             f"or batch_size = {batch}, got length {len(values)}")
    if len(seeds) == 1 and len(offsets) == 1:
        return [(int(seeds[0]), int(offsets[0]))]
    seeds, offsets = seeds * (batch // len(seeds)), offsets * (batch // len(offsets))
    return [(int(s), int(o)) for s, o in zip(seeds, offsets)]


def chain_speculative_sampling(
    draft_probs: torch.Tensor,
    draft_token_ids: torch.Tensor,
    target_probs: torch.Tensor,
    maybe_output_accepted_token_num: torch.Tensor | None = None,
    maybe_output_emitted_draft_token_num: torch.Tensor | None = None,
    deterministic: bool = True,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chain speculative sampling (FlashInfer's signature and conventions).

    Parameters
    ----------
    draft_probs : torch.Tensor
        ``[B, n, V]``: the draft distributions the draft tokens were sampled from.
    draft_token_ids : torch.Tensor
        ``[B, n]`` int32 or int64.
    target_probs : torch.Tensor
        ``[B, n + 1, V]``: the target distributions (rows summing to 1).
    maybe_output_accepted_token_num, maybe_output_emitted_draft_token_num : torch.Tensor, optional
        ``[B]`` int32 counters the counts are added to in place.
    deterministic : bool
        Accepted for compatibility; glm52's kernel is always deterministic.
    generator : torch.Generator, optional
        Source of the seed and offset when those are not given.
    seed, offset : int or torch.Tensor, optional
        Philox seed and offset (module docstring).

    Returns
    -------
    (output_token_ids, output_accepted_token_num, output_emitted_draft_token_num) :
        int32 ``[B, n + 1]`` (−1 padded), ``[B]``, ``[B]``.
    """
    batch, n = draft_token_ids.shape
    device = draft_probs.device
    draft_probs, target_probs = draft_probs.float().contiguous(), target_probs.float().contiguous()
    draft_token_ids = draft_token_ids.contiguous()
    streams = _streams(seed, offset, generator, batch, device)
    if len(streams) == 1:
        tokens, num_emitted = ops.spec_verify_sampling(draft_token_ids, draft_probs, target_probs, *streams[0])
        accepted = _independent_accepts(draft_token_ids, draft_probs, target_probs, *streams[0],
                                        torch.arange(batch, device=device))
    else:  # one stream per request: each request alone, as row 0 of its own call
        parts = [ops.spec_verify_sampling(draft_token_ids[b : b + 1], draft_probs[b : b + 1], target_probs[b : b + 1], s, o)
                 for b, (s, o) in enumerate(streams)]
        tokens = torch.cat([t for t, _ in parts]) if parts else draft_token_ids.new_empty((0, n + 1), dtype=torch.int32)
        num_emitted = torch.cat([e for _, e in parts]) if parts else draft_token_ids.new_empty(0, dtype=torch.int32)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        accepted = torch.cat([_independent_accepts(draft_token_ids[b : b + 1], draft_probs[b : b + 1],
                                                   target_probs[b : b + 1], s, o, zero)
                              for b, (s, o) in enumerate(streams)]) if streams else num_emitted
    emitted_drafts = num_emitted - 1
    if maybe_output_accepted_token_num is not None:
        accepted = maybe_output_accepted_token_num.add_(accepted)
    if maybe_output_emitted_draft_token_num is not None:
        emitted_drafts = maybe_output_emitted_draft_token_num.add_(emitted_drafts)
    return tokens, accepted, emitted_drafts
