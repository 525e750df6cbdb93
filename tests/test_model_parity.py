"""GLM52ForCausalLM against transformers' GlmMoeDsaForCausalLM on checkpoints saved by transformers."""

from __future__ import annotations

import pytest
import torch
from model_testing import add_tensors, dequantize_checkpoint, hf_model, max_rel_err, mtp_tensors

from glm52 import GLM52ForCausalLM
from glm52.checkpoint import quantize_checkpoint

TOL = 1e-4

CASES = {
    # IndexShare by freq/offset, group-limited routing, an MTP layer in the checkpoint.
    "share-freq-groups": dict(index_topk_freq=2, index_skip_topk_offset=2, n_group=4, topk_group=2,
                              num_nextn_predict_layers=1),
    # GLM-5.2's own schedule (freq 4, offset 3) and an explicit pattern, plain routing.
    "share-glm52": dict(num_hidden_layers=6, first_k_dense_replace=2, index_topk_freq=4, index_skip_topk_offset=3,
                        n_routed_experts=12, num_experts_per_tok=3),
    "share-pattern": dict(index_topk_pattern="FSSFS", index_topk=12, n_group=2, topk_group=1),
}


def _run_parity(tmp_path, seed: int, overrides: dict, tokens: int, extra=None) -> float:
    hf = hf_model(seed, **overrides)
    ckpt = tmp_path / "ckpt"
    hf.save_pretrained(ckpt, max_shard_size="40KB")
    assert len(list(ckpt.glob("*.safetensors"))) > 3
    if overrides.get("num_nextn_predict_layers"):
        add_tensors(ckpt, mtp_tensors(ckpt, seed))
    if extra is not None:
        extra(ckpt)
    ours = GLM52ForCausalLM.from_pretrained(ckpt)
    ids = torch.randint(0, hf.config.vocab_size, (2, tokens), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = hf(ids).logits
        out = ours(ids)
    assert out.shape == ref.shape == (2, tokens, hf.config.vocab_size)
    return max_rel_err(out, ref), ours, ids, ref


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_fp32(tmp_path, case):
    seed = sorted(CASES).index(case) + 11
    err, ours, ids, ref = _run_parity(tmp_path, seed, CASES[case], tokens=40)
    print(f"{case}: max rel err {err:.2e}")
    assert err <= TOL
    # The sparse selection matters: the same weights with dense attention give other logits.
    dense = GLM52ForCausalLM(ours.config.replace(index_topk=ids.shape[1]))
    dense.load_state_dict(ours.state_dict(), assign=True)
    with torch.no_grad():
        assert max_rel_err(dense(ids), ref) > 100 * TOL


def test_parity_glm5_checkpoint_with_indexer_on_every_layer(tmp_path):
    """GLM-5/5.1 store an indexer on every layer; layers the config marks shared ignore theirs."""
    overrides = CASES["share-freq-groups"]
    hf_full = hf_model(5, **{**overrides, "index_topk_freq": 1})

    def add_shared_indexers(ckpt):
        names = [k for k, _ in hf_full.named_parameters() if ".indexer." in k]
        shared = [k for k in names if ".layers.2." in k or ".layers.4." in k]
        assert shared
        add_tensors(ckpt, {k: torch.randn(hf_full.get_parameter(k).shape) for k in shared}, "model-idx.safetensors")

    err, *_ = _run_parity(tmp_path, 5, overrides, tokens=36, extra=add_shared_indexers)
    assert err <= TOL


def test_parity_fp8_checkpoint(tmp_path):
    """Our quantizer writes an FP8 checkpoint (partial 128x128 edge blocks); loaded FP8 or dequantized,
    the model matches transformers run on the dequantized weights."""
    overrides = dict(hidden_size=192, intermediate_size=320, moe_intermediate_size=160, q_lora_rank=144,
                     kv_lora_rank=160, num_attention_heads=2, num_key_value_heads=2, num_hidden_layers=4,
                     index_topk_freq=2, index_skip_topk_offset=2, n_group=2, topk_group=1)
    hf = hf_model(21, **overrides)
    src, fp8, deq = tmp_path / "src", tmp_path / "fp8", tmp_path / "deq"
    hf.save_pretrained(src, max_shard_size="200KB")
    quantize_checkpoint(src, fp8, max_shard_bytes=300_000)
    dequantize_checkpoint(fp8, deq)
    peer = type(hf).from_pretrained(deq, dtype=torch.float32).eval()
    peer.config._attn_implementation = "eager"

    kept = GLM52ForCausalLM.from_pretrained(fp8)
    attn = kept.model.layers[1].self_attn
    assert attn.q_a_proj.weight.dtype == torch.float8_e4m3fn
    assert attn.q_a_proj.weight.shape == (144, 192) and attn.q_a_proj.weight_scale_inv.shape == (2, 2)
    assert kept.model.layers[1].mlp.experts.down_proj.weight_scale_inv.shape == (8, 2, 2)
    assert kept.lm_head.weight.dtype == torch.float32 and kept.model.layers[1].mlp.gate.weight.dtype == torch.float32
    dequantized = GLM52ForCausalLM.from_pretrained(fp8, dtype=torch.float32)
    assert dequantized.model.layers[1].self_attn.q_a_proj.weight_scale_inv is None

    ids = torch.randint(0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = peer(ids).logits
        errs = {name: max_rel_err(m(ids), ref) for name, m in (("fp8", kept), ("dequantized", dequantized))}
        quant_effect = max_rel_err(ref, hf(ids).logits)
    print(f"fp8 parity: {errs}; quantization changed the peer's logits by {quant_effect:.2e}")
    assert max(errs.values()) <= TOL
    assert quant_effect > 100 * TOL  # the FP8 weights really differ from the originals
