"""Oracles of the attention ops: paged caches, indexer logits, top-k, sparse MLA (DESIGN §2.1, §3).

Cache byte layouts (see :func:`glm52_ext.ops.mla_cache_write`): MLA rows of 1152 B (BF16
``[c_kv | k_pe]``) or 656 B (512 e4m3 + 4 fp32 scales + 64 BF16 rope dims) in
``[num_blocks, 64, bytes]`` uint8; indexer blocks of ``64 * 132`` B (codes ``[64, 128]`` e4m3 then
64 fp32 scales). A slot is ``block * 64 + offset``; −1 (or any slot outside the cache) is none.
"""

from __future__ import annotations

import math

import torch

from .quant import quant_fp8_per_token_group

BLOCK_TOKENS = 64
LATENT_DIM, VALUE_DIM, ROPE_DIM = 576, 512, 64
MLA_BF16_TOKEN_BYTES = 2 * LATENT_DIM  # 1152
MLA_FP8_TOKEN_BYTES = VALUE_DIM + 4 * 4 + 2 * ROPE_DIM  # 656
INDEX_DIM = 128
INDEX_BLOCK_BYTES = BLOCK_TOKENS * (INDEX_DIM + 4)  # 8448

__all__ = [
    "BLOCK_TOKENS",
    "INDEX_BLOCK_BYTES",
    "MLA_BF16_TOKEN_BYTES",
    "MLA_FP8_TOKEN_BYTES",
    "hadamard_matrix",
    "hadamard_rotate",
    "indexer_cache_read",
    "indexer_cache_write",
    "indexer_logits",
    "indexer_logits_paged",
    "indexer_topk",
    "indexer_topk_paged",
    "mla_cache_read",
    "mla_cache_write",
    "positions_to_slots",
    "sparse_mla_decode",
    "sparse_mla_decode_metadata",
    "sparse_mla_prefill",
    "topk_indices",
]


def _valid_slots(slots: torch.Tensor, capacity: int) -> torch.Tensor:
    return (slots >= 0) & (slots < capacity)


def _bytes(t: torch.Tensor) -> torch.Tensor:
    width = math.prod(t.shape[1:]) * t.element_size()
    if t.numel() == 0:
        return torch.empty(t.shape[0], width, dtype=torch.uint8)
    return t.contiguous().view(torch.uint8).reshape(t.shape[0], width)


def rope_rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs of ``x [T, 2P]`` turned by ``rope [T, P, 2]`` (cos, sin) in fp32, each
    product rounded before the sum, and rounded to ``x``'s dtype."""
    x0, x1 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = rope.unbind(-1)
    return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2).to(x.dtype)


