"""config.json files as the GLM-5.x releases publish them, and a small replica of the GLM-5.2-FP8
checkpoint layout.

Field lists: zai-org/GLM-5.2-FP8 as replicated by public parity suites (every field, including
``moe_router_dtype``, ``mlp_layer_types``, ``indexer_types``, the misleading ``head_dim: 192`` and
``index_topk_pattern: null``); zai-org/GLM-5 as quoted in vllm-project/vllm#36220 (``head_dim: 64``,
``ep_size``, no IndexShare fields); the FP8 ``quantization_config`` with ``modules_to_not_convert``
naming ``self_attn.indexers_proj`` (a module that exists in no checkpoint); nvidia/GLM-5.2-NVFP4
(transformers 5.11 spellings, ModelOpt NVFP4). Values follow DESIGN §2.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from model_testing import add_tensors, hf_model, mtp_tensors

from glm52 import GLM52ForCausalLM
from glm52.checkpoint import quantize_checkpoint, save_checkpoint


def _indexer_types(n: int, freq: int | None, offset: int | None) -> list[str]:
    if freq is None:
        return ["full"] * n
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(n)]


def glm52_config(fp8: bool = True, **sizes) -> dict:
    """zai-org/GLM-5.2-FP8 (``fp8``) or zai-org/GLM-5.2 config.json; ``sizes`` shrink it."""
    d = {
        "architectures": ["GlmMoeDsaForCausalLM"], "model_type": "glm_moe_dsa", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": 0, "dtype": "bfloat16", "eos_token_id": [154820, 154827, 154829],
        "ep_size": 1, "first_k_dense_replace": 3, "head_dim": 192, "hidden_act": "silu", "hidden_size": 6144,
        "index_head_dim": 128, "index_n_heads": 32, "index_share_for_mtp_iteration": True, "index_skip_topk_offset": 3,
        "index_topk": 2048, "index_topk_freq": 4, "index_topk_pattern": None, "indexer_rope_interleave": True,
        "initializer_range": 0.02, "intermediate_size": 12288, "kv_lora_rank": 512, "max_position_embeddings": 1048576,
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "moe_router_dtype": "float32", "n_group": 1,
        "n_routed_experts": 256, "n_shared_experts": 1, "norm_topk_prob": True, "num_attention_heads": 64,
        "num_experts_per_tok": 8, "num_hidden_layers": 78, "num_key_value_heads": 64, "num_nextn_predict_layers": 1,
        "pad_token_id": 154820, "q_lora_rank": 2048, "qk_head_dim": 256, "qk_nope_head_dim": 192,
        "qk_rope_head_dim": 64, "rms_norm_eps": 1e-05, "rope_interleave": True,
        "rope_parameters": {"rope_theta": 8000000, "rope_type": "default"}, "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid", "tie_word_embeddings": False, "topk_group": 1, "topk_method": "noaux_tc",
        "transformers_version": "5.23.0", "use_cache": True, "v_head_dim": 256, "vocab_size": 154880,
    }
    return _finish(d, sizes, fp8)


def glm5_config(fp8: bool = True, **sizes) -> dict:
    """zai-org/GLM-5(-FP8) / zai-org/GLM-5.1(-FP8) config.json: an indexer on every layer, rope_theta 1e6."""
    d = glm52_config(fp8=False)
    for k in ("index_share_for_mtp_iteration", "index_skip_topk_offset", "index_topk_freq", "index_topk_pattern",
              "indexer_types", "moe_router_dtype"):
        d.pop(k)
    d.update(head_dim=64, max_position_embeddings=202752, transformers_version="5.2.0.dev0",
             rope_parameters={"rope_theta": 1000000, "rope_type": "default"})
    return _finish(d, sizes, fp8)


def nvfp4_config() -> dict:
    """nvidia/GLM-5.2-NVFP4: transformers 5.11 spellings, ModelOpt NVFP4 experts."""
    d = glm52_config(fp8=False)
    d.update(transformers_version="5.11.0", layer_types=["deepseek_sparse_attention"] * 78,
             quantization_config={"quant_method": "modelopt", "quant_algo": "NVFP4", "group_size": 16,
                                  "kv_cache_quant_algo": None, "exclude_modules": ["lm_head"]})
    return d


def _finish(d: dict, sizes: dict, fp8: bool) -> dict:
    d.update(sizes)
    n, dense = d["num_hidden_layers"], d["first_k_dense_replace"]
    d["qk_head_dim"] = d["qk_nope_head_dim"] + d["qk_rope_head_dim"]
    d["mlp_layer_types"] = ["dense"] * dense + ["sparse"] * (n - dense)
    if "index_topk_freq" in d:
        d["indexer_types"] = _indexer_types(n, d["index_topk_freq"], d["index_skip_topk_offset"])
    if fp8:
        skip = ["lm_head", "model.embed_tokens", "model.norm"]
        for i in range(n + d["num_nextn_predict_layers"]):
            p = f"model.layers.{i}."
            skip += [p + m for m in ("input_layernorm", "post_attention_layernorm", "self_attn.q_a_layernorm",
                                     "self_attn.kv_a_layernorm", "self_attn.indexer.k_norm",
                                     "self_attn.indexers_proj")]
            if i >= dense:
                skip += [p + "mlp.gate", p + "mlp.gate.e_score_correction_bias"]
            if i >= n:
                skip += [p + m for m in ("eh_proj", "enorm", "hnorm", "shared_head.norm")]
        d["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                    "weight_block_size": [128, 128], "modules_to_not_convert": skip}
    return d


# GLM-5.2's schedule, dense prefix and MTP layer at CPU size; projections multiples of 128 where the
# FP8 GEMMs can take them (q_b_proj, o_proj, indexer wk are not: they keep the dequantized path).
# 16 indexer heads: with few heads many keys score exactly 0 after the ReLUs, and top-k among ties
# is arbitrary (transformers and we would pick different, equally valid sets).
FIXTURE_SIZES = dict(
    vocab_size=320, hidden_size=128, intermediate_size=256, moe_intermediate_size=128, num_hidden_layers=7,
    num_attention_heads=2, num_key_value_heads=2, q_lora_rank=128, kv_lora_rank=128, qk_nope_head_dim=32,
    qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, num_experts_per_tok=2, index_n_heads=16,
    index_head_dim=32, index_topk=8, max_position_embeddings=4096, eos_token_id=[1, 2], pad_token_id=1,
)


def write_published_replicas(work: Path, seed: int = 0) -> tuple[Path, Path, torch.nn.Module]:
    """Small replicas of zai-org/GLM-5.2 (BF16) and zai-org/GLM-5.2-FP8 under ``work``: the published
    config.json fields, per-tensor dtypes (BF16; F32 router bias; FP8 + ``weight_scale_inv`` for the
    quantized weights), the MTP layer at ``num_hidden_layers``, several shards with an index.
    Returns (bf16 dir, fp8 dir, the transformers model the weights came from)."""
    published = glm52_config(fp8=True, **FIXTURE_SIZES)
    hf_sizes = {k: v for k, v in published.items() if k in FIXTURE_SIZES or k in (
        "first_k_dense_replace", "index_topk_freq", "index_skip_topk_offset", "num_nextn_predict_layers")}
    hf = hf_model(seed, **hf_sizes, rope_parameters=published["rope_parameters"])
    # Random weights make a chaotic model: BF16/FP8 rounding flips routing and top-k and grows layer
    # by layer. Damping what each layer writes to the residual stream keeps rounding at its own size.
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight", "down_proj")):
                p.mul_(0.1)
    src = work / "hf"
    hf.save_pretrained(src, max_shard_size="1MB")
    add_tensors(src, mtp_tensors(src, seed))
    model = GLM52ForCausalLM.from_pretrained(src, dtype=torch.bfloat16)  # the correction bias stays fp32
    bf16 = save_checkpoint(model, work / "GLM-5.2", max_shard_bytes=400_000)
    fp8 = quantize_checkpoint(bf16, work / "GLM-5.2-FP8", max_shard_bytes=300_000)
    bf16_config = copy.deepcopy(published)
    bf16_config.pop("quantization_config")
    (bf16 / "config.json").write_text(json.dumps(bf16_config, indent=2))
    (fp8 / "config.json").write_text(json.dumps(published, indent=2))
    return bf16, fp8, hf
