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
    moe_route,
    moe_unpermute,
    permuted_rows_bound,
    silu_and_mul,
    silu_and_mul_quant_fp8,
)
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
    "FP8_E4M3_MAX",
    "QUANT_AMAX_EPS",
    "ceil_div",
    "dequant_fp8_block",
    "fp8_gemm",
    "fp8_grouped_gemm_contiguous",
    "fp8_grouped_gemm_masked",
    "moe_permute",
    "moe_route",
    "moe_unpermute",
    "permuted_rows_bound",
    "philox4x32_10",
    "philox_uniform",
    "quant_fp8_per_token_group",
    "round_scale_to_ue8m0",
    "sample_inverse_cdf",
    "silu_and_mul",
    "silu_and_mul_quant_fp8",
    "spec_verify_greedy",
    "spec_verify_sampling",
]