def hadamard_matrix(n: int = INDEX_DIM) -> torch.Tensor:
    """The normalized ``[n, n]`` Sylvester Hadamard matrix in fp64 (orthogonal and symmetric): the
    definition :func:`hadamard_rotate` computes, ``hadamard_rotate(x) ≈ x @ hadamard_matrix(n)``."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"the Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h * n**-0.5


def hadamard_rotate(x: torch.Tensor) -> torch.Tensor:
    """``x [..., n]`` (n 32, 64 or 128) times the normalized Hadamard matrix over the last dim, as
    fp32: the kernels' butterfly stages ``(a, b) -> (a + b, a - b)`` of strides 1 to n/2 in fp32,
    then one multiply by ``n^-0.5`` rounded to fp32 (so the bits equal the ops')."""
    n = x.shape[-1]
    y = x.float().reshape(-1, n)
    h = 1
    while h < n:
        pairs = y.view(-1, n // (2 * h), 2, h)
        a, b = pairs[:, :, 0], pairs[:, :, 1]
        y = torch.stack((a + b, a - b), dim=2).view(-1, n)
        h *= 2
    return (y * n**-0.5).view(x.shape)


def mla_cache_write(kv: torch.Tensor, slots: torch.Tensor, cache: torch.Tensor,
                    rope: torch.Tensor | None = None) -> torch.Tensor:
    """A copy of ``cache`` with ``kv[t]`` ``[576]`` bf16 written at ``slots[t]`` (BF16 or FP8 format),
    ``k_pe`` (the last 64 dims) turned by ``rope [T, 32, 2]`` first when given."""
    if rope is not None:
        kv = torch.cat((kv[:, :VALUE_DIM], rope_rotate(kv[:, VALUE_DIM:], rope)), dim=1)
    cache = cache.clone()
    rows = cache.view(-1, cache.shape[-1])
    keep = _valid_slots(slots, rows.shape[0])
    kv, slots = kv[keep], slots[keep].long()
    if cache.shape[-1] == MLA_BF16_TOKEN_BYTES:
        rows[slots] = _bytes(kv)
        return cache
    codes, scale = quant_fp8_per_token_group(kv[:, :VALUE_DIM].float(), 128)
    rows[slots] = torch.cat((_bytes(codes), _bytes(scale), _bytes(kv[:, VALUE_DIM:])), dim=1)
    return cache


def mla_cache_read(cache: torch.Tensor) -> torch.Tensor:
    """Every token row of an MLA cache as fp32 ``[num_blocks * 64, 576]`` (FP8 dequantized)."""
    rows = cache.reshape(-1, cache.shape[-1])
    if cache.shape[-1] == MLA_BF16_TOKEN_BYTES:
        return rows.view(torch.bfloat16).float()
    codes = rows[:, :VALUE_DIM].view(torch.float8_e4m3fn).float()
    scale = rows[:, VALUE_DIM : VALUE_DIM + 16].contiguous().view(torch.float32)
    rope = rows[:, VALUE_DIM + 16 :].contiguous().view(torch.bfloat16).float()
    return torch.cat((codes * scale.repeat_interleave(128, dim=1), rope), dim=1)


def _indexer_views(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of an indexer cache: codes ``[num_blocks, 64, 128]`` and scale bytes ``[num_blocks, 64, 4]``."""
    split = BLOCK_TOKENS * INDEX_DIM
    return cache[:, :split].view(-1, BLOCK_TOKENS, INDEX_DIM), cache[:, split:].view(-1, BLOCK_TOKENS, 4)


def indexer_cache_write(
    k: torch.Tensor, slots: torch.Tensor, cache: torch.Tensor, scale_ue8m0: bool = False,
    rope: torch.Tensor | None = None, hadamard: bool = False,
) -> torch.Tensor:
    """A copy of ``cache`` with ``k[t]`` ``[128]`` quantized (one fp32 scale per token) at ``slots[t]``,
    its first ``2P`` dims turned by ``rope [T, P, 2]`` first when given, then the whole key rotated
    by :func:`hadamard_rotate` when ``hadamard``."""
    if rope is not None:
        r = 2 * rope.shape[1]
        k = torch.cat((rope_rotate(k[:, :r], rope), k[:, r:]), dim=1)
    if hadamard:
        k = hadamard_rotate(k)
    cache = cache.clone()
    codes_view, scale_view = _indexer_views(cache)
    keep = _valid_slots(slots, cache.shape[0] * BLOCK_TOKENS)
    codes, scale = quant_fp8_per_token_group(k[keep].float(), INDEX_DIM, scale_ue8m0)
    s = slots[keep].long()
    codes_view[s // BLOCK_TOKENS, s % BLOCK_TOKENS] = _bytes(codes)
    scale_view[s // BLOCK_TOKENS, s % BLOCK_TOKENS] = _bytes(scale)
    return cache


def indexer_cache_read(cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes ``[num_blocks * 64, 128]`` e4m3, scales ``[num_blocks * 64]`` fp32) of every slot."""
    codes_view, scale_view = _indexer_views(cache)
    return codes_view.reshape(-1, INDEX_DIM).view(torch.float8_e4m3fn), scale_view.contiguous().view(torch.float32).reshape(-1)


def indexer_logits(q8, weights, k8, k_scale, ks, ke) -> torch.Tensor:
    """``I[s, t] = k_scale[t] * Σ_h weights[s, h] * ReLU(q8[s, h] · k8[t])`` for ``ks[s] <= t < ke[s]``,
    −inf elsewhere; ``[S, L]`` fp32 (math in fp64)."""
    dots = torch.einsum("shd,td->sht", q8.double(), k8.double()).relu()
    logits = torch.einsum("sh,sht->st", weights.double(), dots) * k_scale.double()
    t = torch.arange(k8.shape[0])
    visible = (t >= ks.long().unsqueeze(1)) & (t < ke.long().unsqueeze(1))
    return logits.masked_fill(~visible, -math.inf).float()


def positions_to_slots(block_table: torch.Tensor, positions: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Slots of sequence ``positions [B, ...]`` through ``block_table [B, max_blocks]``; −1 where a position
    is negative, beyond the table, or its block id is outside ``[0, num_blocks)``."""
    b, width = block_table.shape
    pos = positions.reshape(b, -1).long()
    ok = (pos >= 0) & (pos < width * BLOCK_TOKENS)
    block = block_table.long().gather(1, torch.where(ok, pos // BLOCK_TOKENS, 0)) if width else torch.zeros_like(pos)
    ok &= (block >= 0) & (block < num_blocks)
    return torch.where(ok, block * BLOCK_TOKENS + pos % BLOCK_TOKENS, -1).reshape(positions.shape)


def indexer_logits_paged(q8, weights, cache, block_table, lengths, max_len: int) -> torch.Tensor:
    """Decode form: query ``(b, j)`` scores positions ``t < lengths[b, j]`` of sequence b through its
    block table; ``[B, n, max_len]`` fp32, −inf beyond each row's length or at unmapped positions."""
    b, n, h, _ = q8.shape
    codes, scale = indexer_cache_read(cache)
    pos = torch.arange(max_len).expand(b, max_len)
    slots = positions_to_slots(block_table, pos, cache.shape[0])  # [B, max_len]
    k = codes[slots.clamp_min(0)].double()  # [B, max_len, 128]
    dots = torch.einsum("bnhd,btd->bnht", q8.double(), k).relu()
    logits = torch.einsum("bnh,bnht->bnt", weights.double(), dots) * scale[slots.clamp_min(0)].double().unsqueeze(1)
    visible = (torch.arange(max_len) < lengths.long().unsqueeze(-1)) & (slots >= 0).unsqueeze(1)
    return logits.masked_fill(~visible, -math.inf).float()


def topk_indices(
    logits: torch.Tensor, k: int, lengths: torch.Tensor | None = None, row_starts: torch.Tensor | None = None
) -> torch.Tensor:
    """Columns of the ``k`` largest finite entries of each row of ``logits [R, L]`` among its columns
    ``[start, start + lengths[r])`` with ``start = row_starts[r]`` (0 when None; all remaining columns
    when ``lengths`` is None; both clamped into the row), relative to ``start``, ties to the lower
    column, listed in increasing column order and −1 padded: int32 ``[R, k]``."""
    r, cols = logits.shape
    out = torch.full((r, k), -1, dtype=torch.int32)
    for i in range(r):
        start = 0 if row_starts is None else max(0, min(int(row_starts[i]), cols))
        n = cols - start if lengths is None else max(0, min(int(lengths[i]), cols - start))
        row = logits[i, start : start + n]
        finite = torch.isfinite(row)
        # A stable descending sort keeps equal values in column order: ties go to the lower column.
        order = torch.sort(row.masked_fill(~finite, -math.inf), descending=True, stable=True).indices
        chosen = order[: min(k, int(finite.sum()))]
        out[i, : chosen.numel()] = chosen.sort().values.to(torch.int32)
    return out


def indexer_topk(q8, weights, k8, k_scale, ks, ke, k: int) -> torch.Tensor:
    """``topk_indices(indexer_logits(q8, weights, k8, k_scale, ks, ke), k)``: int32 ``[S, k]``."""
    return topk_indices(indexer_logits(q8, weights, k8, k_scale, ks, ke), k)


def indexer_topk_paged(q8, weights, cache, block_table, lengths, k: int) -> torch.Tensor:
    """Top-``k`` positions of :func:`indexer_logits_paged` over the whole block table: int32 ``[B, n, k]``."""
    b, n = lengths.shape
    logits = indexer_logits_paged(q8, weights, cache, block_table, lengths, block_table.shape[1] * BLOCK_TOKENS)
    return topk_indices(logits.reshape(b * n, -1), k).reshape(b, n, k)


def _sparse_mla(q: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor, sm_scale: float):
    """q ``[R, H, 576]``, keys fp32 ``[N, 576]``, indices ``[R, k]``: fp64 softmax attention."""
    valid = (indices >= 0) & (indices < keys.shape[0])
    keys = torch.cat((keys.double(), keys.new_zeros(1, LATENT_DIM, dtype=torch.float64)))  # row N: invalid ones
    k = keys[torch.where(valid, indices.long(), keys.shape[0] - 1)]  # [R, k, 576]
    scores = torch.einsum("rhd,rkd->rhk", q.double(), k) * sm_scale
    scores = scores.masked_fill(~valid.unsqueeze(1), -math.inf)
    m = scores.amax(dim=-1, keepdim=True).clamp_min(-1e300) if scores.shape[-1] else scores.new_zeros(*scores.shape[:2], 1)
    e = torch.exp(scores - m)
    total = e.sum(dim=-1)
    lse = torch.log(total) + m.squeeze(-1)  # -inf where no key is valid
    out = torch.einsum("rhk,rkc->rhc", e, k[..., :VALUE_DIM]) / total.clamp_min(1e-300).unsqueeze(-1)
    return out.to(torch.bfloat16), lse.float()


def sparse_mla_prefill(q, kv, indices, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``out[s, h] = Σ_t softmax_t(q[s, h] · kv[t] * sm_scale) kv[t, :512]`` over the valid
    ``t = indices[s, j]`` (in ``[0, L)``); ``lse[s, h] = log Σ_t exp(q[s, h] · kv[t] * sm_scale)``;
    a row with no valid index gives zeros and −inf. Out bf16 ``[S, H, 512]``, lse fp32 ``[S, H]``."""
    return _sparse_mla(q, kv.float(), indices, sm_scale)


SPLIT_BLOCK, SPLIT_OVERHEAD_BLOCKS, SPLIT_META_INTS, SPLIT_MAX_ROW_TOPK = 64, 5, 8, 1 << 20


def sparse_mla_decode_metadata(row_topk: torch.Tensor, num_sm_parts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The split-KV plan, unit by unit: row b costs ``ceil(row_topk[b] / 64)`` block units (row_topk
    clamped to ``[0, 2^20]``) plus 5
    overhead units; the rows' units lie end to end and are cut into ``num_sm_parts`` spans of
    ``ceil(total / num_sm_parts)``. Part p's row is ``[begin_row, begin_block, end_row, end_block,
    begin_split, 0, 0, 0]`` (empty part: ``[B, 0, B, 0, 0, ...]``); a part start strictly inside a
    row adds a piece to it. Returns int32 ``[num_sm_parts, 8]`` and ``[B + 1]`` (prefix sums of the
    pieces)."""
    blocks = [-(-min(max(int(t), 0), SPLIT_MAX_ROW_TOPK) // SPLIT_BLOCK) for t in row_topk.tolist()]
    rows = len(blocks)
    units = [(r, min(u, n)) for r, n in enumerate(blocks) for u in range(n + SPLIT_OVERHEAD_BLOCKS)]
    span = -(-len(units) // num_sm_parts) if units else 0
    row_first_unit: dict[int, int] = {}
    for i, (r, _) in enumerate(units):
        row_first_unit.setdefault(r, i)
    starts = [p * span for p in range(num_sm_parts)]
    meta, pieces = [], [1] * rows
    for p, begin in enumerate(starts):
        if begin >= len(units):
            meta.append([rows, 0, rows, 0, 0, 0, 0, 0])
            continue
        end = min(begin + span, len(units))
        (br, bb), (er, eb) = units[begin], units[end - 1]
        if begin > row_first_unit[br]:
            pieces[br] += 1
        split = sum(1 for s in starts[: p + 1] if row_first_unit[br] < s < len(units) and units[s][0] == br)
        meta.append([br, bb, er, min(eb + 1, blocks[er]), split, 0, 0, 0])
    num_splits = [0]
    for n in pieces:
        num_splits.append(num_splits[-1] + n)
    return torch.tensor(meta, dtype=torch.int32).view(num_sm_parts, SPLIT_META_INTS), \
        torch.tensor(num_splits, dtype=torch.int32)


def sparse_mla_decode(q, cache, indices, sm_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """As :func:`sparse_mla_prefill` with ``q [B, sq, H, 576]`` and ``indices [B, sq, k]`` slots of the
    paged MLA ``cache`` (BF16 or FP8 format, dequantized as stored). A split plan does not change
    the result (the op merges its pieces to the same softmax)."""
    b, sq, h, d = q.shape
    out, lse = _sparse_mla(q.reshape(b * sq, h, d), mla_cache_read(cache), indices.reshape(b * sq, -1), sm_scale)
    return out.reshape(b, sq, h, VALUE_DIM), lse.reshape(b, sq, h)
