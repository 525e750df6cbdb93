"""The one place the model reaches into ``glm52_ext``: every op the layers call comes from here.

All are the extension's ops (CPU and CUDA kernels) except ``sparse_mla_prefill_model``, the plain
PyTorch attention for small test models whose latent width is not the kernels' 576.
"""

from __future__ import annotations

import torch

from glm52_ext.ops import (
    add_rms_norm,
    dequant_fp8_block,
    hadamard_rotate,
    indexer_cache_write,
    indexer_topk_paged,
    mla_cache_write,
    sparse_mla_decode,
    sparse_mla_decode_metadata,
    sparse_mla_decode_sm_parts,
    sparse_mla_decode_workspace_bytes,
    topk_indices,
    fp8_gemm,
    fp8_moe_experts,
    fp8_swiglu_mlp,
    moe_permute,
    moe_route,
    moe_unpermute,
    quant_fp8_per_token_group,
    rms_norm,
    sample_probs,
    sampling_probs,
    spec_verify_greedy,
    spec_verify_sampling,
)

__all__ = [
    "add_rms_norm",
    "dequant_fp8_block",
    "fp8_gemm",
    "fp8_moe_experts",
    "fp8_swiglu_mlp",
    "hadamard_rotate",
    "indexer_cache_write",
    "indexer_topk_paged",
    "mla_cache_write",
    "moe_permute",
    "moe_route",
    "moe_unpermute",
    "quant_fp8_per_token_group",
    "rms_norm",
    "sample_probs",
    "sampling_probs",
    "sparse_mla_decode",
    "sparse_mla_decode_metadata",
    "sparse_mla_decode_sm_parts",
    "sparse_mla_decode_workspace_bytes",
    "sparse_mla_prefill_model",
    "spec_verify_greedy",
    "spec_verify_sampling",
    "topk_indices",
]


def sparse_mla_prefill_model(
    q: torch.Tensor, kv: torch.Tensor, indices: torch.Tensor, sm_scale: float, d_v: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Latent attention over selected keys in plain PyTorch, for models outside the attention ops'
    contract (576-wide BF16 latents): ``q [S, H, D]``, ``kv [L, D]``, ``indices [S, k]`` (−1 ignored).

    The value of key ``t`` is ``kv[t, :d_v]`` (the ``c_kv`` part of ``[c_kv | k_pe]``). Returns
    ``(out [S, H, d_v], lse [S, H])`` in fp32 accumulation, ``out`` in ``q``'s dtype; a row with no
    valid index gives zeros and −inf, as the kernels do (a context-parallel rank often holds none
    of a query's keys).
    """
    valid = indices >= 0
    s, k = indices.shape
    keys = kv.index_select(0, indices.clamp_min(0).flatten()).view(s, k, -1).float()  # [S, k, D]
    scores = torch.bmm(q.float(), keys.transpose(1, 2)) * sm_scale  # [S, H, k]
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)
    probs = torch.exp(scores - lse[..., None]).nan_to_num(0.0)  # −inf − −inf: an empty row
    out = torch.bmm(probs, keys[..., :d_v])
    return out.to(q.dtype), lse

