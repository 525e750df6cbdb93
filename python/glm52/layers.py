"""Building blocks: RMSNorm, LayerNorm, (FP8-capable) Linear, interleaved RoPE, SwiGLU MLP, MoE.

Sizes that a tensor- or expert-parallel split would shard (intermediate sizes, the range of local
experts) are constructor arguments, so a parallel wrapper can build shards of these same modules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .config import GLM52Config


def _param(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape), requires_grad=False)


def converted(owner: nn.Module, name: str, make, *sources: torch.Tensor, tag: object = None) -> torch.Tensor:
    """``make()`` (a dequantized or fp32 copy of small weights) computed once and reused while
    ``sources`` keep their storage and see no in-place write (torch's version counter), instead of
    a conversion op per call (``tag``: anything else the result depends on, e.g. its dtype). Kept
    as a plain attribute (not in the state dict). Traced code (``torch.compile``) converts inline:
    the compiler fuses it."""
    if torch.compiler.is_compiling():
        return make()
    key = (tag, *((t.data_ptr(), t._version, t.dtype, t.device) for t in sources))
    cached = owner.__dict__.get(name)
    if cached is None or cached[0] != key:
        cached = owner.__dict__[name] = (key, make())
    return cached[1]


class RMSNorm(nn.Module):
    """``x * rsqrt(mean(x^2) + eps) * w`` computed in fp32: one ``rms_norm`` op (``add_rms_norm``
    fused with the residual add), instead of the ~8 elementwise ops the torch expression takes.
    A weight whose dtype differs from the input's takes that torch expression."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _param(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype:
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return (xf * self.weight.float()).to(x.dtype)
        return kernels.rms_norm(x.contiguous(), self.weight, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(norm(x + residual), x + residual)``, the sum rounded to x's dtype as a plain add is."""
        if x.dtype != self.weight.dtype or residual.dtype != x.dtype:
            total = x + residual
            return self(total), total
        return kernels.add_rms_norm(x.contiguous(), residual.contiguous(), self.weight, self.eps)


class LayerNorm(nn.Module):
    """LayerNorm with weight and bias, computed in fp32 (the indexer's ``k_norm``)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _param(dim)
        self.bias = _param(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = converted(self, "_weight_fp32", self.weight.float, self.weight)
        bias = converted(self, "_bias_fp32", self.bias.float, self.bias)
        out = F.layer_norm(x.float(), x.shape[-1:], weight, bias, self.eps)
        return out.to(x.dtype)


FP8_BLOCK = 128


class Linear(nn.Module):
    """``y = x Wᵀ`` with ``W [out, in]``, or a stack ``W [E, out, in]`` of expert weights.

    The weight is high precision, or ``float8_e4m3fn`` with ``weight_scale_inv`` (fp32, one scale per
    128x128 block, edge blocks partial) when it was loaded that way from an FP8 checkpoint. FP8
    weights are dequantized to the activation dtype, unless ``fp8_compute`` (set by the model from
    ``config.fp8_compute``) and both sizes are multiples of 128: then the activation is quantized
    per token group and the FP8 block-scaled GEMM runs.
    """

    fp8_compute = False

    def __init__(self, in_features: int, out_features: int, num_experts: int | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        shape = (out_features, in_features) if num_experts is None else (num_experts, out_features, in_features)
        self.weight = _param(*shape)
        self.register_parameter("weight_scale_inv", None)

    def dense_weight(self, dtype: torch.dtype, expert: int | None = None) -> torch.Tensor:
        """The weight in ``dtype``; FP8 weights dequantized. A non-expert weight is converted once
        and reused (the attention's absorbed ``kv_b_proj``, off-grid FP8 projections and the
        indexer's fp32 ``weights_proj`` run every step): memory for speed, small matrices only."""
        w = self.weight if expert is None else self.weight[expert]
        if self.weight_scale_inv is None:
            if expert is not None or w.dtype == dtype:
                return w.to(dtype)
            return converted(self, "_dense", lambda: w.to(dtype), w, tag=dtype)
        s = self.weight_scale_inv if expert is None else self.weight_scale_inv[expert]
        if expert is not None:
            return kernels.dequant_fp8_block(w, s, out_dtype=dtype)
        return converted(self, "_dense", lambda: kernels.dequant_fp8_block(w, s, out_dtype=dtype), w, s, tag=dtype)

    @property
    def fp8_ready(self) -> bool:
        """FP8 weights on the 128-block grid: the FP8 GEMM kernels can take them as they are."""
        return (self.fp8_compute and self.weight_scale_inv is not None
                and self.in_features % FP8_BLOCK == 0 and self.out_features % FP8_BLOCK == 0)

    def forward(self, x: torch.Tensor, expert: int | None = None) -> torch.Tensor:
        if expert is None and self.weight.dim() == 2 and self.fp8_ready:
            q, scale = kernels.quant_fp8_per_token_group(x.reshape(-1, self.in_features), FP8_BLOCK)
            y = kernels.fp8_gemm(q, scale, self.weight, self.weight_scale_inv)
            return y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.dense_weight(x.dtype, expert))


def fused_gate_up(owner: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``owner.gate_proj`` and ``owner.up_proj`` (FP8, ready) as one ``[..., 2I, H]`` weight with its
    block scales, gate rows first: what the fused gate+up GEMMs take. Built once; the two weights
    then become views into it, so no second copy stays in memory."""
    gate, up = owner.gate_proj, owner.up_proj
    fused = getattr(owner, "_gate_up", None)
    # torch.compile cannot trace data pointers; a compiled decode step runs after an eager prefill built the weight.
    if fused is not None and (torch.compiler.is_compiling() or fused[0].data_ptr() == gate.weight.data_ptr() and
                              fused[0][..., gate.out_features:, :].data_ptr() == up.weight.data_ptr()):
        return fused
    i = gate.out_features
    w13 = torch.cat((gate.weight, up.weight), dim=-2)
    s13 = torch.cat((gate.weight_scale_inv, up.weight_scale_inv), dim=-2)
    for linear, rows, scale_rows in ((gate, slice(0, i), slice(0, i // FP8_BLOCK)),
                                     (up, slice(i, 2 * i), slice(i // FP8_BLOCK, 2 * i // FP8_BLOCK))):
        linear.weight = nn.Parameter(w13[..., rows, :], requires_grad=False)
        linear.weight_scale_inv = nn.Parameter(s13[..., scale_rows, :], requires_grad=False)
    owner._gate_up = (w13, s13)
    return owner._gate_up


def rope_cos_sin(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos, sin [..., dim/2]`` for ``positions [...]``: pair i at position p turns by ``p * theta^(-2i/dim)``."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim))
    angles = positions.float().unsqueeze(-1) * inv_freq
    return angles.cos(), angles.sin()


def rope_turn(cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The rotation ``cos + i sin`` (complex64) that :func:`apply_rope` multiplies each pair by."""
    return torch.complex(cos, sin)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor | None) -> torch.Tensor:
    """Interleaved RoPE on ``x [B, T, ..., dim]`` with ``cos, sin [B or 1, T, dim/2]`` (or ``[T, dim/2]``):
    pairs (0,1), (2,3), ... rotate; layout kept. ``sin=None``: ``cos`` is already the complex
    ``cos + i sin`` (:func:`rope_turn`, computed once per forward instead of once per call)."""
    turn = cos if sin is None else rope_turn(cos, sin)
    if turn.dim() == 2:
        turn = turn.unsqueeze(0)
    # The pairs as complex numbers turned by cos + i sin: 3 ops instead of ~10 elementwise ones.
    turn = turn.view(turn.shape[:2] + (1,) * (x.dim() - 3) + turn.shape[2:])
    pairs = torch.view_as_complex(x.float().contiguous().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * turn).flatten(-2).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU: ``down(silu(gate x) * up x)``; dense layers and shared experts."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = Linear(hidden_size, intermediate_size)
        self.up_proj = Linear(hidden_size, intermediate_size)
        self.down_proj = Linear(intermediate_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj.fp8_ready and self.up_proj.fp8_ready and self.down_proj.fp8_ready:
            w13, s13 = fused_gate_up(self)
            flat = x.reshape(-1, x.shape[-1])
            y = kernels.fp8_swiglu_mlp(flat, w13, s13, self.down_proj.weight, self.down_proj.weight_scale_inv)
            return y.to(x.dtype).view_as(x)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    """``gate.weight [E, hidden]`` and the selection-only ``e_score_correction_bias`` (fp32 buffer).

    The router GEMM runs in ``config.moe_router_dtype`` (the releases say float32, as transformers
    computes it); sigmoid, bias and selection always run in fp32.
    """

    def __init__(self, config: GLM52Config) -> None:
        super().__init__()
        self.config = config
        self.weight = _param(config.n_routed_experts, config.hidden_size)
        self.register_buffer("e_score_correction_bias", torch.empty(config.n_routed_experts, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        dtype = getattr(torch, c.moe_router_dtype)
        weight = converted(self, "_weight_router", lambda: self.weight.to(dtype), self.weight, tag=dtype)
        logits = F.linear(x.to(dtype), weight).float()
        return kernels.moe_route(logits, self.e_score_correction_bias, c.num_experts_per_tok, c.n_group,
                                 c.topk_group, c.routed_scaling_factor, c.norm_topk_prob)


class Experts(nn.Module):
    """Routed experts ``first_expert .. first_expert + num_experts - 1``, weights stacked ``[E, out, in]``.

    Checkpoint tensor ``experts.{first_expert + e}.gate_proj.weight`` is ``gate_proj.weight[e]``.
    """

    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int, first_expert: int = 0) -> None:
        super().__init__()
        self.num_experts, self.first_expert = num_experts, first_expert
        self.gate_proj = Linear(hidden_size, intermediate_size, num_experts)
        self.up_proj = Linear(hidden_size, intermediate_size, num_experts)
        self.down_proj = Linear(intermediate_size, hidden_size, num_experts)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``x [T, hidden]``, routing ``weights``/``ids [T, k]`` -> this shard's share of the routed sum."""
        if self.gate_proj.fp8_ready and self.up_proj.fp8_ready and self.down_proj.fp8_ready:
            w13, s13 = fused_gate_up(self)
            return kernels.fp8_moe_experts(x, weights, ids, w13, s13, self.down_proj.weight,
                                           self.down_proj.weight_scale_inv, self.first_expert)
        local = ids - self.first_expert
        if self.gate_proj.weight_scale_inv is None:
            return self._grouped(x, weights, local)
        # FP8 weights off the FP8 kernels' grid: dequantize only the experts hit (host loop).
        out = torch.zeros_like(x)
        local = local.long()
        for e in torch.unique(local[(local >= 0) & (local < self.num_experts)]).tolist():
            rows, slot = (local == e).nonzero(as_tuple=True)
            h = x[rows]
            y = self.down_proj(F.silu(self.gate_proj(h, e)) * self.up_proj(h, e), e)
            out.index_add_(0, rows, (y.float() * weights[rows, slot, None]).to(x.dtype))
        return out

    def _grouped(self, x: torch.Tensor, weights: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        """High-precision experts without a host sync: the expert-sorted layout of ``moe_permute``
        (alignment 1, so segments are back to back), grouped GEMMs over it, the weighted combine."""
        a, _, m_indices, row_map = kernels.moe_permute(x.contiguous(), None, local, self.num_experts, 1)
        rows = m_indices.long()
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, rows.clamp_min(0), (rows >= 0).long())
        ends = counts.cumsum(0).int()  # segment e is rows [ends[e-1], ends[e])
        gate = grouped_linear(a, self.gate_proj.weight, ends, rows)
        up = grouped_linear(a, self.up_proj.weight, ends, rows)
        y = grouped_linear(F.silu(gate) * up, self.down_proj.weight, ends, rows)
        return kernels.moe_unpermute(y, weights, row_map).to(x.dtype)


def grouped_linear(a: torch.Tensor, w: torch.Tensor, ends: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """``out[r] = a[r] @ w[e(r)]ᵀ`` for expert-sorted rows: ``a [R, K]``, ``w [E, N, K]``, ``ends [E]``
    int32 (segment ends), ``experts [R]`` (e(r), −1 on padding rows, whose output is unspecified).

    ``torch._grouped_mm`` where it runs (BF16; other dtypes on the CPU in eager mode: its meta
    kernel, which tracing uses, takes BF16 only) and its 16-byte stride rule holds; else each row
    gathers its expert's weight (memory ``R * N * K``: small models only)."""
    w = w.to(a.dtype)
    row_bytes = {a.shape[1] * a.element_size(), w.shape[1] * a.element_size()}
    eager_cpu = a.device.type == "cpu" and not torch.compiler.is_compiling()
    if (a.dtype == torch.bfloat16 or eager_cpu) and all(b % 16 == 0 for b in row_bytes):
        return torch._grouped_mm(a, w.transpose(1, 2), offs=ends)
    return torch.einsum("rk,rnk->rn", a, w[experts.clamp_min(0)])


class MoE(nn.Module):
    """Sigmoid-routed experts plus the shared expert (DESIGN §2.1)."""

    def __init__(self, config: GLM52Config, num_local_experts: int | None = None, first_expert: int = 0) -> None:
        super().__init__()
        n_local = config.n_routed_experts if num_local_experts is None else num_local_experts
        self.gate = Router(config)
        self.experts = Experts(config.hidden_size, config.moe_intermediate_size, n_local, first_expert)
        self.shared_experts = (MLP(config.hidden_size, config.moe_intermediate_size * config.n_shared_experts)
                               if config.n_shared_experts else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        weights, ids = self.gate(flat)
        out = self.experts(flat, weights, ids).view_as(x)
        return out if self.shared_experts is None else out + self.shared_experts(x)
