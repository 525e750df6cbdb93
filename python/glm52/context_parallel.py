"""Context parallelism (DESIGN §6): the ``cp`` ranks of a tensor-parallel group each hold a
block-striped share of the latent and indexer caches instead of a replica.

Layout: a context-parallel group is ``cp`` consecutive ranks of a tensor-parallel group
(``cp_rank = tp_rank % cp``), and table entry ``j`` of a sequence (positions ``64 j .. 64 j + 63``)
lives on cp rank ``j % cp``. Every rank keeps the sequence's whole block table, with −1 where a
peer holds the block, so a position's entry, the table widths and every tensor shape are the same
on all ranks (what the collectives need) and the layers run unchanged: a striped table maps the
positions a rank does not hold to slot −1, which the cache writes skip and the reads treat as absent.

Only two cache reads change (:class:`ContextParallelCache`), each one collective round:

- ``index_topk``: each rank selects the top ``k`` of its own keys (global positions, causal by
  global position) with their scores; the ranks' candidates are all-gathered and merged into the
  global top-k (:func:`merge_topk_candidates`: equal to one process's selection, ties to the lower
  position). The chosen positions then map to this rank's slots (−1 where a peer holds the key).
- ``attend``: heads are split by TP, keys by CP. The query heads are all-gathered over the cp
  group, each rank attends all of them over its selected local keys, and the partial
  ``(out, lse)`` of each peer's heads go back to that peer (one all-to-all), which merges them by
  log-sum-exp (:func:`merge_attention_partials`). Moving queries and partial outputs costs
  ``O(tokens · heads · 576)`` per layer; gathering the selected latent rows from their owners
  instead would cost ``O(tokens · index_topk · 576)`` (each query its own 2048 rows), far more in
  prefill.

The rank-independent pieces (the two merges) are plain tensor functions, tested without processes.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from . import kernels
from .config import GLM52Config
from .kv_cache import (BLOCK_SIZE, INDEX_TOKEN_BYTES, BlockAllocator, CacheFullError, CacheView, PagedKVCache,
                       fp8_index_query, paged_slots)

__all__ = ["ContextParallel", "ContextParallelCache", "StripedBlockAllocator", "merge_attention_partials",
           "merge_topk_candidates", "striped_positions"]

SCORE_QUERY_TILE = 256  # kernel formats: candidate scores are recomputed for this many queries at a time


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


def _stripe_count(stripe: int, cp: int, entries: int) -> int:
    """How many of table entries ``0 .. entries - 1`` fall on cp rank ``stripe``."""
    return max(0, (entries - stripe + cp - 1) // cp)


class StripedBlockAllocator(BlockAllocator):
    """The blocks of one cp rank: table entry ``j`` is held here when ``j % cp == rank`` (−1 in the
    table otherwise). Every rank of the group sees the same reservations, so each also counts its
    peers' use and refuses a reservation when *any* rank of the group would run out: the same
    :class:`CacheFullError` on every rank, never one rank failing while its peers wait in a collective.
    ``num_free`` is the fewest free blocks of any rank."""

    def __init__(self, num_blocks: int, rank: int, cp: int) -> None:
        if not 0 <= rank < cp:
            raise ValueError(f"rank must be in [0, cp = {cp}); got {rank}")
        super().__init__(num_blocks)
        self.rank, self.cp = rank, cp

    def owns(self, entry: int) -> bool:
        return entry % self.cp == self.rank

    def _held(self, stripe: int) -> int:
        return sum(_stripe_count(stripe, self.cp, len(t)) for t in self.tables.values())

    @property
    def num_free(self) -> int:
        return self.num_blocks - max(map(self._held, range(self.cp)))

    def blocks_for(self, num_tokens: int) -> int:
        return _stripe_count(0, self.cp, -(-num_tokens // BLOCK_SIZE))  # rank 0 holds the most

    def reserve(self, seq_id: int, num_tokens: int) -> None:
        have, total = len(self.tables.get(seq_id, ())), -(-num_tokens // BLOCK_SIZE)
        if total <= have:  # nothing new (most decode steps): skip the per-stripe usage sums
            return super().reserve(seq_id, num_tokens)
        for stripe in range(self.cp):
            need = _stripe_count(stripe, self.cp, total) - _stripe_count(stripe, self.cp, have)
            free = self.num_blocks - self._held(stripe)
            if need > free:
                raise CacheFullError(f"sequence {seq_id} needs {need} more blocks for {num_tokens} tokens on "
                                     f"context-parallel rank {stripe}; {free} free there")
        super().reserve(seq_id, num_tokens)


class ContextParallel:
    """This rank's place in its context-parallel group, and the collectives the cache reads use.

    ``handle``: a :class:`glm52.parallel.ParallelHandle` with ``config.cp > 1`` (its ``cp_group`` may
    be None to build caches without processes, e.g. to size them)."""

    def __init__(self, handle) -> None:
        self.rank, self.size, self.group = handle.cp_rank, handle.config.cp, handle.cp_group

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """``[cp, *x.shape]``: every rank's ``x``, in cp-rank order."""
        x = x.contiguous()  # empty_like keeps a permuted tensor's strides; the collectives write dense rows
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.stack(parts)

    def exchange(self, x: torch.Tensor) -> torch.Tensor:
        """All-to-all: ``x [cp, ...]`` sends ``x[j]`` to rank ``j``; returns what rank ``j`` sent here at ``[j]``."""
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.group)
        return out

    def paged_cache(self, config: GLM52Config, budget_bytes: int, dtype: torch.dtype, device: torch.device | str,
                    format: str | None = None) -> tuple[ContextParallelCache, StripedBlockAllocator]:
        """The engine's cache on this rank: ``budget_bytes`` of this rank's blocks (so the group holds
        ``cp`` times the tokens of one replica) and the allocator that stripes them."""
        blocks = PagedKVCache.blocks_in_budget(config, budget_bytes, dtype, format)
        return (ContextParallelCache(self, config, blocks, dtype, device, format),
                StripedBlockAllocator(blocks, self.rank, self.size))

    def contiguous_view(self, config: GLM52Config, batch: int, tokens: int, dtype: torch.dtype,
                        device: torch.device | str) -> CacheView:
        """:meth:`CacheView.contiguous` striped: a throw-away cache for one causal prefill holding this
        rank's blocks of each sequence only."""
        entries = max(-(-tokens // BLOCK_SIZE), 1)
        per_seq = max(_stripe_count(self.rank, self.size, entries), 1)
        cache = ContextParallelCache(self, config, batch * per_seq, dtype, device, shared_storage=True)
        table = torch.full((batch, entries), -1, dtype=torch.int32, device=device)
        mine = torch.arange(self.rank, entries, self.size, device=device)
        table[:, mine] = (torch.arange(batch, device=device)[:, None] * per_seq
                          + torch.arange(mine.numel(), device=device)).int()
        positions = torch.arange(tokens, device=device).expand(batch, tokens)
        slots = paged_slots(table, positions)
        return CacheView(cache, positions, slots, slots.int(), table, tuple(range(tokens)))


class ContextParallelCache(PagedKVCache):
    """A :class:`PagedKVCache` holding one cp rank's blocks, whose top-k and attention reads combine
    the whole group's (module docstring). Writes need nothing: slot −1 (a peer's position) is skipped."""

    slots_are_prefix = False  # the peers' blocks are holes in every sequence's context

    def __init__(self, cp: ContextParallel, config: GLM52Config, num_blocks: int, dtype: torch.dtype,
                 device: torch.device | str, format: str | None = None, shared_storage: bool = False) -> None:
        super().__init__(config, num_blocks, dtype, device, format, shared_storage)
        self.cp = cp

    def index_topk(self, layer: int, q: torch.Tensor, w: torch.Tensor, view: CacheView, k: int) -> torch.Tensor:
        if self.format == "model":
            positions, scores = self.streaming_index_topk(layer, q, w, view, k)
        else:
            positions = super().index_topk(layer, q, w, view, k)
            scores = self._fp8_scores(layer, q, w, view, positions)
        b, t, _ = positions.shape
        # One all-gather per indexer layer: the int32 positions travel as the bits of fp32 columns.
        packed = torch.cat((scores.float(), positions.int().view(torch.float32)), dim=-1)
        rows = self.cp.gather(packed).permute(1, 2, 0, 3).reshape(b * t, self.cp.size, 2 * k)
        candidates = rows[..., k:].contiguous().view(torch.int32)
        return merge_topk_candidates(candidates, rows[..., :k], k).view(b, t, k)

    def _fp8_scores(self, layer: int, q: torch.Tensor, w: torch.Tensor, view: CacheView,
                    positions: torch.Tensor) -> torch.Tensor:
        """Indexer scores of the chosen local ``positions [B, T, k]`` (fp32, −inf at −1), recomputed
        from the cached FP8 keys with the fused op's recipe (the op returns positions only). fp32 sums
        in PyTorch's order: a candidate within rounding of the k-th score of another rank may be
        ranked differently than by one process's fused op."""
        q8, w = fp8_index_query(q, w, self.index_hadamard)
        codes_end = BLOCK_SIZE * (INDEX_TOKEN_BYTES - 4)
        cache = self.index_keys[layer]
        codes = cache[:, :codes_end].reshape(-1, INDEX_TOKEN_BYTES - 4).view(torch.float8_e4m3fn)
        scales = cache[:, codes_end:].contiguous().view(torch.float32).reshape(-1)
        slots = view.context_slots.gather(1, positions.clamp_min(0).flatten(1).long()).view_as(positions)
        slots = torch.where(positions >= 0, slots.long(), -1)
        out = torch.empty(positions.shape, dtype=torch.float32, device=positions.device)
        for r0 in range(0, positions.shape[1], SCORE_QUERY_TILE):
            rows = slice(r0, r0 + SCORE_QUERY_TILE)
            s = slots[:, rows].clamp_min(0)
            dots = torch.einsum("bthd,btkd->bthk", q8[:, rows].float(), codes[s].float()).relu()
            out[:, rows] = torch.einsum("bth,bthk->btk", w[:, rows], dots) * scales[s]
        return out.masked_fill(slots < 0, float("-inf"))

    def attend(self, layer: int, query: torch.Tensor, slots: torch.Tensor, sm_scale: float,
               plan=None) -> torch.Tensor:
        # ``plan`` (split-KV) is not used: the group's gathered heads attend unsplit (untested with a plan).
        b, t, h, d = query.shape
        cp = self.cp.size
        group_query = self.cp.gather(query).permute(1, 2, 0, 3, 4).reshape(b, t, cp * h, d)
        out, lse = self.attend_with_lse(layer, group_query, slots, sm_scale)
        # Partials in fp32 with their lse as one more column: one all-to-all, peer j's heads to peer j.
        partial = torch.cat((out.float(), lse.unsqueeze(-1)), dim=-1).view(b, t, cp, h, -1).permute(2, 0, 1, 3, 4)
        mine = self.cp.exchange(partial)  # [cp, B, T, h, kv_lora + 1]: my heads over each peer's keys
        merged, _ = merge_attention_partials(mine[..., :-1], mine[..., -1])
        return merged.to(query.dtype)
