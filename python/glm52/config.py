"""GLM52Config: the architecture's hyperparameters under their Hugging Face names (DESIGN §2).

``GLM52Config.from_pretrained(dir)`` reads a ``config.json`` written for transformers'
``glm_moe_dsa``; ``GLM52Config.preset(name)`` gives the published sizes. Unknown fields and
settings this implementation does not support raise ``ValueError`` naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

MODEL_TYPE = "glm_moe_dsa"
INDEXER_PRECISIONS = ("exact", "fp8")
FP8_COMPUTE_MODES = ("dequant", "fp8")

# config.json fields that carry no architecture information for us (bookkeeping, training,
# generation defaults) or that are derived and checked for consistency in ``_check_derived``.
_IGNORED_FIELDS = {
    "architectures", "transformers_version", "dtype", "torch_dtype", "use_cache",
    "initializer_range", "output_router_logits", "head_dim", "auto_map", "ep_size",
    "moe_layer_freq", "pretraining_tp", "attention_dropout", "router_aux_loss_coef",
    "aux_loss_alpha", "seq_aux", "num_experts",
}
_DERIVED_FIELDS = {"qk_head_dim", "mlp_layer_types", "layer_types", "rope_parameters", "rope_theta",
                   "rope_scaling", "quantization_config", "model_type"}
# Fields that must hold one particular value: anything else is a different architecture.
_FIXED_FIELDS = {
    "hidden_act": "silu", "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    "rope_interleave": True, "indexer_rope_interleave": True,
}


@dataclasses.dataclass(frozen=True)
class GLM52Config:
    vocab_size: int = 154880
    hidden_size: int = 6144
    intermediate_size: int = 12288
    moe_intermediate_size: int = 2048
    num_hidden_layers: int = 78
    num_attention_heads: int = 64
    num_key_value_heads: int = 64
    q_lora_rank: int = 2048
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 192
    qk_rope_head_dim: int = 64
    v_head_dim: int = 256
    first_k_dense_replace: int = 3
    n_routed_experts: int = 256
    num_experts_per_tok: int = 8
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 2.5
    index_n_heads: int = 32
    index_head_dim: int = 128
    index_topk: int = 2048
    index_topk_freq: int | None = None
    index_skip_topk_offset: int | None = None
    index_topk_pattern: str | None = None
    indexer_types: tuple[str, ...] | None = None  # derived from the three above when not given
    index_share_for_mtp_iteration: bool = False
    num_nextn_predict_layers: int = 0
    rope_theta: float = 10000.0
    max_position_embeddings: int = 202752
    rms_norm_eps: float = 1e-5
    bos_token_id: int | None = 0
    eos_token_id: int | tuple[int, ...] | None = 1
    pad_token_id: int | None = None
    quantization_config: dict | None = None
    # Runtime choices, not config.json fields: "exact" (fp32 indexer scores) or "fp8" (DESIGN §2.1);
    # how FP8 weights are used: "dequant" (dequantized to the activation dtype: exact) or "fp8"
    # (activations quantized per token group, FP8 block-scaled GEMMs: the production path).
    indexer_precision: str = "exact"
    fp8_compute: str = "dequant"

    def __post_init__(self) -> None:
        types = self.indexer_types
        if types is None:
            types = _derive_indexer_types(self)
        object.__setattr__(self, "indexer_types", tuple(types))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        _validate(self)

    # ---- derived facts the model and planner use -------------------------------------------
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def num_layers_total(self) -> int:
        """Main layers plus the MTP layers stored after them (``model.layers.{N}``...)."""
        return self.num_hidden_layers + self.num_nextn_predict_layers

    def is_moe_layer(self, i: int) -> bool:
        return i >= self.first_k_dense_replace

    def has_indexer(self, i: int) -> bool:
        """Main layers follow ``indexer_types``; MTP layers always carry their own indexer."""
        return i >= self.num_hidden_layers or self.indexer_types[i] == "full"

    # ---- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any], **overrides: Any) -> GLM52Config:
        d = dict(d)
        model_type = d.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config field 'model_type' is {model_type!r}; expected {MODEL_TYPE!r}")
        for name, want in _FIXED_FIELDS.items():
            if name in d and d.pop(name) != want:
                raise ValueError(f"config field {name!r} must be {want!r} for GLM-5.x (unsupported variant)")
        kwargs: dict[str, Any] = {"rope_theta": _rope_theta(d)}
        names = {f.name for f in dataclasses.fields(cls)} - {"indexer_precision", "fp8_compute", "rope_theta"}
        unknown = sorted(k for k in d if k not in names | _IGNORED_FIELDS | _DERIVED_FIELDS)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}: not part of the glm_moe_dsa architecture")
        for k in names:
            if k in d:
                v = d[k]
                kwargs[k] = tuple(v) if isinstance(v, list) else v
        if isinstance(kwargs.get("index_topk_pattern"), tuple):  # list form of the pattern
            kwargs["index_topk_pattern"] = "".join({"full": "F", "shared": "S"}.get(c, c) for c in kwargs["index_topk_pattern"])
        kwargs.update(overrides)
        config = cls(**kwargs)
        _check_derived(config, d)
        return config

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides: Any) -> GLM52Config:
        """Read ``config.json`` from a checkpoint directory (or the file itself)."""
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json at {file}")
        try:
            d = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(d, **overrides)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{file}: {e}") from None

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GLM52Config:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> GLM52Config:
        if "indexer_types" not in changes and {"index_topk_freq", "index_skip_topk_offset",
                                               "index_topk_pattern", "num_hidden_layers"} & changes.keys():
            changes["indexer_types"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` transformers' ``GlmMoeDsaConfig`` reads (HF field names)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k in ("indexer_precision", "fp8_compute", "rope_theta", "index_topk_pattern", "quantization_config"):
            d.pop(k)
        for k in ("index_topk_freq", "index_skip_topk_offset"):
            if d[k] is None:
                d.pop(k)
        if self.index_topk_pattern is not None:
            d["index_topk_pattern"] = self.index_topk_pattern
        if self.quantization_config is not None:
            d["quantization_config"] = self.quantization_config
        d["indexer_types"] = list(self.indexer_types)
        if isinstance(d["eos_token_id"], tuple):
            d["eos_token_id"] = list(d["eos_token_id"])
        d.update(_FIXED_FIELDS)
        d.update(architectures=["GlmMoeDsaForCausalLM"], model_type=MODEL_TYPE,
                 rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta})
        return d


def _rope_theta(d: dict[str, Any]) -> float:
    params = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"config field 'rope_parameters.rope_type' is {rope_type!r}; only 'default' RoPE "
                         "(no YaRN/scaling) is supported")
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    if "rope_theta" in params and "rope_theta" in d and d["rope_theta"] != params["rope_theta"]:
        raise ValueError(f"config fields 'rope_theta' ({d['rope_theta']}) and 'rope_parameters.rope_theta' "
                         f"({params['rope_theta']}) disagree")
    return float(theta)


def _derive_indexer_types(c: GLM52Config) -> list[str]:
    """transformers' ``GlmMoeDsaConfig`` rule: a pattern wins, else freq/offset, else all full."""
    n = c.num_hidden_layers
    if c.index_topk_pattern is not None:
        bad = set(c.index_topk_pattern) - {"F", "S"}
        if bad or len(c.index_topk_pattern) != n:
            raise ValueError(f"config field 'index_topk_pattern' must be {n} characters of 'F'/'S'; "
                             f"got {c.index_topk_pattern!r}")
        return ["full" if ch == "F" else "shared" for ch in c.index_topk_pattern]
    if c.index_topk_freq is None:
        return ["full"] * n
    freq = max(c.index_topk_freq, 1)
    offset = 2 if c.index_skip_topk_offset is None else c.index_skip_topk_offset  # transformers' default
    return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(n)]


