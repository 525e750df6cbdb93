"""Typed wrappers over ``torch.ops.glm52.*``, one module per op family, all re-exported here.

Each op runs on the device of its inputs: CUDA kernels for CUDA tensors (when the extension was
built with CUDA), C++ CPU kernels otherwise. All ops trace under ``torch.compile(fullgraph=True)``
(each family registers its fake implementations beside its wrappers) and are safe in CUDA graphs
unless their docstring says otherwise. Bad arguments raise ``RuntimeError`` naming the argument and
what was expected.
"""

from .. import _C  # noqa: F401  (loads the extension: registers torch.ops.glm52.*)
from .moe import (
    fp8_gemm,
    fp8_moe_experts,
    fp8_swiglu_mlp,
    fp8_grouped_gemm_contiguous,
    fp8_grouped_gemm_masked,
    fp8_grouped_gemm_workspace_bytes,
    grouped_gemm_config,
    grouped_gemm_m_alignment,
    moe_permute,
    moe_permute_masked,
    moe_permute_workspace_bytes,
    moe_route,
    moe_unpermute,
    permuted_rows_bound,
    silu_and_mul_quant_fp8,
)
from .attention import (
    hadamard_rotate,
    indexer_cache_write,
    indexer_logits,
    indexer_logits_paged,
    indexer_topk,
    indexer_topk_kernel,
    indexer_topk_paged,
    mla_cache_write,
    sparse_mla_decode,
    sparse_mla_decode_metadata,
    sparse_mla_decode_sm_parts,
    sparse_mla_decode_workspace_bytes,
    sparse_mla_prefill,
    topk_indices,
)
from .norm import add_rms_norm, rms_norm
from .quant import dequant_fp8_block, quant_fp8_per_token_group
from .spec import (
    PROB_SUM_TOLERANCE,
    sample_probs,
    sampling_probs,
    spec_verify_greedy,
    spec_verify_sampling,
    spec_verify_workspace_bytes,
)

__all__ = [
    "PROB_SUM_TOLERANCE",
    "add_rms_norm",
    "dequant_fp8_block",
    "fp8_gemm",
    "fp8_grouped_gemm_contiguous",
    "fp8_grouped_gemm_masked",
    "fp8_grouped_gemm_workspace_bytes",
    "fp8_moe_experts",
    "fp8_swiglu_mlp",
    "grouped_gemm_config",
    "grouped_gemm_m_alignment",
    "hadamard_rotate",
    "indexer_cache_write",
    "indexer_logits",
    "indexer_logits_paged",
    "indexer_topk",
    "indexer_topk_kernel",
    "indexer_topk_paged",
    "mla_cache_write",
    "moe_permute",
    "moe_permute_masked",
    "moe_permute_workspace_bytes",
    "moe_route",
    "moe_unpermute",
    "permuted_rows_bound",
    "quant_fp8_per_token_group",
    "rms_norm",
    "sample_probs",
    "sampling_probs",
    "silu_and_mul_quant_fp8",
    "sparse_mla_decode",
    "sparse_mla_decode_metadata",
    "sparse_mla_decode_sm_parts",
    "sparse_mla_decode_workspace_bytes",
    "sparse_mla_prefill",
    "spec_verify_greedy",
    "spec_verify_sampling",
    "spec_verify_workspace_bytes",
    "topk_indices",
]
