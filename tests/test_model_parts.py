"""Routing, the FP8 indexer and the FP8 block quantizer against their peers and restatements."""

from __future__ import annotations

import pytest
import torch
import transformers
from model_testing import max_rel_err
from transformers.models.glm_moe_dsa import modeling_glm_moe_dsa as hf_mod

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52.attention import Indexer
from glm52.checkpoint import init_random_, quantize_fp8_block
from glm52.kernels import moe_route
from glm52.kv_cache import CacheView, indexer_scores_fp8
from glm52.layers import rope_cos_sin, rope_turn
from glm52_ext.reference import dequant_fp8_block, hadamard_rotate, quant_fp8_per_token_group


def test_moe_route_matches_transformers_router():
    g = torch.Generator().manual_seed(0)
    for n_group, topk_group, top_k in ((1, 1, 4), (4, 2, 3), (8, 3, 6)):
        cfg = transformers.GlmMoeDsaConfig(n_routed_experts=32, num_experts_per_tok=top_k, n_group=n_group,
                                           topk_group=topk_group, hidden_size=16, routed_scaling_factor=2.5)
        router = hf_mod.GlmMoeDsaTopkRouter(cfg)
        with torch.no_grad():
            router.weight.copy_(torch.randn(32, 16, generator=g))
            router.e_score_correction_bias.copy_(0.5 * torch.randn(32, generator=g))
        x = torch.randn(50, 16, generator=g)
        logits, ref_w, ref_ids = router(x)
        w, ids = moe_route(logits, router.e_score_correction_bias, top_k, n_group, topk_group, 2.5, True)
        assert ids.dtype == torch.int32 and w.dtype == torch.float32 and w.shape == (50, top_k)
        ref_sorted, order = ref_ids.sort(dim=-1)
        ours_sorted, our_order = ids.long().sort(dim=-1)
        assert torch.equal(ours_sorted, ref_sorted)
        assert torch.allclose(w.gather(1, our_order), ref_w.gather(1, order), rtol=1e-6, atol=0)


def test_moe_route_ties_go_to_lower_ids():
    logits = torch.zeros(3, 16)  # every expert ties
    bias = torch.zeros(16)
    _, ids = moe_route(logits, bias, 4, 4, 2, 1.0, True)
    assert ids.tolist() == [[0, 1, 2, 3]] * 3  # groups 0 and 1 kept (lower ids), then the lowest experts


def _indexer_inputs(seed: int):
    config = GLM52Config.preset("tiny").replace(index_head_dim=128, qk_rope_head_dim=64, index_n_heads=8)
    indexer = Indexer(config)
    model = torch.nn.Module()
    model.indexer = indexer
    init_random_(model, seed)
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(2, 30, config.hidden_size, generator=g)
    cq = torch.randn(2, 30, config.q_lora_rank, generator=g)
    cos, sin = rope_cos_sin(torch.arange(30), config.qk_rope_head_dim, config.rope_theta)
    return config, indexer, n, cq, cos, sin


@pytest.mark.parametrize("hadamard", [False, True])
def test_fp8_indexer_is_the_exact_formula_on_quantized_q_and_k(hadamard):
    """The FP8 scores are the exact formula on the dequantized (rotated, when ``hadamard``) q and k;
    the rotation being orthogonal, they stay close to the exact scores of the unrotated ones."""
    config, indexer, *_ = _indexer_inputs(0)
    g = torch.Generator().manual_seed(1)
    b, t, h, d = 2, 30, config.index_n_heads, config.index_head_dim
    q, k, w = torch.randn(b, t, h, d, generator=g), torch.randn(b, t, d, generator=g), torch.randn(b, t, h, generator=g)
    rotate = hadamard_rotate if hadamard else torch.Tensor.float
    q8, sq = quant_fp8_per_token_group(rotate(q).reshape(-1, d), d, scale_ue8m0=True)
    k8, sk = quant_fp8_per_token_group(rotate(k).reshape(-1, d), d)
    fp8 = indexer_scores_fp8(q, w, k8.view(b, t, d), sk.view(b, t), hadamard)
    assert torch.equal(sq, torch.exp2(torch.log2(sq).round()))  # power-of-two q scales
    qd = (q8.float() * sq).view(b, t, h, d)
    kd = (k8.float() * sk).view(b, t, d)
    restated = torch.einsum("bsh,bsht->bst", w, (torch.einsum("bshd,btd->bsht", qd, kd) * d**-0.5).relu())
    assert max_rel_err(fp8, restated) < 1e-5
    exact = torch.einsum("bsh,bsht->bst", w, (torch.einsum("bshd,btd->bsht", q, k) * d**-0.5).relu())
    assert 1e-4 < max_rel_err(fp8, exact) < 0.1


