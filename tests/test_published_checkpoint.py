"""A small replica of the published GLM-5.2-FP8 / GLM-5.2 checkpoints (tests/published_checkpoints.py)
loads as published: parity with transformers, the FP8-kept path, ``glm52 plan`` and ``glm52 generate``."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
import transformers
from model_testing import dequantize_checkpoint, max_rel_err, read_checkpoint
from published_checkpoints import write_published_replicas
from test_engine import plain_greedy

from glm52 import GLM52Config, GLM52ForCausalLM, kernels
from glm52.cli import main
from glm52.planner import plan

TOL = 1e-4
TOKENS = 40  # > index_topk (8): the sparse selection drops tokens


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    work = tmp_path_factory.mktemp("published")
    bf16, fp8, _ = write_published_replicas(work)
    deq = work / "GLM-5.2-FP8-dequantized"
    dequantize_checkpoint(fp8, deq)
    return {"bf16": bf16, "fp8": fp8, "fp8-dequantized": deq}


def _peer(path) -> transformers.GlmMoeDsaForCausalLM:
    peer = transformers.GlmMoeDsaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    peer.config._attn_implementation = "eager"
    return peer


def _ids(config, seed=3):
    return torch.randint(0, config.vocab_size, (2, TOKENS), generator=torch.Generator().manual_seed(seed))


def test_replica_has_the_published_layout(releases):
    fp8 = releases["fp8"]
    config = json.loads((fp8 / "config.json").read_text())
    assert config["moe_router_dtype"] == "float32" and config["head_dim"] == 192
    assert any(m.endswith("indexers_proj") for m in config["quantization_config"]["modules_to_not_convert"])
    assert len(list(fp8.glob("model-*.safetensors"))) > 3
    tensors = read_checkpoint(fp8)
    n = config["num_hidden_layers"]
    assert f"model.layers.{n}.eh_proj.weight" in tensors  # the MTP layer sits at index num_hidden_layers
    assert not any(".indexers_proj." in k for k in tensors)
    high = re.compile(r"norm|embed_tokens|lm_head|mlp\.gate\.weight|weights_proj|eh_proj")
    for name, t in tensors.items():
        if name.endswith("_scale_inv"):
            assert t.dtype == torch.float32 and tensors[name[: -len("_scale_inv")]].dtype == torch.float8_e4m3fn
        elif name.endswith("e_score_correction_bias"):
            assert t.dtype == torch.float32, name
        elif high.search(name) or t.dim() == 1:
            assert t.dtype == torch.bfloat16, name
        else:
            assert t.dtype == torch.float8_e4m3fn and name + "_scale_inv" in tensors, name


@pytest.mark.parametrize("release", ["bf16", "fp8"])
def test_parity_with_transformers_on_the_published_layout(releases, release):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every field of the published config.json is understood
        ours = GLM52ForCausalLM.from_pretrained(releases[release], dtype=torch.float32)
    peer = _peer(releases["fp8-dequantized" if release == "fp8" else "bf16"])
    ids = _ids(ours.config)
    with torch.no_grad():
        ref = peer(ids).logits
        err = max_rel_err(ours(ids), ref)
        # The sparse selection matters: the same weights with dense attention give other logits.
        dense = GLM52ForCausalLM(ours.config.replace(index_topk=TOKENS))
        dense.load_state_dict(ours.state_dict(), assign=True)
        dense_err = max_rel_err(dense(ids), ref)
    print(f"published-layout {release} replica: max rel err {err:.2e} vs transformers "
          f"(dense attention: {dense_err:.2e})")
    assert err <= TOL
    assert dense_err > 100 * TOL


def test_fp8_kept_path_runs(releases, monkeypatch):
    exact = GLM52ForCausalLM.from_pretrained(releases["fp8"], dtype=torch.float32)
    kept = GLM52ForCausalLM.from_pretrained(releases["fp8"])  # dtype=None: as stored
    layer = kept.model.layers[3]
    assert layer.self_attn.q_a_proj.weight.dtype == torch.float8_e4m3fn
    assert layer.mlp.experts.gate_proj.weight_scale_inv.shape == (8, 1, 1)
    assert layer.mlp.gate.weight.dtype == kept.model.embed_tokens.weight.dtype == torch.bfloat16
    assert layer.mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert kept.model.layers[kept.config.num_hidden_layers].eh_proj.weight.dtype == torch.bfloat16
    ids = _ids(exact.config)
    calls = {"fp8_gemm": 0}

    def counted(*args, _op=kernels.fp8_gemm, **kwargs):
        calls["fp8_gemm"] += 1
        return _op(*args, **kwargs)

    monkeypatch.setattr(kernels, "fp8_gemm", counted)
    fp8 = GLM52ForCausalLM.from_pretrained(releases["fp8"], fp8_compute="fp8")
    with torch.no_grad():
        want = exact(ids)
        got = {"dequant": kept(ids).float()}
        assert calls["fp8_gemm"] == 0
        got["fp8"] = fp8(ids).float()
    assert calls["fp8_gemm"] > 0  # q_a_proj, kv_b_proj, experts, lm_head... are on the 128-block grid
    errs = {k: max_rel_err(v, want) for k, v in got.items()}
    typical = {k: ((v - want).abs().amax(-1) / want.abs().amax(-1)).median().item() for k, v in got.items()}
    print(f"FP8-kept replica vs fp32 dequantized: max {errs}, median per token {typical}")
    # BF16 activations (and e4m3 ones for "fp8") through 8 layers: a few tokens flip a routing or
    # top-k choice (the max), the typical token moves by rounding only.
    assert typical["dequant"] < 0.02 and typical["fp8"] < 0.05  # measured 0.8% and 2.2%
    assert errs["dequant"] < 0.15 and errs["fp8"] < 0.25


def test_plan_config_on_the_replica(releases, capsys):
    assert main(["plan", "--config", str(releases["fp8"]), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    config = GLM52Config.from_pretrained(releases["fp8"])
    assert config.moe_router_dtype == "float32" and config.num_nextn_predict_layers == 1
    assert got == json.loads(json.dumps(plan(config)))
    with torch.device("meta"):
        assert got["total_params"] == sum(p.numel() for p in GLM52ForCausalLM(config).parameters())


def test_generate_on_the_replica(releases, capsys):
    prompt = [5, 9, 200, 31, 7, 77]
    common = ["generate", "--checkpoint", str(releases["fp8"]), "--prompt-ids", ",".join(map(str, prompt)),
              "--max-new-tokens", "6", "--spec-steps", "2", "--temperature", "0", "--json"]
    assert main([*common, "--dtype", "float32"]) == 0
    got = json.loads(capsys.readouterr().out)["tokens"][0]
    model = GLM52ForCausalLM.from_pretrained(releases["fp8"], dtype=torch.float32)
    want = plain_greedy(model, prompt, 6)
    eos = [t for t in want if t in model.config.eos_token_id]
    assert got == (want[: want.index(eos[0]) + 1] if eos else want)
    assert main(common) == 0  # FP8 weights kept
    kept = json.loads(capsys.readouterr().out)["tokens"][0]
    assert 1 <= len(kept) <= 6 and all(0 <= t < model.config.vocab_size for t in kept)
