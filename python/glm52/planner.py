"""Memory planner: parameters counted on the meta device, weight bytes per GPU, and MLA + indexer
cache sizes (DESIGN §2.3), IndexShare-aware.

Sharding model (DESIGN §6, what :func:`glm52.parallel.build_parallel_model` builds): tensor
parallelism splits MLA's ``q_b_proj``/``kv_b_proj``/``o_proj``, the dense MLP, shared experts,
embedding and lm_head; routed experts are split over ``ep`` ranks (each expert's intermediate dim
over the ``tp`` ranks when ``ep`` is 1); everything else is replicated. GPUs = tp x dp, ``ep``
divides that and is 1 or a multiple of tp; ``dp`` defaults to ``ep / tp`` (at least 1), so
``--tp 1 --ep 8`` still means 8 GPUs as before. The caches of ``batch`` sequences live on every GPU
of one data-parallel group (MLA's cache is not split by heads): ``batch`` counts sequences per
group, unless context parallelism (``cp`` dividing ``tp``) stripes them by 64-token blocks over the
``cp`` ranks of a tensor-parallel group: each then holds ``ceil(blocks / cp)`` blocks. The per-GPU
total adds the activation workspace of one prefill chunk (:func:`prefill_workspace_bytes`). Card
sizes are decimal GB.
"""

from __future__ import annotations

import re

import torch

from .checkpoint import fp8_quantizable
from .config import GLM52Config
from .loader import FP8_BLOCK, checkpoint_layout
from .model import GLM52ForCausalLM
from .parallel import ParallelConfig

WEIGHT_FORMATS = ("bf16", "fp8", "int4")
KV_FORMATS = ("bf16", "fp8")
INT4_GROUP = 128  # int4: one bf16 scale per 128 weights along the input dim (assumed recipe)
CARDS_GB = {"80GB": 80, "141GB": 141}
_TP_SPLIT = re.compile(r"(q_b_proj|kv_b_proj|o_proj|shared_experts|embed_tokens|lm_head|"
                       r"layers\.\d+\.mlp\.(gate|up|down)_proj)")
_EXPERT = re.compile(r"\.mlp\.experts\.")


