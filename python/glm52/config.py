"""GLM52Config: the architecture's hyperparameters under their Hugging Face names (DESIGN §2).

``GLM52Config.from_pretrained(dir)`` reads a ``config.json`` written for transformers'
``glm_moe_dsa`` as published: zai-org/GLM-5.2-FP8, zai-org/GLM-5.2, zai-org/GLM-5.1-FP8,
zai-org/GLM-5.1, zai-org/GLM-5-FP8, zai-org/GLM-5, and what ``GlmMoeDsaConfig`` of transformers
5.11 - 5.24 writes. ``GLM52Config.preset(name)`` gives the published sizes.

Every config.json field falls in exactly one class, and the class decides what happens to it:

* **architecture fields** (the dataclass fields, e.g. ``hidden_size``, ``moe_router_dtype``): read
  and validated; a value this implementation does not run is a ``ValueError`` naming field and value;
* **fixed fields** (``_FIXED_FIELDS``): one supported value (``hidden_act: silu``, ...); any other
  value is a different architecture: ``ValueError``;
* **derived fields** (``_DERIVED_FIELDS``): written next to their sources (``mlp_layer_types``,
  ``layer_types``, ``qk_head_dim``, the ``num_experts`` alias, RoPE, quantization, ...) and checked
  against them; a disagreement is a ``ValueError``. ``head_dim`` is ignored: published values (64,
  192) do not describe the MLA heads;
* **known non-architecture fields** (``KNOWN_NON_ARCHITECTURE_FIELDS``, each with the release or
  transformers version that writes it): bookkeeping, training and generation settings; ignored;
* **anything else** (a field never seen): if its name carries an architecture word (RoPE/scaling,
  attention/heads/window, quantization, experts/routing, layers, indexer, norms, sizes, MTP, ...:
  ``_ARCHITECTURE_WORDS``) and its value is not ``null``/``false`` (a feature switched off), it may
  change the math and is a ``ValueError`` naming field and value; otherwise an
  :class:`UnknownConfigFieldWarning` names it and loading goes on. When a new release adds such a
  field, add it to ``KNOWN_NON_ARCHITECTURE_FIELDS`` with its source.

Quantization: only the FP8 releases' format (``quant_method: fp8``, ``fmt: e4m3``, dynamic
activations, 128x128 weight blocks) is run; any other (NVFP4 by ModelOpt, compressed-tensors, ...)
is refused in one line naming the format and the checkpoints that load. Error messages summarize
long lists (first entries, count, offending values) instead of printing all 78 entries.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path
from typing import Any

from glm52_ext.ops.attention import HADAMARD_DIMS

MODEL_TYPE = "glm_moe_dsa"
INDEXER_PRECISIONS = ("exact", "fp8")
FP8_COMPUTE_MODES = ("dequant", "fp8")
MOE_ROUTER_DTYPES = ("float32", "bfloat16")  # the router GEMM's dtype; the published releases say float32
SUPPORTED_CHECKPOINTS = ("zai-org/GLM-5.2-FP8", "zai-org/GLM-5.2", "zai-org/GLM-5.1-FP8", "zai-org/GLM-5.1",
                         "zai-org/GLM-5-FP8", "zai-org/GLM-5")


class UnknownConfigFieldWarning(UserWarning):
    """A config.json field never seen before whose name carries no architecture information."""


_TF = "transformers PreTrainedConfig (5.x) to_dict"
# config.json fields that carry no architecture information for us, with where they come from.
KNOWN_NON_ARCHITECTURE_FIELDS = {
    "architectures": "every release (GlmMoeDsaForCausalLM)",
    "transformers_version": "every release; transformers save_pretrained",
    "dtype": "GLM-5/5.1/5.2 releases (bfloat16); the loader follows the stored tensor dtypes",
    "torch_dtype": "transformers 4.x spelling of dtype",
    "use_cache": "GLM-5/5.1/5.2 releases; GlmMoeDsaConfig",
    "initializer_range": "GLM-5/5.1/5.2 releases; GlmMoeDsaConfig (training only)",
    "attention_dropout": "GLM-5/5.1/5.2 releases (0.0); GlmMoeDsaConfig (training only)",
    "output_router_logits": "GlmMoeDsaConfig 5.11-5.24 (training only)",
    "ep_size": "GLM-5/5.1/5.2 releases (1); a parallelism hint of DeepSeek's remote code",
    "head_dim": "GLM-5 (64) and GLM-5.2 (192) releases; GlmMoeDsaConfig resets it to qk_rope_head_dim",
    "auto_map": "remote-code checkpoints (DeepSeek-V3 style)",
    "pretraining_tp": "Llama-derived configs (training only)",
    "router_aux_loss_coef": "MoE configs (training loss only)",
    "aux_loss_alpha": "DeepSeek-V3 remote-code config (training loss only)",
    "seq_aux": "DeepSeek-V3 remote-code config (training loss only)",
    "_name_or_path": _TF,
    "output_hidden_states": _TF,
    "output_attentions": _TF,
    "return_dict": _TF,
    "chunk_size_feed_forward": _TF + " (0: no chunking; same result)",
    "is_encoder_decoder": _TF,
    "id2label": _TF,
    "label2id": _TF,
    "problem_type": _TF,
}
_DERIVED_FIELDS = {"qk_head_dim", "mlp_layer_types", "layer_types", "rope_parameters", "rope_theta",
                   "rope_scaling", "quantization_config", "model_type", "num_experts", "num_local_experts"}
# Fields that must hold one particular value: anything else is a different architecture.
_FIXED_FIELDS = {
    "hidden_act": "silu", "scoring_func": "sigmoid", "topk_method": "noaux_tc",
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False,
    "rope_interleave": True, "indexer_rope_interleave": True, "moe_layer_freq": 1,
}
# transformers 5.23+ writes "indexed_attention", 5.11 - 5.22 "deepseek_sparse_attention": both mean MLA + DSA.
_LAYER_TYPES = ("indexed_attention", "deepseek_sparse_attention")
# Words in a field name that say it may change the math (matched against its "_"-separated words).
_ARCHITECTURE_WORDS = frozenset("""
    rope rotary yarn ntk theta scaling position positions partial
    attn attention head heads kv qk nope lora window sliding sink sinks softcap logit logits
    quant quantization quantize quantized fp8 fp4 nvfp4 mxfp4 int4 int8 bits dtype
    expert experts moe router routed routing topk group groups gate shared
    layer layers index indexer dsa sparse dense
    norm layernorm eps epsilon hidden intermediate vocab dim size mlp ffn act activation swiglu clamp limit
    mtp nextn hc mhc tie bias embed embedding embeddings scale ratio freq factor linear conv kpool compress
