"""The rank-independent pieces of context parallelism (DESIGN §6, cp ranks of a tensor-parallel group
each hold a block-striped share of the latent and indexer caches): merging each rank's top-k
candidates into the global top-k, and merging partial sparse-attention outputs by log-sum-exp.
Plain tensor functions, no communication: the caller gathers the ranks' tensors first.
"""

from __future__ import annotations

import torch

from . import kernels

__all__ = ["merge_attention_partials", "merge_topk_candidates", "striped_positions"]


def striped_positions(context: int, rank: int, cp: int, block: int = 64) -> torch.Tensor:
    """Global positions a rank holds when positions are striped by ``block``-token blocks over
    ``cp`` ranks (block ``j`` on rank ``j % cp``): int64, increasing."""
    pos = torch.arange(context)
    return pos[(pos // block) % cp == rank]


def merge_topk_candidates(positions: torch.Tensor, scores: torch.Tensor, k: int) -> torch.Tensor:
    """Global top-``k`` of each row from its ranks' candidates: ``positions`` int ``[R, C, k_c]``
    (global positions, −1 padded) and ``scores`` fp32 ``[R, C, k_c]`` (ignored at −1) → int32
    ``[R, k]``: the ``k`` largest finite scores, ties to the lower position, in increasing order, −1
    padded. When each rank's candidates are its own ``topk`` (same tie rule) over a disjoint share of
    the row, this equals ``topk_indices`` of the whole row: a key missing from its rank's top k has k
    better-or-earlier keys on that rank alone.

    The candidates are sorted by position (−1 last) and the radix ``topk_indices`` op picks among
    them: no host synchronization, the same on every device.
    """
    r = positions.shape[0]
    pos = positions.reshape(r, -1).long()
    val = scores.reshape(r, -1).float()
    missing = pos < 0
    order = torch.sort(torch.where(missing, torch.iinfo(torch.int64).max, pos), dim=1, stable=True).indices
    pos, val, missing = pos.gather(1, order), val.gather(1, order), missing.gather(1, order)
    pick = kernels.topk_indices(val.masked_fill(missing, float("-inf")).contiguous(), k).long()
    return torch.where(pick >= 0, pos.gather(1, pick.clamp_min(0)), -1).int()


def merge_attention_partials(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of disjoint key sets from each set's result: ``outs [C, ..., D]``
    and ``lses [C, ...]`` (natural log; −inf and zeros for an empty set, as the sparse MLA kernels
    return) → (out ``[..., D]`` in ``outs``' dtype, lse fp32 ``[...]``) with
    ``lse = log Σ_c exp(lse_c)`` and ``out = Σ_c exp(lse_c − lse) · out_c`` accumulated in fp32;
    zeros and −inf where every set is empty."""
    lse = torch.logsumexp(lses.float(), dim=0)
    weight = torch.exp(lses.float() - lse.unsqueeze(0)).nan_to_num(0.0)  # −inf − −inf: all empty
    out = (weight.unsqueeze(-1) * outs.float()).sum(dim=0)
    return out.to(outs.dtype), lse
