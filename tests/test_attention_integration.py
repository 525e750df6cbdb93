"""How the model's attention runs through the attention ops (the integration recipe, executed):
one GLM-5.2 MLA layer with an FP8 indexer computed by glm52.attention (plain PyTorch), then the
same layer through indexer_cache_write / indexer_logits / topk_indices / mla_cache_write /
sparse_mla_prefill, and a decode step through the paged caches and sparse_mla_decode.

The ops fix GLM-5.2's widths (latent 512 + rope 64, indexer head 128), so the layer uses the
"tiny" preset with those three dims restored."""

from __future__ import annotations

import pytest
import torch

from glm52.attention import MLAttention
from glm52.config import GLM52Config
from glm52.kv_cache import PagedKVCache
from glm52.layers import apply_rope, rope_cos_sin
from glm52_ext import ops

T, TOPK = 80, 16


def make_layer(seed: int = 0) -> tuple[MLAttention, GLM52Config]:
    config = GLM52Config.preset("tiny", kv_lora_rank=512, qk_rope_head_dim=64, index_head_dim=128,
                                index_topk=TOPK, indexer_precision="fp8")
    layer = MLAttention(config, has_indexer=True)
    g = torch.Generator().manual_seed(seed)
    for name, p in layer.named_parameters():
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(torch.randn(p.shape, generator=g) * p.shape[-1] ** -0.5)
    return layer, config


def attention_through_ops(layer: MLAttention, n: torch.Tensor, cos, sin, cache: PagedKVCache, seq: int):
    """The prefill recipe for one sequence (B = 1): returns (output, top-k positions)."""
    c, h, idx = layer.config, layer.num_heads, layer.indexer
    t = n.shape[1]
    slots = cache.append(seq, t)
    # projections (model code, unchanged)
    cq = layer.q_a_layernorm(layer.q_a_proj(n))
    q_nope, q_pe = layer.q_b_proj(cq).view(1, t, h, c.qk_head_dim).split((c.qk_nope_head_dim, c.qk_rope_head_dim), -1)
    c_kv, k_pe = layer.kv_a_proj_with_mqa(n).split((c.kv_lora_rank, c.qk_rope_head_dim), dim=-1)
    c_kv = layer.kv_a_layernorm(c_kv)
    q_pe, k_pe = apply_rope(q_pe, cos, sin), apply_rope(k_pe, cos, sin)
    # full layer: indexer keys into the indexer cache, FP8 logits over the causal range, top-k
    r = c.qk_rope_head_dim
    qi = idx.wq_b(cq).view(1, t, idx.n_heads, idx.head_dim)
    qi = torch.cat((apply_rope(qi[..., :r], cos, sin), qi[..., r:]), dim=-1)
    ki = idx.k_norm(idx.wk(n))
    ki = torch.cat((apply_rope(ki[..., :r], cos, sin), ki[..., r:]), dim=-1)
    ops.indexer_cache_write(ki[0], slots, cache.indexer[0])
    q8, q_scale = ops.quant_fp8_per_token_group(qi.reshape(-1, idx.head_dim), idx.head_dim, scale_ue8m0=True)
    w = idx.weights_proj(n.float())[0] * idx.n_heads**-0.5 * q_scale.view(t, idx.n_heads) * idx.head_dim**-0.5
    k8, k_scale = ops.quant_fp8_per_token_group(ki[0], idx.head_dim)  # = the cached codes (same op)
    ks = torch.zeros(t, dtype=torch.int32)
    ke = torch.arange(1, t + 1, dtype=torch.int32)
    logits = ops.indexer_logits(q8.view(t, idx.n_heads, idx.head_dim), w.contiguous(), k8, k_scale.view(-1), ks, ke)
    topk = ops.topk_indices(logits, c.index_topk)  # positions; shared layers reuse this tensor
    # sparse MLA over the latent rows (also written to the paged MLA cache for decode)
    w_kv = layer.kv_b_proj.dense_weight(torch.float32).view(h, c.qk_nope_head_dim + c.v_head_dim, c.kv_lora_rank)
    w_uk, w_uv = w_kv.split((c.qk_nope_head_dim, c.v_head_dim), dim=1)
    q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)
    query = torch.cat((q_lat, q_pe), dim=-1)[0].bfloat16().contiguous()
    latent = torch.cat((c_kv, k_pe), dim=-1)[0].bfloat16().contiguous()
    ops.mla_cache_write(latent, slots, cache.mla[0])
    o_lat, _ = ops.sparse_mla_prefill(query, latent, topk, c.qk_head_dim**-0.5)
    o = torch.einsum("shc,hvc->shv", o_lat.float(), w_uv).reshape(1, t, h * c.v_head_dim)
    return layer.o_proj(o), topk


