"""GLM-5.2 (``glm_moe_dsa``): decoder layers, the MTP layer, and the causal LM (DESIGN §2.1).

Module and parameter names are the checkpoint's (``model.layers.{i}.self_attn.q_a_proj.weight``...),
except that routed experts are stacked: ``mlp.experts.gate_proj.weight[e]`` holds checkpoint tensor
``mlp.experts.{e}.gate_proj.weight``. :func:`glm52.loader.checkpoint_layout` spells out the mapping.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .attention import MLAttention
from .config import GLM52Config
from .kv_cache import CacheView
from .layers import MLP, Linear, MoE, RMSNorm, rope_cos_sin, rope_turn


class DecoderLayer(nn.Module):
    """``h = x + Attn(RMSNorm(x))``; ``x' = h + FFN(RMSNorm(h))``.

    The last add is left to the next layer, whose input norm fuses it (``add_rms_norm``): a layer
    returns ``(FFN output, h)`` and takes the previous pair as ``(x, residual)``."""

    def __init__(self, config: GLM52Config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = MLAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = (MoE(config) if config.is_moe_layer(layer_idx)
                    else MLP(config.hidden_size, config.intermediate_size))

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, view: CacheView, topk: torch.Tensor | None,
        residual: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (FFN output, ``h``, the cache slots attended to); the layer's output is the sum of
        the first two. The input is ``x``, or ``x + residual`` (added here, fused with the norm)."""
        n, x = (self.input_layernorm(x), x) if residual is None else self.input_layernorm.add(x, residual)
        a, topk = self.self_attn(n, cos, sin, view, topk)
        n, h = self.post_attention_layernorm.add(a, x)  # h = x + a, fused with the norm
        return self.mlp(n), h, topk


