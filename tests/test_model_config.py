"""GLM52Config against transformers' GlmMoeDsaConfig; presets built on the meta device."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from glm52 import GLM52Config, GLM52ForCausalLM


@pytest.mark.parametrize("kwargs", [
    dict(num_hidden_layers=78, index_topk_freq=4, index_skip_topk_offset=3),
    dict(num_hidden_layers=9, index_topk_freq=3),
    dict(num_hidden_layers=7, index_topk_freq=2, index_skip_topk_offset=1),
    dict(num_hidden_layers=5, index_topk_pattern="FFSFS"),
    dict(num_hidden_layers=6),
])
def test_indexer_types_match_transformers(tmp_path, kwargs):
    hf = transformers.GlmMoeDsaConfig(**kwargs)
    hf.save_pretrained(tmp_path)
    ours = GLM52Config.from_pretrained(tmp_path)
    assert list(ours.indexer_types) == list(hf.indexer_types)
    for i in range(hf.num_hidden_layers):
        assert ours.has_indexer(i) == (hf.indexer_types[i] == "full")
        assert ours.is_moe_layer(i) == (hf.mlp_layer_types[i] == "sparse")
    # Our config.json is read back by transformers with the same meaning.
    (tmp_path / "config.json").write_text(json.dumps(ours.to_dict()))
    back = transformers.GlmMoeDsaConfig.from_pretrained(tmp_path)
    assert list(back.indexer_types) == list(ours.indexer_types)
    assert back.rope_parameters["rope_theta"] == ours.rope_theta and back.qk_head_dim == ours.qk_head_dim


def test_glm52_share_schedule():
    c = GLM52Config.preset("glm-5.2")
    assert [i for i in range(78) if c.has_indexer(i)] == [0, 1, 2, *range(6, 78, 4)]
    assert c.has_indexer(78)  # the MTP layer always has its own indexer
    assert all(GLM52Config.preset(p).indexer_types == ("full",) * 78 for p in ("glm-5", "glm-5.1"))


def test_full_presets_build_on_meta_with_the_published_count():
    counts = {}
    for name in ("glm-5.2", "glm-5.1", "glm-5", "tiny"):
        with torch.device("meta"):
            model = GLM52ForCausalLM(GLM52Config.preset(name))
        counts[name] = sum(p.numel() for p in model.parameters())
        biases = [b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
        assert len(biases) == model.config.num_layers_total - model.config.first_k_dense_replace
    assert counts["glm-5.2"] == 753_329_921_024  # DESIGN §2.3 (includes the MTP layer)
    # GLM-5/5.1 carry an indexer on all 78 layers instead of 21: 57 more indexers.
    c = GLM52Config.preset("glm-5")
    per_indexer = (c.q_lora_rank * c.index_n_heads * c.index_head_dim + c.hidden_size * c.index_head_dim
                   + 2 * c.index_head_dim + c.hidden_size * c.index_n_heads)
    assert counts["glm-5"] - counts["glm-5.2"] == 57 * per_indexer


@pytest.mark.parametrize("field,value,message", [
    ("num_key_value_heads", 2, "num_key_value_heads"),
    ("unknown_knob", 1, "unknown_knob"),
    ("n_group", 3, "n_group"),
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}, "rope_type"),
    ("indexer_types", ["full", "shared", "shared", "shared"], "indexer_types"),
    ("tie_word_embeddings", True, "tie_word_embeddings"),
    ("model_type", "deepseek_v32", "model_type"),
    ("index_topk_pattern", "FSX", "index_topk_pattern"),
    # transformers accepts a shared layer 0 and fails only in forward; we refuse the config.
    ("index_skip_topk_offset", 0, "layer 0"),
])
def test_bad_config_fields_are_named(tmp_path, field, value, message):
    d = json.loads(transformers.GlmMoeDsaConfig(num_hidden_layers=4, n_routed_experts=8, index_topk_freq=2).to_json_string())
    if field.startswith("index_"):
        d.pop("indexer_types")  # derive it from the field under test
    d[field] = value
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=message):
        GLM52Config.from_pretrained(tmp_path)


def test_preset_errors():
    with pytest.raises(ValueError, match="unknown preset"):
        GLM52Config.preset("glm-4")
    with pytest.raises(ValueError, match="indexer_precision"):
        GLM52Config.preset("tiny", indexer_precision="int8")