""".split())
# The FP8 releases' quantization_config; ``modules_to_not_convert`` (GLM-5.x-FP8) / ``ignored_layers``
# (vLLM) only name modules kept high precision: the loader trusts the companion tensors (DESIGN §2.2).
_FP8_QUANTIZATION = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                     "weight_block_size": [128, 128]}
_QUANTIZATION_INFO_FIELDS = ("modules_to_not_convert", "ignored_layers")


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
    moe_router_dtype: str = "float32"
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
    # (activations quantized per token group, FP8 block-scaled GEMMs: the production path);
    # whether the FP8 indexer rotates its queries and keys by the 128-point Hadamard transform before
    # quantizing (DESIGN §2.1, the DeepSeek-V3.2 reference recipe; exact scores are unchanged).
    indexer_precision: str = "exact"
    fp8_compute: str = "dequant"
    indexer_hadamard: bool = True

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
        """A config.json's fields (see the module docstring for what each class of field does)."""
        d = dict(d)
        model_type = d.get("model_type", MODEL_TYPE)
        if model_type != MODEL_TYPE:
            raise ValueError(f"config field 'model_type' is {model_type!r}; expected {MODEL_TYPE!r}")
        for name, want in _FIXED_FIELDS.items():
            if name in d and d.pop(name) != want:
                raise ValueError(f"config field {name!r} must be {want!r} for GLM-5.x (unsupported variant)")
        kwargs: dict[str, Any] = {"rope_theta": _rope_theta(d)}
        names = {f.name for f in dataclasses.fields(cls)} - {"indexer_precision", "fp8_compute", "indexer_hadamard",
                                                             "rope_theta"}
        known = names | KNOWN_NON_ARCHITECTURE_FIELDS.keys() | _DERIVED_FIELDS
        _check_unknown([k for k in d if k not in known], d)
        experts = _expert_count(d)
        if experts is not None:
            d["n_routed_experts"] = experts
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
        for k in ("indexer_precision", "fp8_compute", "indexer_hadamard", "rope_theta", "index_topk_pattern",
                  "quantization_config"):
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
    for key, value in params.items():
        # Any other key (factor, partial_rotary_factor, ...) would change the rotation.
        if key not in ("rope_type", "type", "rope_theta") and value is not None and \
                not (key == "partial_rotary_factor" and value == 1.0):
            raise ValueError(f"config field 'rope_parameters.{key}' is {value!r}; only plain RoPE "
                             "(rope_type and rope_theta) is supported")
    theta = params.get("rope_theta", d.get("rope_theta", 10000.0))
    if "rope_theta" in params and "rope_theta" in d and d["rope_theta"] != params["rope_theta"]:
        raise ValueError(f"config fields 'rope_theta' ({d['rope_theta']}) and 'rope_parameters.rope_theta' "
                         f"({params['rope_theta']}) disagree")
    return float(theta)