def _weight_bytes(name: str, shape: tuple[int, ...], weights: str) -> float:
    numel = 1
    for s in shape:
        numel *= s
    if name.endswith("e_score_correction_bias"):
        return 4 * numel
    if weights == "bf16" or not fp8_quantizable(name, shape):
        return 2 * numel
    n, k = shape
    if weights == "fp8":
        return numel + 4 * -(-n // FP8_BLOCK) * -(-k // FP8_BLOCK)
    return numel / 2 + 2 * n * -(-k // INT4_GROUP)


def kv_bytes_per_token_per_layer(config: GLM52Config, kv: str) -> int:
    """MLA latent ``[c_kv | k_pe]``: BF16, or FP8 c_kv with one fp32 scale per 128 plus BF16 rope dims."""
    if kv == "bf16":
        return 2 * (config.kv_lora_rank + config.qk_rope_head_dim)
    return config.kv_lora_rank + 4 * -(-config.kv_lora_rank // 128) + 2 * config.qk_rope_head_dim


PREFILL_CHUNK_TOKENS = 8192  # the engine's default prefill chunk


def prefill_workspace_bytes(config: GLM52Config, chunk: int, tp: int, ep: int) -> int:
    """The largest tensors live at once while one prefill chunk of ``chunk`` tokens runs a layer on
    the kernel path (BF16 activations, FP8 expert inputs): the residual stream and its norm, the MLA
    query / latent output of the local heads, the indexer's queries, weights and fused top-k output
    (never the ``[chunk, context]`` scores), and the routed experts' permuted rows, gate-up and down
    outputs (``permuted_rows_bound``: each expert segment aligned to 128 rows). Independent of the
    context length. An accounting of the runtime's allocations, not a measurement."""
    hidden, heads = config.hidden_size, -(-config.num_attention_heads // tp)
    latent = config.kv_lora_rank + config.qk_rope_head_dim
    residual = 3 * chunk * hidden * 2
    attention = chunk * heads * (2 * latent * 2 + config.kv_lora_rank * 2 + config.qk_head_dim * 2 + 4)
    # Indexer queries per head: BF16 projection and rotated copy, the fp32 Hadamard rotation when
    # the FP8 recipe rotates, e4m3 codes; one fp32 weight.
    query_bytes = 2 + 2 + (4 if config.indexer_hadamard else 0) + 1
    indexer = chunk * config.index_n_heads * (config.index_head_dim * query_bytes + 4) + chunk * config.index_topk * (4 + 8)
    experts = config.n_routed_experts // (ep if ep > 1 else tp)
    rows = chunk * config.num_experts_per_tok + experts * 128
    moe = rows * (hidden + 4 * -(-hidden // 128) + 2 * config.moe_intermediate_size * 2 + hidden * 2)
    return int(residual + attention + indexer + moe)


def plan(config: GLM52Config, weights: str = "fp8", kv: str = "fp8", context: int | None = None,
         batch: int = 1, tp: int = 1, ep: int = 1, dp: int | None = None, cp: int = 1) -> dict:
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights must be one of {WEIGHT_FORMATS}; got {weights!r}")
    if kv not in KV_FORMATS:
        raise ValueError(f"kv must be one of {KV_FORMATS}; got {kv!r}")
    context = config.max_position_embeddings if context is None else context
    for name, v in (("context", context), ("batch", batch), ("tp", tp), ("ep", ep), ("cp", cp)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")
    if dp is None:
        dp = max(ep // tp, 1)
    shards = ParallelConfig(tp=tp, dp=dp, ep=ep)
    shards.check_model(config)
    if tp % cp:
        raise ValueError(f"cp ({cp}) must divide tp ({tp}): the cache is split over the cp ranks of a tensor-parallel group")
    if context > config.max_position_embeddings:
        raise ValueError(f"context ({context}) is past max_position_embeddings ({config.max_position_embeddings})")

    with torch.device("meta"):
        model = GLM52ForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    layout = checkpoint_layout(model)
    # Active per token (DESIGN §2.3's ~40.3B): the main model's weights a token is multiplied by; the
    # embedding table is a lookup, the MTP layer a draft head, and only top-k of the routed experts run.
    main = {n: s for n, s in layout.items() if not n.startswith(f"model.layers.{config.num_hidden_layers}.")
            and not n.startswith("model.embed_tokens") and not n.endswith("e_score_correction_bias")}
    numel = {n: torch.Size(s.shape).numel() for n, s in main.items()}
    routed = sum(v for n, v in numel.items() if _EXPERT.search(n))
    active = sum(numel.values()) - routed + routed * config.num_experts_per_tok // config.n_routed_experts

    expert_split = ep if ep > 1 else tp
    per_gpu = 0.0
    for name, slot in layout.items():
        split = expert_split if _EXPERT.search(name) else tp if _TP_SPLIT.search(name) else 1
        per_gpu += _weight_bytes(name, slot.shape, weights) / split

    layers = config.num_layers_total
    indexed = sum(config.has_indexer(i) for i in range(layers))
    mla = kv_bytes_per_token_per_layer(config, kv) * layers
    indexer = (config.index_head_dim + 4) * indexed  # e4m3 keys + one fp32 scale per token
    blocks_per_gpu = -(-(-(-context // 64)) // cp)  # ceil(ceil(context / 64) / cp) blocks of 64 tokens
    tokens_per_gpu = min(blocks_per_gpu * 64, context) if cp > 1 else context
    cache = (mla + indexer) * tokens_per_gpu * batch
    workspace = prefill_workspace_bytes(config, min(PREFILL_CHUNK_TOKENS, context), tp, ep)
    gpu_total = per_gpu + cache + workspace
    return {
        "preset_layers": config.num_hidden_layers, "mtp_layers": config.num_nextn_predict_layers,
        "weights": weights, "kv": kv, "context": context, "batch": batch, "tp": tp, "dp": dp, "ep": ep, "cp": cp,
        "gpus": shards.world_size,
        "total_params": total, "active_params": active,
        "weight_bytes_total": int(sum(_weight_bytes(n, s.shape, weights) for n, s in layout.items())),
        "weight_bytes_per_gpu": int(per_gpu),
        "kv_bytes_per_token": mla, "kv_bytes_per_token_per_layer": mla // layers, "kv_layers": layers,
        "indexer_bytes_per_token": indexer, "indexer_layers": indexed,
        "kv_bytes_context": mla * context * batch, "indexer_bytes_context": indexer * context * batch,
        "cache_tokens_per_gpu": tokens_per_gpu, "cache_bytes_per_gpu": cache,
        "prefill_chunk_tokens": min(PREFILL_CHUNK_TOKENS, context), "workspace_bytes_per_gpu": workspace,
        "bytes_per_gpu": int(gpu_total),
        "fits": {card: gpu_total <= gb * 1e9 for card, gb in CARDS_GB.items()},
    }


def format_plan(p: dict) -> str:
    gb = 1e9
    lines = [
        f"parameters      total {p['total_params']:,}  active/token {p['active_params']:,}",
        f"weights ({p['weights']})  {p['weight_bytes_total'] / gb:,.1f} GB total, "
        f"{p['weight_bytes_per_gpu'] / gb:,.1f} GB per GPU "
        f"(tp={p['tp']}, dp={p['dp']}, ep={p['ep']}, {p['gpus']} GPUs)",
        f"MLA cache ({p['kv']})  {p['kv_bytes_per_token']:,} B/token ({p['kv_bytes_per_token_per_layer']} B x "
        f"{p['kv_layers']} layers); {p['kv_bytes_context'] / gb:,.2f} GB for {p['batch']} x {p['context']:,} tokens",
        f"indexer cache   {p['indexer_bytes_per_token']:,} B/token ({p['indexer_layers']} layers with an indexer); "
        f"{p['indexer_bytes_context'] / gb:,.2f} GB for {p['batch']} x {p['context']:,} tokens",
        f"cache per GPU   {p['cache_bytes_per_gpu'] / gb:,.2f} GB ({p['cache_tokens_per_gpu']:,} tokens per sequence, "
        f"cp={p['cp']}); prefill workspace {p['workspace_bytes_per_gpu'] / gb:,.2f} GB "
        f"({p['prefill_chunk_tokens']:,}-token chunks)",
        f"per GPU total   {p['bytes_per_gpu'] / gb:,.1f} GB: "
        + ", ".join(f"{'fits' if ok else 'does not fit'} on a {card} card" for card, ok in p["fits"].items()),
    ]
    return "\n".join(lines)
