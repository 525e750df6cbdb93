"""The production FP8 path (config.fp8_compute == "fp8"): FP8 block-scaled GEMMs for the linear
layers, the fused FP8 MoE pipeline for routed experts and FP8 SwiGLU for dense/shared MLPs, against
the same checkpoint run with dequantized weights (which matches transformers to 1e-6)."""

from __future__ import annotations

import pytest
import torch
from model_testing import max_rel_err

from glm52 import GLM52Config, GLM52ForCausalLM, kernels
from glm52.checkpoint import init_random_, quantize_checkpoint, save_checkpoint

# Every projection a multiple of 128 except kv_a_proj (192) and the indexer's wk (32), which keep
# the dequantized fallback.
CONFIG = dict(hidden_size=256, intermediate_size=256, moe_intermediate_size=128, q_lora_rank=128, kv_lora_rank=128,
              qk_nope_head_dim=64, qk_rope_head_dim=64, v_head_dim=64, num_attention_heads=4, num_hidden_layers=5,
              n_routed_experts=8, num_experts_per_tok=2, index_head_dim=64)


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    config = GLM52Config.preset("tiny").replace(**CONFIG)
    model = init_random_(GLM52ForCausalLM(config), 0)
    # Random weights make a chaotic model: tiny input changes flip routing and top-k and grow
    # layer by layer. Damping what each layer writes to the residual stream keeps FP8 noise at
    # FP8 size while a wrong kernel (e.g. experts off by 2x) still moves the logits by ~17%.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.mul_(0.1)
    work = tmp_path_factory.mktemp("fp8")
    return quantize_checkpoint(save_checkpoint(model, work / "fp32"), work / "fp8")


def test_fp8_compute_runs_the_fp8_kernels_within_fp8_tolerance(fp8_checkpoint, monkeypatch):
    calls = {name: 0 for name in ("fp8_gemm", "fp8_moe_experts", "fp8_swiglu_mlp")}
    for name in calls:
        def counted(*args, _op=getattr(kernels, name), _name=name, **kwargs):
            calls[_name] += 1
            return _op(*args, **kwargs)
        monkeypatch.setattr(kernels, name, counted)
    exact = GLM52ForCausalLM.from_pretrained(fp8_checkpoint)
    fp8 = GLM52ForCausalLM.from_pretrained(fp8_checkpoint, fp8_compute="fp8")
    ids = torch.randint(0, exact.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = exact(ids)
        assert not any(calls.values())  # the dequantized path never touches the FP8 GEMMs
        got = fp8(ids)
    moe_layers = exact.config.num_hidden_layers - exact.config.first_k_dense_replace
    assert calls["fp8_moe_experts"] == moe_layers
    assert calls["fp8_swiglu_mlp"] == exact.config.first_k_dense_replace + moe_layers  # dense + shared experts
    assert calls["fp8_gemm"] > 0
    # Activations quantized to e4m3 (3 mantissa bits) at every GEMM: measured 6.8% at worst (a
    # routing flip), 1% typical per token.
    assert 1e-4 < max_rel_err(got, want) < 0.1
    per_token = (got - want).abs().amax(-1) / want.abs().amax(-1)
    assert per_token.median() < 0.03


def test_fp8_compute_keeps_one_copy_of_fused_expert_weights(fp8_checkpoint):
    model = GLM52ForCausalLM.from_pretrained(fp8_checkpoint, fp8_compute="fp8")
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    experts = model.model.layers[model.config.first_k_dense_replace].mlp.experts
    w13, _ = experts._gate_up
    assert experts.gate_proj.weight.data_ptr() == w13.data_ptr()
    assert experts.up_proj.weight.data_ptr() == w13[:, experts.gate_proj.out_features:].data_ptr()
