"""GLM52Config against transformers' GlmMoeDsaConfig; presets built on the meta device."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
import transformers
from published_checkpoints import glm5_config, glm52_config, nvfp4_config

from glm52 import GLM52Config, GLM52ForCausalLM, kernels
from glm52.cli import main
from glm52.config import KNOWN_NON_ARCHITECTURE_FIELDS, UnknownConfigFieldWarning
from glm52.layers import Router


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
    ("sliding_window", 4096, "sliding_window"),  # unknown, and its name says it may change the math
    ("rope_parameters", {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
     "partial_rotary_factor"),
    ("moe_layer_freq", 2, "moe_layer_freq"),
    ("num_experts", 16, "disagree"),  # transformers re-routes it to n_routed_experts (8 here)
    ("moe_router_dtype", "float16", "'moe_router_dtype' is 'float16'"),
    ("quantization_config", {"quant_method": "fp8", "fmt": "e5m2"}, "fmt 'e5m2' is not supported"),
    ("quantization_config", {"quant_method": "fp8", "kv_cache_scheme": {"num_bits": 8}}, "kv_cache_scheme"),
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


def _write(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def _load_without_warnings(path) -> GLM52Config:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return GLM52Config.from_pretrained(path)


@pytest.mark.parametrize("release,preset", [
    ("GLM-5.2-FP8", "glm-5.2"), ("GLM-5.2", "glm-5.2"), ("GLM-5.1-FP8", "glm-5.1"), ("GLM-5.1", "glm-5.1"),
    ("GLM-5-FP8", "glm-5"), ("GLM-5", "glm-5"),
])
def test_published_configs_load_unchanged(tmp_path, release, preset):
    fp8 = release.endswith("FP8")
    d = glm52_config(fp8=fp8) if release.startswith("GLM-5.2") else glm5_config(fp8=fp8)
    config = _load_without_warnings(_write(tmp_path, d))
    assert config.replace(quantization_config=None) == GLM52Config.preset(preset)
    assert (config.quantization_config is not None) == fp8
    assert main(["plan", "--config", str(tmp_path), "--json"]) == 0


@pytest.mark.parametrize("version", ["5.11", "5.24", "rope_theta"])
def test_transformers_spellings_load(tmp_path, version):
    """What GlmMoeDsaConfig writes in full (use_diff=False), 5.11's names for the same facts, and the
    older top-level RoPE spelling."""
    d = json.loads(transformers.GlmMoeDsaConfig(num_hidden_layers=6, index_topk_freq=2).to_json_string(use_diff=False))
    if version == "5.11":
        d.update(layer_types=["deepseek_sparse_attention"] * 6, num_experts=d.pop("n_routed_experts"),
                 transformers_version="5.11.0")
    elif version == "rope_theta":
        d.update(rope_theta=d.pop("rope_parameters")["rope_theta"], rope_scaling=None, torch_dtype=d.pop("dtype"))
    config = _load_without_warnings(_write(tmp_path, d))
    assert config.n_routed_experts == 256 and config.bos_token_id == 0 and config.rope_theta == 10000.0
    assert config.indexer_types == ("full", "full", "shared", "full", "shared", "full")


def test_unknown_fields_without_architecture_information_warn(tmp_path):
    d = glm52_config(fp8=True)
    d.update(release_notes="https://z.ai", use_sliding_window=False, sliding_window=None)
    d["quantization_config"]["kv_cache_scheme"] = None
    with pytest.warns(UnknownConfigFieldWarning) as record:
        config = GLM52Config.from_pretrained(_write(tmp_path, d))
    named = sorted(str(w.message).split("'")[1] for w in record)
    assert named == ["kv_cache_scheme", "release_notes", "sliding_window", "use_sliding_window"]
    assert config.hidden_size == 6144
    assert all(source for source in KNOWN_NON_ARCHITECTURE_FIELDS.values())


def test_unsupported_quantization_is_one_clear_line(tmp_path):
    with pytest.raises(ValueError) as e:
        GLM52Config.from_pretrained(_write(tmp_path, nvfp4_config()))
    message = str(e.value)
    assert "\n" not in message and len(message) < 400
    assert "'modelopt' (NVFP4) is not supported" in message
    assert all(name in message for name in ("zai-org/GLM-5.2-FP8", "zai-org/GLM-5.2,", "zai-org/GLM-5-FP8"))
    assert main(["plan", "--config", str(tmp_path)]) == 2


@pytest.mark.parametrize("field,value,message", [
    ("layer_types", ["deepseek_sparse_attention"] * 77 + ["sliding_attention"], "holding ['sliding_attention']"),
    ("layer_types", ["indexed_attention"] * 77, "'indexed_attention', ...] (77 entries)"),
    ("mlp_layer_types", ["dense"] * 4 + ["sparse"] * 74, "entry 3 is 'dense', expected 'sparse' (1 of 78"),
    ("indexer_types", ["full"] * 78, "entry 3 is 'full', expected 'shared' (57 of 78"),
])
def test_long_lists_are_summarized_in_errors(tmp_path, field, value, message):
    d = glm52_config(fp8=True)
    d[field] = value
    with pytest.raises(ValueError) as e:
        GLM52Config.from_pretrained(_write(tmp_path, d))
    assert message in str(e.value) and len(str(e.value)) < 400


def test_moe_router_dtype_sets_the_router_gemm_dtype(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(5, 128, generator=g), torch.randn(8, 128, generator=g)
    captured = []
    monkeypatch.setattr(kernels, "moe_route", lambda logits, *args, _op=kernels.moe_route: (
        captured.append(logits), _op(logits, *args))[1])
    for dtype in ("float32", "bfloat16"):
        config = GLM52Config.preset("tiny").replace(hidden_size=128, n_routed_experts=8, moe_router_dtype=dtype)
        router = Router(config)
        router.weight.data, router.e_score_correction_bias = w, torch.zeros(8)
        router(x)
    fp32, bf16 = captured
    assert fp32.dtype == bf16.dtype == torch.float32  # sigmoid and selection stay fp32
    assert torch.equal(fp32, x @ w.T)
    assert torch.equal(bf16, (x.bfloat16() @ w.bfloat16().T).float())
    assert not torch.equal(bf16, fp32)
