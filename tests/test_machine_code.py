"""The built CUDA kernels: sm_90a code for each, no local-memory spills, tensor cores where due.

Runs without a GPU (cuobjdump reads the extension file); skipped when the extension was built
CPU-only.
"""

from __future__ import annotations

import pytest

import glm52_ext
from glm52_ext import machine_code

# Substring of a kernel's mangled name -> tensor-core instructions its SASS must contain.
EXPECTED_KERNELS = {
    "quant_fp8_group_vec_kernel": (),
    "quant_fp8_group_scalar_kernel": (),
    "dequant_fp8_block_kernel": (),
    "spec_greedy_split_argmax_kernel": (),
    "spec_greedy_accept_kernel": (),
    "spec_sampling_tile_totals_kernel": (),
    "spec_sampling_resample_kernel": (),
    # MoE family: the FP8 block-scaled grouped GEMM (CUTLASS: the 128-row cooperative tile and the
    # 64-row ping-pong tile, both serving the contiguous, masked and dense layouts) must run on FP8
    # wgmma; the rest are memory-bound helpers.
    "KernelPtrArrayTmaWarpSpecializedCooperativeFP8Blockwise": ("QGMMA",),
    "KernelPtrArrayTmaWarpSpecializedPingpongFP8Blockwise": ("QGMMA",),
    "grouped_gemm_reset_kernel": (),
    "grouped_gemm_scan_rows_kernel": (),
    "grouped_gemm_problems_kernel": (),
    "moe_route_kernel": (),
    "moe_permute_count_kernel": (),
    "moe_permute_scan_kernel": (),
    "moe_permute_rank_kernel": (),
    "moe_permute_copy_kernel": (),
    "moe_permute_experts_kernel": (),
    "moe_permute_clamp_kernel": (),
    "moe_unpermute_kernel": (),
    "silu_quant_vec_kernel": (),
    "silu_quant_scalar_kernel": (),
    "rms_norm_kernel": (),
    # attention: sparse MLA and indexer logits on tensor cores; the SIMT kernels are fp32 FMA cross-checks
    "sparse_mla_hgmma_kernel": ("HGMMA",),
    "indexer_logits_qgmma_kernel": ("QGMMA",),
    "mla_cache_write_kernel": (),
    "indexer_cache_write_kernel": (),
    "hadamard_rotate_kernel": (),
    "indexer_logits_simt_kernel": (),
    "topk_radix_select_kernel": (),
    "indexer_topk_kernel": (),  # fused streaming top-k, SIMT scores (other head counts, large k, =simt)
    "indexer_topk_qgmma_kernel": ("QGMMA",),  # fused streaming top-k scored on tensor cores (32/64 heads)
    "sparse_mla_simt_kernel": (),
    # split-KV decode: the same bodies over key ranges, the LSE merge, the device plan
    "sparse_mla_hgmma_split_kernel": ("HGMMA",),
    "sparse_mla_simt_split_kernel": (),
    "sparse_mla_combine_kernel": (),
    "sparse_mla_metadata_kernel": (),
}

pytestmark = [
    pytest.mark.skipif(not glm52_ext.build_info()["cuda"], reason="glm52_ext was built CPU-only: no machine code"),
    pytest.mark.skipif(machine_code.find_cuobjdump() is None, reason="cuobjdump not found (toolkit or triton wheel)"),
]


@pytest.fixture(scope="module")
def kernels():
    return machine_code.kernels()


def test_sm90a_code_is_embedded():
    assert "sm_90a" in machine_code.elf_archs()


@pytest.mark.parametrize("name", sorted(EXPECTED_KERNELS))
def test_expected_kernel_is_built_for_sm90a(kernels, name):
    matching = [k for k in kernels if name in k.name and k.arch == "sm_90a"]
    assert matching, f"no sm_90a kernel named *{name}* in {machine_code.extension_path()}"
    for kernel in matching:
        for op in EXPECTED_KERNELS[name]:
            assert kernel.tensor_core_ops.get(op, 0) > 0, f"{kernel.name}: no {op} in its SASS"


def test_no_kernel_spills_to_local_memory(kernels):
    assert kernels
    spilling = [(k.name, k.local_bytes) for k in kernels if k.local_bytes or k.stack_bytes]
    assert not spilling, f"kernels using local memory: {spilling}"


def test_every_kernel_is_known(kernels):
    """A new kernel must be added to EXPECTED_KERNELS (with the tensor-core ops it should use)."""
    unknown = sorted({k.name for k in kernels if not any(name in k.name for name in EXPECTED_KERNELS)})
    assert not unknown, f"kernels missing from EXPECTED_KERNELS: {unknown}"