def _validate(c: GLM52Config) -> None:
    positive = ("vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
                "num_attention_heads", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                "v_head_dim", "n_routed_experts", "num_experts_per_tok", "n_group", "topk_group",
                "index_n_heads", "index_head_dim", "index_topk", "max_position_embeddings")
    for name in positive:
        v = getattr(c, name)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"config field {name!r} must be a positive integer; got {v!r}")
    for name in ("n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers"):
        v = getattr(c, name)
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"config field {name!r} must be a non-negative integer; got {v!r}")
    if c.num_key_value_heads != c.num_attention_heads:
        raise ValueError(f"config field 'num_key_value_heads' ({c.num_key_value_heads}) must equal "
                         f"'num_attention_heads' ({c.num_attention_heads}) for MLA")
    if c.qk_rope_head_dim % 2:
        raise ValueError(f"config field 'qk_rope_head_dim' must be even; got {c.qk_rope_head_dim}")
    if c.index_head_dim < c.qk_rope_head_dim:
        raise ValueError(f"config field 'index_head_dim' ({c.index_head_dim}) must be >= 'qk_rope_head_dim' "
                         f"({c.qk_rope_head_dim}): the indexer rotates its first qk_rope_head_dim dims")
    if c.n_routed_experts % c.n_group:
        raise ValueError(f"config field 'n_routed_experts' ({c.n_routed_experts}) must be divisible by "
                         f"'n_group' ({c.n_group})")
    if c.topk_group > c.n_group:
        raise ValueError(f"config field 'topk_group' ({c.topk_group}) must be <= 'n_group' ({c.n_group})")
    per_group = c.n_routed_experts // c.n_group
    if c.n_group > 1 and per_group < 2:
        raise ValueError(f"group-limited routing scores each group by its top-2 experts; 'n_routed_experts' / "
                         f"'n_group' is {per_group}")
    if c.num_experts_per_tok > c.topk_group * per_group:
        raise ValueError(f"config field 'num_experts_per_tok' ({c.num_experts_per_tok}) exceeds the "
                         f"{c.topk_group * per_group} experts reachable in 'topk_group' groups")
    if c.first_k_dense_replace > c.num_hidden_layers:
        raise ValueError(f"config field 'first_k_dense_replace' ({c.first_k_dense_replace}) exceeds "
                         f"'num_hidden_layers' ({c.num_hidden_layers})")
    types = c.indexer_types
    if len(types) != c.num_hidden_layers or set(types) - {"full", "shared"}:
        raise ValueError(f"config field 'indexer_types' must list 'full'/'shared' for each of the "
                         f"{c.num_hidden_layers} layers; got {list(types)}")
    if types[0] != "full":
        raise ValueError("config field 'indexer_types': layer 0 must be 'full' (a shared layer reuses the top-k "
                         "of the nearest preceding full layer)")
    if c.indexer_precision not in INDEXER_PRECISIONS:
        raise ValueError(f"indexer_precision must be one of {INDEXER_PRECISIONS}; got {c.indexer_precision!r}")
    if c.fp8_compute not in FP8_COMPUTE_MODES:
        raise ValueError(f"fp8_compute must be one of {FP8_COMPUTE_MODES}; got {c.fp8_compute!r}")
    q = c.quantization_config
    if q is not None:
        block = list(q.get("weight_block_size", [128, 128]))
        if q.get("quant_method", "fp8") != "fp8" or block != [128, 128]:
            raise ValueError(f"config field 'quantization_config' must describe fp8 with weight_block_size "
                             f"[128, 128]; got {q}")


