"""Multi-head latent attention with the DSA lightning indexer (DESIGN §2.1).

The attention runs in the absorbed form the sparse kernels use: per head the query becomes
``[W_UKᵀ q_nope | q_pe]`` against the cached ``[c_kv | k_pe]``, and ``W_UV`` expands the latent
output. ``num_heads`` is the number of local heads (a tensor-parallel shard); the indexer is
replicated and always uses all of its heads.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import GLM52Config
from .kv_cache import CacheView
from .layers import LayerNorm, Linear, RMSNorm, apply_rope, rope_turn

LATENT_NORM_EPS = 1e-6  # q_a_layernorm / kv_a_layernorm (transformers and DeepSeek's reference: default eps)
INDEXER_NORM_EPS = 1e-6


class Indexer(nn.Module):
    """Scores every causal key for every query and keeps the ``index_topk`` best (DESIGN §2.1)."""

    def __init__(self, config: GLM52Config) -> None:
        super().__init__()
        self.config = config
        self.n_heads, self.head_dim = config.index_n_heads, config.index_head_dim
        self.wq_b = Linear(config.q_lora_rank, self.n_heads * self.head_dim)
        self.wk = Linear(config.hidden_size, self.head_dim)
        self.k_norm = LayerNorm(self.head_dim, INDEXER_NORM_EPS)
        self.weights_proj = Linear(config.hidden_size, self.n_heads)

    def key(self, n: torch.Tensor) -> torch.Tensor:
        """The key each new token leaves in the indexer cache, before RoPE (the cache write turns
        its first ``qk_rope_head_dim`` dims): ``n [B, T, hidden]`` -> ``[B, T, D]``."""
        return self.k_norm(self.wk(n))

    def forward(self, n: torch.Tensor, cq: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: CacheView,
                layer: int) -> torch.Tensor:
        """Top-k over the cached keys of ``layer`` -> the chosen cache slots ``[B, T, k]`` (−1 padded)."""
        b, t, _ = n.shape
        r = self.config.qk_rope_head_dim
        q = self.wq_b(cq).view(b, t, self.n_heads, self.head_dim)
        q = torch.cat((apply_rope(q[..., :r], cos, sin), q[..., r:]), dim=-1)
        w = self.weights_proj(n.float()) * self.n_heads**-0.5  # fp32 [B, T, H]
        positions = view.cache.index_topk(layer, q, w, view, self.config.index_topk)
        picked = view.context_slots.gather(1, positions.clamp_min(0).flatten(1).long()).view_as(positions)
        return torch.where(positions >= 0, picked, -1)


class MLAttention(nn.Module):
    def __init__(self, config: GLM52Config, layer_idx: int, num_heads: int | None = None) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.num_heads = config.num_attention_heads if num_heads is None else num_heads
        c, h = config, self.num_heads
        self.q_a_proj = Linear(c.hidden_size, c.q_lora_rank)
        self.q_a_layernorm = RMSNorm(c.q_lora_rank, LATENT_NORM_EPS)
        self.q_b_proj = Linear(c.q_lora_rank, h * c.qk_head_dim)
        self.kv_a_proj_with_mqa = Linear(c.hidden_size, c.kv_lora_rank + c.qk_rope_head_dim)
        self.kv_a_layernorm = RMSNorm(c.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = Linear(c.kv_lora_rank, h * (c.qk_nope_head_dim + c.v_head_dim))
        self.o_proj = Linear(h * c.v_head_dim, c.hidden_size)
        self.indexer = Indexer(config) if config.has_indexer(layer_idx) else None

    def forward(
        self, n: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: CacheView, topk: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n [B, T, hidden]`` -> (output ``[B, T, hidden]``, the cache slots ``[B, T, k]`` attended to).

        The new tokens' latents (and indexer keys) go into the cache first; then every query
        attends to its top-k among the cached positions up to its own: ``topk`` when given (a shared
        layer reusing the nearest preceding full layer's choice, or an MTP draft step reusing step
        0's), else the layer's own indexer's.
        """
        c, h = self.config, self.num_heads
        b, t, _ = n.shape
        cq = self.q_a_layernorm(self.q_a_proj(n))
        q = self.q_b_proj(cq).view(b, t, h, c.qk_head_dim)
        q_nope, q_pe = q.split((c.qk_nope_head_dim, c.qk_rope_head_dim), dim=-1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(n).split((c.kv_lora_rank, c.qk_rope_head_dim), dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)
        q_pe = apply_rope(q_pe, cos, sin)
        index_key = self.indexer.key(n) if self.indexer is not None else None
        turn = cos if sin is None else rope_turn(cos, sin)  # k_pe and the key turn inside the cache write
        view.cache.write(self.layer_idx, view.slots, torch.cat((c_kv, k_pe), dim=-1), index_key, turn)

        if topk is None:
            if self.indexer is None:
                raise ValueError(f"layer {self.layer_idx} has no indexer: it needs the top-k of a preceding full layer")
            topk = self.indexer(n, cq, cos, sin, view, self.layer_idx)

        w_kv = self.kv_b_proj.dense_weight(n.dtype).view(h, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
        w_uk, w_uv = w_kv.split((c.qk_nope_head_dim, c.v_head_dim), dim=1)
        q_lat = per_head_matmul(q_nope, w_uk)
        o_lat = view.cache.attend(self.layer_idx, torch.cat((q_lat, q_pe), dim=-1), topk, c.qk_head_dim**-0.5,
                                  view.decode_plan)
        o = per_head_matmul(o_lat, w_uv.transpose(1, 2)).reshape(b, t, h * c.v_head_dim)
        return self.o_proj(o), topk


def per_head_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x [B, T, H, D] @ w [H, D, C]`` per head -> ``[B, T, H, C]``: one batched GEMM over heads
    (what einsum lowers to, without its per-call parsing, which decode steps pay once per layer)."""
    b, t, h, d = x.shape
    return torch.bmm(x.reshape(b * t, h, d).transpose(0, 1), w).transpose(0, 1).reshape(b, t, h, -1)
