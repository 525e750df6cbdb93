"""Plain-PyTorch oracles for every ``torch.ops.glm52`` op, one module per op family.

Written for clarity, never for speed (fp32/fp64 math): these are what the tests compare the CPU and
CUDA kernels against. They take the same arguments as the wrappers in :mod:`glm52_ext.ops` and
return the same shapes and dtypes. They never import the compiled extension.
"""

from .moe import (
    fp8_gemm,
    fp8_grouped_gemm_contiguous,
    fp8_grouped_gemm_masked,
    moe_permute,
    moe_permute_masked,
    moe_route,
    moe_unpermute,
    permuted_rows_bound,
    silu_and_mul,
    silu_and_mul_quant_fp8,
)
from .attention import (
    BLOCK_TOKENS,
    INDEX_BLOCK_BYTES,
    MLA_BF16_TOKEN_BYTES,
    MLA_FP8_TOKEN_BYTES,
    indexer_cache_read,
    indexer_cache_write,
    indexer_logits,
    indexer_logits_paged,
    indexer_topk,
    indexer_topk_paged,
    mla_cache_read,
    mla_cache_write,
    positions_to_slots,
    sparse_mla_decode,
    sparse_mla_decode_metadata,
    sparse_mla_prefill,
    topk_indices,
)
from .norm import add_rms_norm, rms_norm
from .quant import (
    FP8_E4M3_MAX,
    QUANT_AMAX_EPS,
    ceil_div,
    dequant_fp8_block,
    quant_fp8_per_token_group,
    round_scale_to_ue8m0,
)
from .spec import philox4x32_10, philox_uniform, sample_inverse_cdf, spec_verify_greedy, spec_verify_sampling

__all__ = [
    "BLOCK_TOKENS",
    "FP8_E4M3_MAX",
    "INDEX_BLOCK_BYTES",
    "MLA_BF16_TOKEN_BYTES",
    "MLA_FP8_TOKEN_BYTES",
    "QUANT_AMAX_EPS",
    "add_rms_norm",
    "ceil_div",
    "dequant_fp8_block",
    "fp8_gemm",
    "fp8_grouped_gemm_contiguous",
    "fp8_grouped_gemm_masked",
    "indexer_cache_read",
    "indexer_cache_write",
    "indexer_logits",
    "indexer_logits_paged",
    "indexer_topk",
    "indexer_topk_paged",
    "mla_cache_read",
    "mla_cache_write",
    "moe_permute",
    "moe_permute_masked",
    "moe_route",
    "moe_unpermute",
    "permuted_rows_bound",
    "philox4x32_10",
    "philox_uniform",
    "positions_to_slots",
    "quant_fp8_per_token_group",
    "rms_norm",
    "round_scale_to_ue8m0",
    "sample_inverse_cdf",
    "silu_and_mul",
    "silu_and_mul_quant_fp8",
    "sparse_mla_decode",
    "sparse_mla_decode_metadata",
    "sparse_mla_prefill",
    "spec_verify_greedy",
    "spec_verify_sampling",
    "topk_indices",
]