def _short(values: Any, limit: int = 4) -> str:
    """A list for an error message: whole when short, else its first entries and its length."""
    if not isinstance(values, (list, tuple)) or len(values) <= limit:
        return repr(values if not isinstance(values, tuple) else list(values))
    return "[" + ", ".join(repr(v) for v in values[:limit]) + f", ...] ({len(values)} entries)"


def _list_mismatch(got: Any, want: list) -> str:
    """Where list ``got`` first differs from ``want``, and how many entries differ."""
    if not isinstance(got, (list, tuple)) or len(got) != len(want):
        return f"got {_short(got)}, expected {len(want)} entries {_short(want)}"
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    return (f"entry {bad[0]} is {got[bad[0]]!r}, expected {want[bad[0]]!r} "
            f"({len(bad)} of {len(want)} entries differ)")


def _architecture_words(name: str) -> set[str]:
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    return (set(words) | {a + b for a, b in zip(words, words[1:])}) & _ARCHITECTURE_WORDS


def _check_unknown(fields: list[str], values: dict[str, Any], where: str = "config field") -> None:
    """Unknown fields: an error if the name says it may change the math and the value does not switch
    the feature off (null/false); else a warning naming it (module docstring)."""
    for name in sorted(fields):
        value = values[name]
        words = _architecture_words(name)
        if words and value is not None and value is not False:
            raise ValueError(f"unknown {where} {name!r} = {_short(value)} may change the architecture "
                             f"(it names {', '.join(sorted(words))}); glm52 does not implement it")
        warnings.warn(f"unknown {where} {name!r} ignored: it carries no architecture information glm52 knows of",
                      UnknownConfigFieldWarning, stacklevel=4)


def _expert_count(d: dict[str, Any]) -> int | None:
    """``n_routed_experts`` or its aliases (transformers: ``num_experts`` re-routes to it,
    ``num_local_experts`` maps to it); all that are present must agree."""
    given = {k: d[k] for k in ("n_routed_experts", "num_experts", "num_local_experts") if d.get(k) is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"config fields {given} disagree on the number of routed experts")
    return next(iter(given.values()), None)


def _check_quantization(q: Any) -> None:
    """Only the FP8 releases' format runs: anything else is one line naming it and what does load."""
    if q is None:
        return
    if not isinstance(q, dict):
        raise ValueError(f"config field 'quantization_config' must be an object; got {_short(q)}")
    method = q.get("quant_method", "fp8")
    if method != "fp8":
        inner = q.get("quantization") if isinstance(q.get("quantization"), dict) else {}
        detail = q.get("quant_algo") or inner.get("quant_algo") or q.get("format")
        name = repr(method) + (f" ({detail})" if detail else "")
        raise ValueError(f"quantization format {name} is not supported; glm52 loads the FP8 block-scaled and "
                         f"BF16 releases: {', '.join(SUPPORTED_CHECKPOINTS)}")
    for key, want in _FP8_QUANTIZATION.items():
        got = q.get(key, want)
        if (list(got) if isinstance(got, (list, tuple)) else got) != want:
            raise ValueError(f"quantization_config {key} {_short(q[key])} is not supported; the FP8 releases "
                             f"({', '.join(c for c in SUPPORTED_CHECKPOINTS if c.endswith('FP8'))}) use {want!r}")
    unknown = [k for k in q if k not in _FP8_QUANTIZATION and k not in _QUANTIZATION_INFO_FIELDS]
    for key in unknown:  # inside quantization_config any setting may change the math, whatever its name
        if q[key] is not None and q[key] is not False:
            raise ValueError(f"unknown quantization_config field {key!r} = {_short(q[key])}: glm52 does not "
                             "implement it")
    _check_unknown(unknown, q, "quantization_config field")  # what is left is switched off: a warning