def _select(indexer, n, cq, cos, sin):
    """Run the indexer of layer 0 over a fresh cache holding these tokens' keys."""
    b, t, _ = n.shape
    view = CacheView.contiguous(indexer.config, b, t, torch.float32, "cpu")
    width = indexer.config.kv_lora_rank + indexer.config.qk_rope_head_dim
    view.cache.write(0, view.slots, torch.zeros(b, t, width), indexer.key(n), rope_turn(cos, sin))
    return indexer(n, cq, cos, sin, view, 0)


@pytest.mark.parametrize("hadamard", [True, False])
def test_fp8_indexer_selects_nearly_the_same_tokens(hadamard):
    """With and without the Hadamard rotation (a rotation of only one side would select at random)."""
    config, indexer, n, cq, cos, sin = _indexer_inputs(2)
    exact = _select(indexer, n, cq, cos, sin)
    indexer.config = config.replace(indexer_precision="fp8", indexer_hadamard=hadamard)
    fp8 = _select(indexer, n, cq, cos, sin)
    k = config.index_topk
    assert exact.shape == fp8.shape == (2, 30, k)
    assert ((exact[:, :k - 1] == -1) == (fp8[:, :k - 1] == -1)).all()  # the causal padding is identical
    rows = exact[:, k:].flatten(0, 1)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(rows, fp8[:, k:].flatten(0, 1))]
    assert sum(overlap) / len(overlap) > 0.8


def test_model_runs_with_the_fp8_indexer():
    config = GLM52Config.preset("tiny")
    exact = init_random_(GLM52ForCausalLM(config), 3)
    fp8 = GLM52ForCausalLM(config.replace(indexer_precision="fp8"))
    fp8.load_state_dict(exact.state_dict(), assign=True)
    ids = torch.randint(0, config.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = exact(ids), fp8(ids)
    # Identical while every causal token is selected (the scores' precision cannot matter yet).
    t = config.index_topk
    assert max_rel_err(b[:, :t], a[:, :t]) < 1e-5
    assert torch.isfinite(b).all()


def test_fp8_block_quantizer():
    g = torch.Generator().manual_seed(0)
    for shape in ((300, 200), (128, 128), (5, 129)):
        w = torch.randn(shape, generator=g) * torch.rand(shape[0], 1, generator=g)
        q, scale = quantize_fp8_block(w)
        assert q.dtype == torch.float8_e4m3fn and scale.dtype == torch.float32
        assert scale.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
        back = dequant_fp8_block(q, scale, out_dtype=torch.float32)
        block_amax = scale.repeat_interleave(128, 0)[: shape[0]].repeat_interleave(128, 1)[:, : shape[1]] * 448
        assert ((back - w).abs() <= block_amax / 16 + 1e-12).all()  # e4m3: 3 mantissa bits
        assert ((back - w).abs() <= w.abs() / 15 + block_amax * 2**-9).all()
        # Each block's largest magnitude maps to 448: the scale is amax / 448.
        padded = torch.nn.functional.pad(q.float().abs(), (0, -shape[1] % 128, 0, -shape[0] % 128))
        assert torch.equal(padded.view(scale.shape[0], 128, scale.shape[1], 128).amax(dim=(1, 3)),
                           torch.full_like(scale, 448.0))
