"""Write Hugging Face checkpoints: a model's weights (``save_checkpoint``), random weights for demos
and tests (``init_random_``), and FP8 block quantization of an existing checkpoint
(``quantize_checkpoint``, the format of the FP8 release: DESIGN §2.2)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from .config import GLM52Config
from .layers import LayerNorm, RMSNorm
from .loader import FP8_BLOCK, INDEX_FILE, SCALE_SUFFIX, _weight_map, checkpoint_layout

FP8_MAX = 448.0
QUANTIZATION_CONFIG = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                       "weight_block_size": [FP8_BLOCK, FP8_BLOCK]}
# Stay high precision in the FP8 release (DESIGN §2.2): embeddings, lm_head, norms, router, indexer head
# weights, and the MTP layer's eh_proj (zai-org/GLM-5.2-FP8 lists it in modules_to_not_convert, stores it BF16).
_KEEP_HIGH_PRECISION = re.compile(r"(embed_tokens|lm_head|norm|mlp\.gate\.|indexer\.weights_proj|eh_proj)")


def fp8_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether the FP8 release stores checkpoint tensor ``name`` as e4m3 with 128x128 block scales."""
    return name.endswith(".weight") and len(shape) == 2 and not _KEEP_HIGH_PRECISION.search(name)


def quantize_fp8_block(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [N, K]`` -> (e4m3 ``[N, K]``, fp32 ``scale_inv [ceil(N/128), ceil(K/128)]``), ``w ≈ q ⊙ scale_inv``.

    One scale per 128x128 block (edge blocks partial): ``amax(|block|) / 448``.
    """
    n, k = w.shape
    bn, bk = -(-n // FP8_BLOCK), -(-k // FP8_BLOCK)
    padded = torch.nn.functional.pad(w.float(), (0, bk * FP8_BLOCK - k, 0, bn * FP8_BLOCK - n))
    blocks = padded.view(bn, FP8_BLOCK, bk, FP8_BLOCK)
    scale = blocks.abs().amax(dim=(1, 3)).clamp_min(1e-10) / FP8_MAX
    q = (blocks / scale[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).view(bn * FP8_BLOCK, bk * FP8_BLOCK)
    return q[:n, :k].to(torch.float8_e4m3fn).contiguous(), scale


@torch.no_grad()
def init_random_(model: nn.Module, seed: int) -> nn.Module:
    """Deterministic random weights that keep activations O(1): linear weights ~ N(0, 1/fan_in),
    embeddings ~ N(0, 1), norms ~ 1 + N(0, 0.1²), biases ~ N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)

    def randn(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float32)

    for module in model.modules():
        for attr, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if isinstance(module, (RMSNorm, LayerNorm)) and attr == "weight":
                value = 1 + 0.1 * randn(t)
            elif attr in ("bias", "e_score_correction_bias"):
                value = 0.1 * randn(t)
            elif isinstance(module, nn.Embedding):
                value = randn(t)
            else:
                value = randn(t) * t.shape[-1] ** -0.5
            dtype = torch.float32 if attr == "e_score_correction_bias" else t.dtype
            new = value.to(dtype)
            if attr in module._buffers:
                module._buffers[attr] = new
            else:
                module._parameters[attr] = nn.Parameter(new, requires_grad=False)
    return model


def checkpoint_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's weights under their checkpoint names (experts unstacked, FP8 companions included)."""
    for name, slot in checkpoint_layout(model).items():
        for suffix, attr in (("", slot.attr), (SCALE_SUFFIX, "weight_scale_inv")):
            t = getattr(slot.module, attr) if attr == slot.attr or slot.quantizable else None
            if t is not None:
                yield name + suffix, (t if slot.expert is None else t[slot.expert]).detach()


def save_checkpoint(model: nn.Module, dst: str | Path, max_shard_bytes: int = 2**30) -> Path:
    """Write ``config.json``, safetensors shards and ``model.safetensors.index.json`` to ``dst``."""
    tensors = checkpoint_tensors(model)
    return _write(dst, model.config.to_dict(), tensors, max_shard_bytes, desc="saving")


def quantize_checkpoint(src: str | Path, dst: str | Path, max_shard_bytes: int = 2**30) -> Path:
    """Copy the checkpoint at ``src`` to ``dst`` with every FP8-eligible weight (:func:`fp8_quantizable`)
    stored as e4m3 plus ``<name>_scale_inv``; other tensors keep their dtype. Shard by shard."""
    src = Path(src)
    config = json.loads((src / "config.json").read_text())
    GLM52Config.from_dict(config)  # refuse anything that is not a glm_moe_dsa checkpoint
    config["quantization_config"] = QUANTIZATION_CONFIG
    weight_map, _ = _weight_map(src)

    def tensors() -> Iterator[tuple[str, torch.Tensor]]:
        for file in sorted(set(weight_map.values())):
            with safe_open(str(src / file), framework="pt") as f:
                for name in f.keys():
                    t = f.get_tensor(name)
                    if name.endswith(SCALE_SUFFIX) or t.dtype == torch.float8_e4m3fn:
                        raise ValueError(f"tensor {name} in {src / file}: {src} is already FP8")
                    if fp8_quantizable(name, tuple(t.shape)):
                        q, scale = quantize_fp8_block(t)
                        yield name, q
                        yield name + SCALE_SUFFIX, scale
                    else:
                        yield name, t

    dst = _write(dst, config, tensors(), max_shard_bytes, desc="quantizing")
    for extra in ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (src / extra).is_file():
            shutil.copy(src / extra, dst / extra)
    return dst


def _write(dst: str | Path, config: dict, tensors: Iterator[tuple[str, torch.Tensor]], max_shard_bytes: int,
           desc: str) -> Path:
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    total = 0
    for name, t in tqdm(tensors, desc=desc, unit="tensor", file=sys.stderr, disable=None, leave=False):
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            _flush(dst, shards, len(shards))
            shards.append({})
            size = 0
        shards[-1][name] = t.contiguous().cpu()
        size += nbytes
        total += nbytes
    _flush(dst, shards, len(shards))
    count = len(shards)
    weight_map = {}
    for i in range(1, count + 1):
        tmp = dst / f"shard-{i}.tmp"
        final = f"model-{i:05d}-of-{count:05d}.safetensors"
        tmp.rename(dst / final)
        with safe_open(str(dst / final), framework="pt") as f:
            weight_map.update({k: final for k in f.keys()})
    (dst / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


def _flush(dst: Path, shards: list[dict[str, torch.Tensor]], number: int) -> None:
    """Write the open (last) shard under a temporary name and drop its tensors from memory."""
    save_file(shards[-1], str(dst / f"shard-{number}.tmp"), metadata={"format": "pt"})
    shards[-1] = {}