@torch.no_grad()
def test_prefill_and_decode_through_the_ops_match_the_model():
    layer, config = make_layer()
    g = torch.Generator().manual_seed(1)
    n = torch.randn(1, T, config.hidden_size, generator=g)
    cos, sin = rope_cos_sin(torch.arange(T), config.qk_rope_head_dim, config.rope_theta)
    want, want_topk = layer(n, cos, sin, None)

    cache = PagedKVCache(num_blocks=4, num_layers=1, indexer_layers=[0], mla_format="bf16")
    cache.add_sequence(0)
    got, topk = attention_through_ops(layer, n, cos, sin, cache, 0)
    chosen = [set(row[row >= 0].tolist()) for row in topk]
    model = [set(row[row >= 0].tolist()) for row in want_topk[0]]
    assert sum(len(a & b) for a, b in zip(chosen, model)) >= 0.99 * sum(len(b) for b in model)
    scale = want.abs().amax().item()
    rows_same = torch.tensor([a == b for a, b in zip(chosen, model)])
    torch.testing.assert_close(got[0, rows_same], want[0, rows_same], rtol=0.03, atol=0.03 * scale)

    # Decode the last token again from the paged caches: paged logits -> top-k -> slots -> decode.
    idx, last = layer.indexer, T - 1
    table, lengths = cache.block_table([0]), PagedKVCache.query_lengths(cache.lengths([0]), 1)
    r = config.qk_rope_head_dim
    cq = layer.q_a_layernorm(layer.q_a_proj(n[:, last:]))
    qi = idx.wq_b(cq).view(1, 1, idx.n_heads, idx.head_dim)
    qi = torch.cat((apply_rope(qi[..., :r], cos[last:], sin[last:]), qi[..., r:]), dim=-1)
    q8, q_scale = ops.quant_fp8_per_token_group(qi.reshape(-1, idx.head_dim), idx.head_dim, scale_ue8m0=True)
    w = idx.weights_proj(n[:, last:].float()).view(1, 1, -1) * idx.n_heads**-0.5 * q_scale.view(1, 1, -1) * idx.head_dim**-0.5
    logits = ops.indexer_logits_paged(q8.view(1, 1, idx.n_heads, idx.head_dim), w.contiguous(), cache.indexer[0],
                                      table, lengths, max_len=table.shape[1] * 64)
    positions = ops.topk_indices(logits.view(1, -1), config.index_topk)
    assert set(positions[0].tolist()) == set(topk[last].tolist())
    slots = PagedKVCache.positions_to_slots(table, positions.view(1, 1, -1))
    q_nope, q_pe = layer.q_b_proj(cq).view(1, 1, -1, config.qk_head_dim).split(
        (config.qk_nope_head_dim, config.qk_rope_head_dim), -1)
    h = layer.num_heads
    w_kv = layer.kv_b_proj.dense_weight(torch.float32).view(h, config.qk_nope_head_dim + config.v_head_dim, -1)
    w_uk, w_uv = w_kv.split((config.qk_nope_head_dim, config.v_head_dim), dim=1)
    q_lat = torch.einsum("bshd,hdc->bshc", q_nope, w_uk)
    query = torch.cat((q_lat, apply_rope(q_pe, cos[last:], sin[last:])), dim=-1).bfloat16().contiguous()
    o_lat, _ = ops.sparse_mla_decode(query, cache.mla[0], slots, config.qk_head_dim**-0.5)
    o = layer.o_proj(torch.einsum("bshc,hvc->bshv", o_lat.float(), w_uv).reshape(1, 1, -1))
    torch.testing.assert_close(o[0, 0], got[0, last], rtol=1e-2, atol=1e-2 * scale)


@pytest.mark.cuda
@torch.no_grad()
def test_decode_step_is_cuda_graph_capturable():
    """Paged indexer logits -> top-k -> slot lookup -> sparse decode, captured in a CUDA graph and
    replayed on new inputs: no host synchronization anywhere on the path."""
    dev = "cuda"
    g = torch.Generator().manual_seed(3)
    b, n, heads, blocks = 2, 2, 32, 40
    icache = torch.zeros(blocks, 8448, dtype=torch.uint8, device=dev)
    mcache = torch.zeros(blocks, 64, 656, dtype=torch.uint8, device=dev)
    ops.indexer_cache_write(torch.randn(blocks * 64, 128, generator=g).to(dev), torch.arange(blocks * 64, device=dev), icache)
    ops.mla_cache_write(torch.randn(blocks * 64, 576, generator=g).bfloat16().to(dev), torch.arange(blocks * 64, device=dev), mcache)
    table = torch.randperm(blocks, generator=g).int().view(b, -1).to(dev)
    lengths = torch.tensor([[1000, 1001], [1200, 1201]], dtype=torch.int32, device=dev)
    q8 = (torch.randn(b, n, heads, 128, generator=g) * 30).to(torch.float8_e4m3fn).to(dev)
    w = (torch.randn(b, n, heads, generator=g) * 1e-3).to(dev)
    q = torch.randn(b, n, 64, 576, generator=g).bfloat16().to(dev)

    def step():
        logits = ops.indexer_logits_paged(q8, w, icache, table, lengths, 1280)
        positions = ops.topk_indices(logits.view(b * n, -1), 256).view(b, n, -1)
        return ops.sparse_mla_decode(q, mcache, PagedKVCache.positions_to_slots(table, positions), 0.0625)

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        step()  # warm up (function attributes set, allocator primed)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out, lse = step()
    q.copy_(torch.randn(q.shape, generator=g).bfloat16().to(dev))
    graph.replay()
    want_out, want_lse = step()
    torch.testing.assert_close(out, want_out)
    torch.testing.assert_close(lse, want_lse)
