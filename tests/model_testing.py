"""Helpers for the glm52 model tests: small transformers peers, checkpoint surgery, error metrics."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file

from glm52 import GLM52Config, GLM52ForCausalLM
from glm52.checkpoint import checkpoint_tensors, init_random_
from glm52.loader import INDEX_FILE, SCALE_SUFFIX
from glm52_ext.reference import dequant_fp8_block



BASE = dict(
    vocab_size=320, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=5,
    num_attention_heads=4, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2, n_group=1,
    topk_group=1, kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=16, v_head_dim=24, qk_nope_head_dim=24,
    index_topk=8, index_head_dim=32, index_n_heads=16, first_k_dense_replace=1,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, routed_scaling_factor=2.5,
)


def hf_model(seed: int, **overrides) -> transformers.GlmMoeDsaForCausalLM:
    """A transformers GlmMoeDsaForCausalLM with random O(1)-scale weights (norms, biases randomized too)."""
    config = transformers.GlmMoeDsaConfig(**{**BASE, **overrides})
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.GlmMoeDsaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        biases = [(n, b) for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")]
        for name, p in [*model.named_parameters(), *biases]:
            r = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * r)
            elif p.dim() == 1:
                p.copy_(0.1 * r)
            elif "embed" in name:
                p.copy_(r)
            else:
                p.copy_(r * p.shape[-1] ** -0.5)
    return model


def add_tensors(ckpt: Path, tensors: dict[str, torch.Tensor], file: str = "model-extra.safetensors") -> None:
    """Append ``tensors`` to a sharded checkpoint as one more shard listed in the index."""
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(ckpt / file))
    index = json.loads((ckpt / INDEX_FILE).read_text())
    index["weight_map"].update({k: file for k in tensors})
    (ckpt / INDEX_FILE).write_text(json.dumps(index))


def mtp_tensors(ckpt: Path, seed: int) -> dict[str, torch.Tensor]:
    """Random MTP-layer tensors (``model.layers.{N}.*``) for the checkpoint's config (transformers drops them)."""
    config = GLM52Config.from_pretrained(ckpt)
    model = init_random_(GLM52ForCausalLM(config), seed)
    prefix = f"model.layers.{config.num_hidden_layers}."
    return {k: v.clone() for k, v in checkpoint_tensors(model) if k.startswith(prefix)}


def read_checkpoint(ckpt: Path) -> dict[str, torch.Tensor]:
    index = json.loads((ckpt / INDEX_FILE).read_text())["weight_map"]
    out = {}
    for file in set(index.values()):
        with safe_open(str(ckpt / file), framework="pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


def dequantize_checkpoint(src: Path, dst: Path) -> None:
    """An fp32 copy of an FP8 checkpoint, dequantized with the reference (the peer's input)."""
    tensors = read_checkpoint(src)
    out = {}
    for name, t in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        out[name] = dequant_fp8_block(t, scale, out_dtype=torch.float32) if scale is not None else t.float()
    dst.mkdir(parents=True)
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config.pop("quantization_config")
    (dst / "config.json").write_text(json.dumps(config))


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``max |out - ref| / max |ref|``."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