def _derive_indexer_types(c: GLM52Config) -> list[str]:
    """transformers' ``GlmMoeDsaConfig`` rule: a pattern wins, else freq/offset, else all full."""
    n = c.num_hidden_layers
    if c.index_topk_pattern is not None:
        pattern = c.index_topk_pattern
        bad = set(pattern) - {"F", "S"}
        if bad or len(pattern) != n:
            shown = repr(pattern) if len(pattern) <= 12 else f"{pattern[:8]!r}... ({len(pattern)} characters)"
            raise ValueError(f"config field 'index_topk_pattern' must be {n} characters of 'F'/'S'; got {shown}"
                             + (f", holding {sorted(bad)}" if bad else ""))
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
        bad = sorted(set(types) - {"full", "shared"})
        raise ValueError(f"config field 'indexer_types' must list 'full'/'shared' for each of the "
                         f"{c.num_hidden_layers} layers; got {_short(types)}" + (f", holding {bad}" if bad else ""))
    if types[0] != "full":
        raise ValueError("config field 'indexer_types': layer 0 must be 'full' (a shared layer reuses the top-k "
                         "of the nearest preceding full layer)")
    if c.moe_router_dtype not in MOE_ROUTER_DTYPES:
        raise ValueError(f"config field 'moe_router_dtype' is {c.moe_router_dtype!r}; supported: "
                         f"{', '.join(map(repr, MOE_ROUTER_DTYPES))}")
    if c.indexer_precision not in INDEXER_PRECISIONS:
        raise ValueError(f"indexer_precision must be one of {INDEXER_PRECISIONS}; got {c.indexer_precision!r}")
    if not isinstance(c.indexer_hadamard, bool):
        raise ValueError(f"indexer_hadamard must be True or False; got {c.indexer_hadamard!r}")
    if c.indexer_precision == "fp8" and c.indexer_hadamard and c.index_head_dim not in HADAMARD_DIMS:
        raise ValueError(f"indexer_hadamard rotates index_head_dim {HADAMARD_DIMS} wide keys; got "
                         f"{c.index_head_dim} (pass indexer_hadamard=False)")
    if c.fp8_compute not in FP8_COMPUTE_MODES:
        raise ValueError(f"fp8_compute must be one of {FP8_COMPUTE_MODES}; got {c.fp8_compute!r}")
    _check_quantization(c.quantization_config)


def _check_derived(c: GLM52Config, d: dict[str, Any]) -> None:
    """Fields transformers writes next to their sources must agree with what we derive."""
    if "qk_head_dim" in d and d["qk_head_dim"] != c.qk_head_dim:
        raise ValueError(f"config field 'qk_head_dim' ({d['qk_head_dim']}) != qk_nope_head_dim + qk_rope_head_dim "
                         f"({c.qk_head_dim})")
    n, dense = c.num_hidden_layers, c.first_k_dense_replace
    mlp_types = ["dense"] * dense + ["sparse"] * (n - dense)
    if d.get("mlp_layer_types") is not None and list(d["mlp_layer_types"]) != mlp_types:
        raise ValueError(f"config field 'mlp_layer_types' disagrees with first_k_dense_replace={dense}: "
                         f"{_list_mismatch(d['mlp_layer_types'], mlp_types)}")
    layer_types = d.get("layer_types")
    if layer_types is not None:
        listed = isinstance(layer_types, list)
        bad = sorted({t for t in layer_types if t not in _LAYER_TYPES}, key=str) if listed else []
        if not listed or len(layer_types) != n or bad:
            raise ValueError(f"config field 'layer_types' must give one of {list(_LAYER_TYPES)} (MLA with the DSA "
                             f"indexer) for each of the {n} layers; got {_short(layer_types)}"
                             + (f", holding {bad}" if bad else ""))
    if "indexer_types" in d and any(d.get(k) is not None for k in ("index_topk_freq", "index_topk_pattern")):
        derived = _derive_indexer_types(c)
        if tuple(derived) != c.indexer_types:
            raise ValueError(f"config field 'indexer_types' disagrees with index_topk_freq/index_skip_topk_offset/"
                             f"index_topk_pattern: {_list_mismatch(list(c.indexer_types), derived)}")


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
