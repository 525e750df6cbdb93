"""Checkpoint loading: round trips, and bad checkpoints rejected by name with nothing half-loaded."""

from __future__ import annotations

import json

import pytest
import torch
from model_testing import read_checkpoint
from safetensors.torch import save_file

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52.checkpoint import checkpoint_tensors, init_random_, quantize_checkpoint, save_checkpoint
from glm52.loader import INDEX_FILE, CheckpointError, load_checkpoint

CONFIG = GLM52Config.preset("tiny").replace(num_hidden_layers=4, first_k_dense_replace=1, n_routed_experts=4,
                                            num_experts_per_tok=2, index_topk_freq=2, index_skip_topk_offset=2)


@pytest.fixture(scope="module")
def source():
    return init_random_(GLM52ForCausalLM(CONFIG), 0)


@pytest.fixture
def ckpt(tmp_path, source):
    return save_checkpoint(source, tmp_path / "ckpt", max_shard_bytes=200_000)


def _states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_sharded_and_single_file(tmp_path, source, ckpt):
    assert len(list(ckpt.glob("*.safetensors"))) > 3
    assert _states_equal(GLM52ForCausalLM.from_pretrained(ckpt), source)
    single = save_checkpoint(source, tmp_path / "single", max_shard_bytes=2**40)
    files = list(single.glob("*.safetensors"))
    files[0].rename(single / "model.safetensors")
    (single / INDEX_FILE).unlink()
    loaded = GLM52ForCausalLM.from_pretrained(single, dtype=torch.bfloat16)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert loaded.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert torch.equal(loaded.lm_head.weight, source.lm_head.weight.bfloat16())


def test_fp8_round_trip_keeps_the_checkpoint(tmp_path, ckpt):
    fp8 = quantize_checkpoint(ckpt, tmp_path / "fp8", max_shard_bytes=200_000)
    model = GLM52ForCausalLM.from_pretrained(fp8)
    written = read_checkpoint(fp8)
    ours = dict(checkpoint_tensors(model))
    assert ours.keys() == written.keys()
    assert all(ours[k].dtype == written[k].dtype and torch.equal(ours[k].float(), written[k].float()) for k in ours)
    assert model.config.quantization_config["weight_block_size"] == [128, 128]


def _rewrite(ckpt, name, value=None):
    """Replace (or with value None, drop) tensor ``name`` in its shard; returns that shard's path."""
    file = json.loads((ckpt / INDEX_FILE).read_text())["weight_map"][name]
    from safetensors import safe_open

    with safe_open(str(ckpt / file), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if value is None:
        del tensors[name]
    else:
        tensors[name] = value
    save_file(tensors, str(ckpt / file))
    return ckpt / file


def _add(ckpt, name, value):
    save_file({name: value}, str(ckpt / "extra.safetensors"))
    index = json.loads((ckpt / INDEX_FILE).read_text())
    index["weight_map"][name] = "extra.safetensors"
    (ckpt / INDEX_FILE).write_text(json.dumps(index))
    return ckpt / "extra.safetensors"


Q = "model.layers.1.self_attn.q_a_proj.weight"
E = "model.layers.2.mlp.experts.3.up_proj.weight"


@pytest.mark.parametrize("breakage", ["missing", "unexpected", "shape", "dtype", "fp8-without-scale", "bad-scale",
                                      "mixed-experts", "corrupt", "truncated", "missing-shard", "index-lies"])
def test_bad_checkpoints_are_rejected_by_name(ckpt, breakage):
    shape = tuple(CONFIG_SHAPES[Q])
    if breakage == "missing":
        file, name = _rewrite(ckpt, Q), Q
    elif breakage == "unexpected":
        file, name = _add(ckpt, "model.layers.1.self_attn.q_proj.weight", torch.randn(4, 4)), "q_proj"
    elif breakage == "shape":
        file, name = _rewrite(ckpt, Q, torch.randn(shape[0], shape[1] + 1)), Q
    elif breakage == "dtype":
        file, name = _rewrite(ckpt, Q, torch.ones(shape, dtype=torch.int32)), Q
    elif breakage == "fp8-without-scale":
        file, name = _rewrite(ckpt, Q, torch.randn(shape).to(torch.float8_e4m3fn)), Q
    elif breakage == "bad-scale":
        _rewrite(ckpt, Q, torch.randn(shape).to(torch.float8_e4m3fn))
        file, name = _add(ckpt, Q + "_scale_inv", torch.ones(3, 1)), Q + "_scale_inv"
    elif breakage == "mixed-experts":
        file = _rewrite(ckpt, E, torch.randn(CONFIG_SHAPES[E]).to(torch.float8_e4m3fn))
        _add(ckpt, E + "_scale_inv", torch.ones(1, 1))
        name = "experts of one layer must match"
    elif breakage in ("corrupt", "truncated"):
        file = ckpt / json.loads((ckpt / INDEX_FILE).read_text())["weight_map"][Q]
        data = file.read_bytes()
        file.write_bytes(b"\xff" * 16 + data[16:] if breakage == "corrupt" else data[:-64])
        name = ""
    elif breakage == "missing-shard":
        file = ckpt / json.loads((ckpt / INDEX_FILE).read_text())["weight_map"][Q]
        file.unlink()
        name = ""
    else:  # the index names a shard that does not hold the tensor
        index = json.loads((ckpt / INDEX_FILE).read_text())
        other = next(f for f in index["weight_map"].values() if f != index["weight_map"][Q])
        index["weight_map"][Q] = other
        (ckpt / INDEX_FILE).write_text(json.dumps(index))
        file, name = ckpt / other, Q
    with torch.device("meta"):
        model = GLM52ForCausalLM(GLM52Config.from_pretrained(ckpt))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, ckpt)
    assert str(file) in str(info.value) and name in str(info.value)
    assert all(p.is_meta for p in model.parameters())  # nothing was assigned


with torch.device("meta"):
    CONFIG_SHAPES = {k: v.shape for k, v in checkpoint_tensors(GLM52ForCausalLM(CONFIG))}


def test_forward_rejects_bad_input_ids(source):
    for bad, message in ((torch.zeros(4, dtype=torch.long), "input_ids"), (torch.zeros(1, 3), "int32/int64"),
                         (torch.full((1, 3), CONFIG.vocab_size), "values must lie")):
        with pytest.raises(ValueError, match=message):
            source(bad)