def _check_derived(c: GLM52Config, d: dict[str, Any]) -> None:
    """Fields transformers writes next to their sources must agree with what we derive."""
    if "qk_head_dim" in d and d["qk_head_dim"] != c.qk_head_dim:
        raise ValueError(f"config field 'qk_head_dim' ({d['qk_head_dim']}) != qk_nope_head_dim + qk_rope_head_dim "
                         f"({c.qk_head_dim})")
    dense = c.first_k_dense_replace
    mlp_types = ["dense"] * dense + ["sparse"] * (c.num_hidden_layers - dense)
    if "mlp_layer_types" in d and list(d["mlp_layer_types"]) != mlp_types:
        raise ValueError(f"config field 'mlp_layer_types' {d['mlp_layer_types']} disagrees with "
                         f"first_k_dense_replace={dense} (expected {mlp_types})")
    if "layer_types" in d and set(d["layer_types"]) != {"indexed_attention"}:
        raise ValueError(f"config field 'layer_types' must be all 'indexed_attention'; got {d['layer_types']}")
    if "indexer_types" in d and any(k in d for k in ("index_topk_freq", "index_topk_pattern")):
        derived = tuple(_derive_indexer_types(c))
        if derived != c.indexer_types:
            raise ValueError(f"config field 'indexer_types' {list(c.indexer_types)} disagrees with "
                             f"index_topk_freq/index_skip_topk_offset/index_topk_pattern (which give {list(derived)})")


_GLM5 = dict(
    vocab_size=154880, hidden_size=6144, intermediate_size=12288, moe_intermediate_size=2048,
    num_hidden_layers=78, num_attention_heads=64, num_key_value_heads=64, q_lora_rank=2048, kv_lora_rank=512,
    qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256, first_k_dense_replace=3, n_routed_experts=256,
    num_experts_per_tok=8, n_shared_experts=1, n_group=1, topk_group=1, norm_topk_prob=True,
    routed_scaling_factor=2.5, index_n_heads=32, index_head_dim=128, index_topk=2048,
    num_nextn_predict_layers=1, rope_theta=1e6, max_position_embeddings=202752, rms_norm_eps=1e-5,
    bos_token_id=0, eos_token_id=(154820, 154827, 154829), pad_token_id=154820,
)
PRESETS: dict[str, dict[str, Any]] = {
    "glm-5": _GLM5,
    "glm-5.1": _GLM5,
    "glm-5.2": {**_GLM5, "index_topk_freq": 4, "index_skip_topk_offset": 3, "index_share_for_mtp_iteration": True,
                "rope_theta": 8e6, "max_position_embeddings": 1048576},
    # Every GLM-5.2 feature (dense + MoE layers, IndexShare, MTP) at dims that run in seconds on a CPU.
    "tiny": dict(
        vocab_size=1024, hidden_size=128, intermediate_size=256, moe_intermediate_size=64, num_hidden_layers=8,
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=96, kv_lora_rank=64, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, first_k_dense_replace=3, n_routed_experts=16, num_experts_per_tok=4,
        n_shared_experts=1, n_group=1, topk_group=1, routed_scaling_factor=2.5, index_n_heads=8,
        index_head_dim=32, index_topk=16, index_topk_freq=4, index_skip_topk_offset=3,
        index_share_for_mtp_iteration=True, num_nextn_predict_layers=1, rope_theta=8e6,
        max_position_embeddings=4096, eos_token_id=(1,), pad_token_id=0,
    ),
}
