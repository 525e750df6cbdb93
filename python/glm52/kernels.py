"""The one place the model reaches into ``glm52_ext``: every op the layers call comes from here.

``quant_fp8_per_token_group`` and ``dequant_fp8_block`` are the extension's ops (CPU and CUDA kernels). ``moe_route``,
``topk_indices`` and ``sparse_mla_prefill`` follow the ``torch.ops.glm52`` contracts of DESIGN §3
in plain PyTorch until those ops land in ``glm52_ext.ops``; then they become imports here and no
layer changes.
"""

from __future__ import annotations

import torch

from glm52_ext.ops import dequant_fp8_block, quant_fp8_per_token_group

__all__ = [
    "dequant_fp8_block", "moe_route", "quant_fp8_per_token_group", "sampling_probs", "sparse_mla_prefill",
    "spec_verify_greedy", "spec_verify_sampling", "topk_indices",
]


def moe_route(
    logits: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    scaling: float,
    renormalize: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigmoid routing with group-limited top-k (DESIGN §2.1) -> (weights fp32 [T, k], ids int32 [T, k]).

    ``bias`` (the correction bias) only steers selection; weights come from the unbiased scores.
    Ties go to the lower expert (or group) id.
    """
    t, e = logits.shape
    scores = logits.float().sigmoid()
    choice = scores + bias.float()
    if n_group > 1:
        grouped = choice.view(t, n_group, e // n_group)
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
        keep = _top(group_scores, topk_group)
        group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
        choice = choice.masked_fill(~group_mask.repeat_interleave(e // n_group, dim=1), float("-inf"))
    ids = _top(choice, top_k)
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * scaling, ids.to(torch.int32)


def _top(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries per row, ties to the lower index (a stable sort)."""
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[:, :k]


def topk_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` largest finite entries of each row of ``logits [..., L]`` as int32, −1 padded."""
    k = min(k, logits.shape[-1])
    values, idx = logits.topk(k, dim=-1)
    return torch.where(torch.isfinite(values), idx, -1).to(torch.int32)


def sparse_mla_prefill(
    q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float, d_v: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent attention over selected keys: ``q [S, H, D]``, ``kv [L, D]``, ``indices [S, k]`` (−1 ignored).

    The value of key ``t`` is ``kv[t, :d_v]`` (the ``c_kv`` part of ``[c_kv | k_pe]``). Returns
    ``(out [S, H, d_v], lse [S, H])`` in fp32 accumulation, ``out`` in ``q``'s dtype.
    """
    valid = indices >= 0
    keys = kv[indices.clamp_min(0).long()].float()  # [S, k, D]
    scores = torch.einsum("shd,skd->shk", q.float(), keys) * sm_scale
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.einsum("shk,skc->shc", torch.exp(scores - lse[..., None]), keys[..., :d_v])
    return out.to(q.dtype), lse


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Sampling distribution ``[R, V]`` fp32 from ``logits [R, V]``: temperature, then top-k (0: off)
    and top-p (nucleus) filtering, renormalized. ``temperature == 0`` is greedy: one-hot argmax."""
    logits = logits.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if top_k > 0:
        keep[:, top_k:] = False
    if top_p < 1.0:
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass strictly before each entry
        keep &= before < top_p
    sorted_probs = sorted_probs * keep
    filtered = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return filtered / filtered.sum(-1, keepdim=True)


def spec_verify_greedy(draft: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy verification: ``draft [B, n]``, ``target_logits [B, n+1, V]`` -> (tokens ``[B, n+1]``
    int32, −1 after the last emitted; ``num_emitted [B]`` int32). Accept d_j while it equals the
    target's argmax a_{j-1}; emit a at the first mismatch, or the bonus a_n."""
    b, n = draft.shape
    target = target_logits.argmax(-1)  # [B, n+1]
    match = (draft.long() == target[:, :n]).int()
    accepted = match.cumprod(-1).sum(-1)  # leading matches
    emitted = accepted + 1
    keep = torch.arange(n + 1, device=draft.device)[None, :] < emitted[:, None]
    return torch.where(keep, target, -1).int(), emitted.int()


def spec_verify_sampling(draft: torch.Tensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
                         seed: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Speculative sampling, exact in distribution: accept d_j with probability
    ``min(1, p_j(d_j) / q_j(d_j))``, on rejection sample ``normalize(max(p_j - q_j, 0))``; the bonus
    comes from ``p_n``. ``draft_probs=None``: a deterministic draft (q one-hot). Randomness from
    ``(seed, offset)``: same arguments, same result."""
    b, n = draft.shape
    v = target_probs.shape[-1]
    gen = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + offset)
    uniforms = torch.rand(b, n, generator=gen)
    q = draft_probs if draft_probs is not None else torch.nn.functional.one_hot(draft.long(), v).float()
    tokens = torch.full((b, n + 1), -1, dtype=torch.int32)
    emitted = torch.empty(b, dtype=torch.int32)
    p_all, q_all = target_probs.float().cpu(), q.float().cpu()
    for row in range(b):
        j = 0
        while j < n:
            d = int(draft[row, j])
            p, qd = p_all[row, j, d], q_all[row, j, d]
            if uniforms[row, j] * qd <= p:  # accept with min(1, p/q)
                tokens[row, j] = d
                j += 1
                continue
            break
        if j < n:
            residual = (p_all[row, j] - q_all[row, j]).clamp_min(0)
            dist = residual if residual.sum() > 0 else p_all[row, j]
        else:
            dist = p_all[row, n]
        tokens[row, j] = int(torch.multinomial(dist / dist.sum(), 1, generator=gen))
        emitted[row] = j + 1
    return tokens.to(draft.device), emitted.to(draft.device)
