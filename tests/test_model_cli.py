"""The planner (against counts made independently here) and the ``glm52`` command line."""

from __future__ import annotations

import json

import pytest
import torch

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52.cli import main


def test_plan_json_glm52(capsys):
    assert main(["plan", "--preset", "glm-5.2", "--context", "1048576", "--json", "--tp", "8", "--ep", "8"]) == 0
    p = json.loads(capsys.readouterr().out)
    c = GLM52Config.preset("glm-5.2")
    with torch.device("meta"):
        model = GLM52ForCausalLM(c)
    assert p["total_params"] == sum(t.numel() for t in model.parameters())
    # Active: main layers with top-k of the routed experts, no embedding lookup, no MTP layer.
    main_layers = model.model.layers[: c.num_hidden_layers]
    routed = sum(t.numel() for n, t in main_layers.named_parameters() if ".experts." in n)
    main_total = sum(t.numel() for t in main_layers.parameters()) + c.hidden_size * (c.vocab_size + 1)
    assert p["active_params"] == main_total - routed + routed * c.num_experts_per_tok // c.n_routed_experts
    assert abs(p["active_params"] / 1e9 - 40.3) < 0.05  # DESIGN §2.3
    # Caches: every layer (78 + MTP) holds a latent; indexer keys only where an indexer runs (21 + MTP).
    assert p["kv_bytes_per_token"] == 79 * (c.kv_lora_rank + 4 * c.kv_lora_rank // 128 + 2 * c.qk_rope_head_dim)
    assert p["indexer_bytes_per_token"] == (1 + sum(t == "full" for t in c.indexer_types)) * (c.index_head_dim + 4)
    assert p["kv_bytes_context"] == p["kv_bytes_per_token"] * 1048576
    # FP8 weights: experts split 8 ways; the per-GPU share is between total/8 and total.
    assert p["weight_bytes_total"] / 8 < p["weight_bytes_per_gpu"] < p["weight_bytes_total"] / 4
    assert p["cp"] == 1 and p["cache_bytes_per_gpu"] == p["kv_bytes_context"] + p["indexer_bytes_context"]
    assert 0 < p["workspace_bytes_per_gpu"] < 5e9  # one 8192-token prefill chunk, independent of context
    assert p["bytes_per_gpu"] == p["weight_bytes_per_gpu"] + p["cache_bytes_per_gpu"] + p["workspace_bytes_per_gpu"]
    assert set(p["fits"]) == {"80GB", "141GB"}


def test_plan_context_parallel_divides_the_cache(capsys):
    """cp=8 at 1M tokens: each GPU holds 1/8 of the 64-token blocks, and GLM-5.2 FP8 fits a 141 GB card."""
    args = ["plan", "--preset", "glm-5.2", "--context", "1048576", "--json", "--tp", "8", "--ep", "8"]
    assert main(args) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main(args + ["--cp", "8"]) == 0
    split = json.loads(capsys.readouterr().out)
    assert split["cache_tokens_per_gpu"] == 1048576 // 8
    assert split["cache_bytes_per_gpu"] * 8 == whole["cache_bytes_per_gpu"]
    assert not whole["fits"]["141GB"] and split["fits"]["141GB"]
    assert main(args + ["--cp", "3"]) == 2
    assert "cp (3) must divide tp (8)" in capsys.readouterr().err


def test_plan_formats_scale_bytes(capsys):
    sizes = {}
    for weights in ("bf16", "fp8", "int4"):
        assert main(["plan", "--preset", "glm-5.2", "--json", "--weights", weights, "--kv", "bf16"]) == 0
        p = json.loads(capsys.readouterr().out)
        sizes[weights] = p["weight_bytes_total"]
        assert p["kv_bytes_per_token_per_layer"] == 1152
    assert sizes["bf16"] == 2 * 753_329_921_024 + 4 * 76 * 256  # BF16 params + fp32 router biases
    assert sizes["bf16"] / 2 < sizes["fp8"] < 0.55 * sizes["bf16"]
    assert sizes["fp8"] / 2 < sizes["int4"] < 0.6 * sizes["fp8"]


def test_plan_text_and_errors(capsys):
    assert main(["plan", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "per GPU total" in out
    assert main(["plan", "--tp", "3", "--ep", "8"]) == 2
    err = capsys.readouterr()
    assert "tp" in err.err and err.out == ""
    assert main(["plan", "--context", "0"]) == 2
    assert "context" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--weights", "fp4"])


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--tokens", "3", "--prompt-len", "20"]) == 0
    out = capsys.readouterr().out
    assert "glm52_ext build" in out and "[bf16]" in out and "[fp8]" in out
    assert (tmp_path / "fp8" / "model.safetensors.index.json").is_file()
    fp8 = GLM52ForCausalLM.from_pretrained(tmp_path / "fp8")
    assert fp8.model.layers[3].mlp.experts.gate_proj.weight.dtype == torch.float8_e4m3fn
