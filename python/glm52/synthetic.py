"""Synthetic models with known behaviour, for tests, benchmarks and the demo.

:func:`bigram_model` silences every block's contribution to the residual stream (attention output
and MLP down projections zeroed), so the next token depends on the current token alone, and wires
the MTP layer to pass the next token's embedding through: its draft of ``x_{t+2}`` is then exactly
the target's greedy choice. ``draft_noise`` perturbs the MTP layer into a worse drafter (0.02
accepts about half the drafts). Attention, indexer, MoE routing and caches all still run.
"""

from __future__ import annotations

import torch

from .checkpoint import init_random_
from .config import GLM52Config
from .layers import MLP
from .model import GLM52ForCausalLM


@torch.no_grad()
def bigram_model(config: GLM52Config, seed: int = 0, draft_noise: float = 0.0) -> GLM52ForCausalLM:
    model = init_random_(GLM52ForCausalLM(config), seed).eval()
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight.zero_()
        mlp = layer.mlp
        downs = [mlp.down_proj] if isinstance(mlp, MLP) else [mlp.experts.down_proj, mlp.shared_experts.down_proj]
        for linear in downs:
            linear.weight.zero_()
    hidden = config.hidden_size
    mtp = model.model.layers[config.num_hidden_layers]
    mtp.enorm.weight.fill_(1.0)
    mtp.eh_proj.weight.zero_()
    mtp.eh_proj.weight[:, :hidden] = torch.eye(hidden)
    mtp.shared_head.norm.weight.copy_(model.model.norm.weight)
    noise = torch.randn(mtp.eh_proj.weight.shape, generator=torch.Generator().manual_seed(seed + 1))
    mtp.eh_proj.weight.add_(draft_noise * noise)
    return model