class SharedHead(nn.Module):
    def __init__(self, config: GLM52Config) -> None:
        super().__init__()
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class MTPLayer(DecoderLayer):
    """Multi-token prediction layer (stored after the main layers, e.g. ``model.layers.78``).

    ``z = eh_proj([enorm(embed(tok_{t+1})) | hnorm(h_t)])`` then one full decoder layer with its
    own indexer; ``shared_head.norm`` and the main ``lm_head`` give logits for token t+2.
    """

    def __init__(self, config: GLM52Config, layer_idx: int) -> None:
        super().__init__(config, layer_idx)
        self.enorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.hnorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.eh_proj = Linear(2 * config.hidden_size, config.hidden_size)
        self.shared_head = SharedHead(config)

    def predict(self, embeds: torch.Tensor, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                view: CacheView, shared_topk: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (MTP hidden states, the cache slots attended to). With ``shared_topk`` the layer's own
        indexer is skipped (IndexShare across MTP draft steps)."""
        z = self.eh_proj(torch.cat((self.enorm(embeds), self.hnorm(hidden)), dim=-1))
        out, h, topk = self(z, cos, sin, view, shared_topk)
        return out + h, topk


class GLM52Model(nn.Module):
    context_parallel = None  # a glm52.context_parallel.ContextParallel: this rank holds a stripe of the caches

    def __init__(self, config: GLM52Config) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, _weight=torch.empty(
            config.vocab_size, config.hidden_size), _freeze=True)
        n = config.num_hidden_layers
        self.layers = nn.ModuleList([DecoderLayer(config, i) for i in range(n)]
                                    + [MTPLayer(config, n + j) for j in range(config.num_nextn_predict_layers)])
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def view(self, input_ids: torch.Tensor, view: CacheView | None) -> CacheView:
        """``view``, or a throw-away cache for a causal prefill at positions 0..T-1."""
        if view is not None:
            return view
        if self.context_parallel is not None:
            return self.context_parallel.contiguous_view(self.config, *input_ids.shape, self.embed_tokens.weight.dtype,
                                                         input_ids.device)
        return CacheView.contiguous(self.config, *input_ids.shape, self.embed_tokens.weight.dtype, input_ids.device)

    def rope(self, view: CacheView) -> tuple[torch.Tensor, None]:
        """``(turn, None)``: the complex rotation of each new position (:func:`glm52.layers.rope_turn`),
        what every layer's ``apply_rope(x, cos, sin)`` takes as ``cos`` with ``sin=None``."""
        return rope_turn(*rope_cos_sin(view.positions, self.config.qk_rope_head_dim, self.config.rope_theta)), None

    def forward(self, input_ids: torch.Tensor, view: CacheView | None = None) -> torch.Tensor:
        """New tokens ``[B, T]`` -> final-normed hidden states ``[B, T, hidden]``; without ``view``
        a causal prefill at positions 0..T-1."""
        view = self.view(input_ids, view)
        cos, sin = self.rope(view)
        x, residual, topk = self.embed_tokens(input_ids), None, None
        for layer in self.layers[: self.config.num_hidden_layers]:
            x, residual, topk = layer(x, cos, sin, view, None if layer.self_attn.indexer is not None else topk, residual)
        return self.norm(x) if residual is None else self.norm.add(x, residual)[0]


class GLM52ForCausalLM(nn.Module):
    def __init__(self, config: GLM52Config) -> None:
        super().__init__()
        self.config = config
        self.model = GLM52Model(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size)
        if config.fp8_compute == "fp8":
            for module in self.modules():
                if isinstance(module, Linear):
                    module.fp8_compute = True

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        indexer_precision: str = "exact",
        fp8_compute: str = "dequant",
        parallel=None,
        indexer_hadamard: bool = True,
    ) -> GLM52ForCausalLM:
        """Load a Hugging Face checkpoint directory (sharded or single-file, BF16 or FP8).

        ``dtype=None`` keeps every tensor as stored (FP8 weights stay FP8 with their scales);
        a floating ``dtype`` casts all weights to it, dequantizing FP8 ones. ``parallel`` (a
        :class:`glm52.parallel.ParallelHandle` from ``init_parallel``) loads this rank's shard only.
        ``indexer_precision``, ``indexer_hadamard`` and ``fp8_compute`` are the runtime choices of
        :class:`GLM52Config`.
        """
        from .loader import load_checkpoint

        config = GLM52Config.from_pretrained(path, indexer_precision=indexer_precision, fp8_compute=fp8_compute,
                                             indexer_hadamard=indexer_hadamard)
        if parallel is not None:
            from .parallel import build_parallel_model

            model = build_parallel_model(config, parallel)
        else:
            with torch.device("meta"):
                model = cls(config)
        load_checkpoint(model, path, dtype=dtype, device=device)
        return model.eval()

    def _check_ids(self, name: str, ids: torch.Tensor, check_values: bool = True) -> None:
        """Type and shape always (host metadata); the value range only with ``check_values``, since
        reading ``ids.min()``/``max()`` is a host sync."""
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
            got = f"{ids.dtype} {tuple(ids.shape)}" if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"{name} must be an int32/int64 tensor [batch, tokens]; got {got}")
        if ids.shape[1] == 0:
            raise ValueError(f"{name} must hold at least one token per sequence; got shape {tuple(ids.shape)}")
        if check_values and ids.numel() and (ids.min() < 0 or ids.max() >= self.config.vocab_size):
            raise ValueError(f"{name} values must lie in [0, {self.config.vocab_size}); "
                             f"got min {int(ids.min())}, max {int(ids.max())}")

    def hidden_states(self, input_ids: torch.Tensor, view: CacheView | None = None,
                      check_values: bool = True) -> torch.Tensor:
        """Final-normed hidden states ``[B, T, hidden]`` (what the MTP layer takes as ``h_t``).
        ``check_values=False`` skips the id range check (a host sync) for ids known to be valid
        (the engine's: prompts checked on the host, the rest sampled)."""
        self._check_ids("input_ids", input_ids, check_values)
        return self.model(input_ids, view)

    def forward(self, input_ids: torch.Tensor, view: CacheView | None = None) -> torch.Tensor:
        """``input_ids [B, T]`` -> logits ``[B, T, vocab]``. Without ``view``: a full causal
        prefill at positions 0..T-1; with one: the new tokens of cached sequences (see
        :class:`glm52.kv_cache.CacheView`)."""
        return self.lm_head(self.hidden_states(input_ids, view))

    def mtp(self, hidden: torch.Tensor, next_ids: torch.Tensor, depth: int = 0, view: CacheView | None = None,
            shared_topk: torch.Tensor | None = None, check_values: bool = True,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """MTP draft: ``hidden [B, T, hidden]`` holds h_t for the positions of ``view`` (from
        :meth:`hidden_states`, or the MTP layer's own output for later draft steps) and
        ``next_ids [B, T]`` the tokens t+1. Returns (MTP hidden states ``[B, T, hidden]``, logits for
        tokens t+2 ``[B, T, vocab]``, the cache slots attended to ``[B, T, k]``). ``shared_topk``
        reuses an earlier step's selection instead of running the MTP layer's indexer;
        ``check_values`` as in :meth:`hidden_states`."""
        n_mtp = self.config.num_nextn_predict_layers
        if not 0 <= depth < n_mtp:
            raise ValueError(f"depth must be in [0, {n_mtp}) (num_nextn_predict_layers); got {depth}")
        self._check_ids("next_ids", next_ids, check_values)
        if hidden.dim() != 3 or hidden.shape[:2] != next_ids.shape or hidden.shape[2] != self.config.hidden_size:
            raise ValueError(f"hidden must be [batch, tokens, {self.config.hidden_size}] matching next_ids "
                             f"{tuple(next_ids.shape)}; got {tuple(hidden.shape)}")
        layer = self.model.layers[self.config.num_hidden_layers + depth]
        view = self.model.view(next_ids, view)
        cos, sin = self.model.rope(view)
        out, topk = layer.predict(self.model.embed_tokens(next_ids), hidden.to(self.model.embed_tokens.weight.dtype),
                                  cos, sin, view, shared_topk)
        return out, self.lm_head(layer.shared_head.norm(out)), topk
