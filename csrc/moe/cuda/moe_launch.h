// Launchers of the MoE kernels. Framework-free: raw pointers, sizes, device workspace and a
// stream; the torch-facing checks live in moe_checks.h. Every launcher returns the launch error
// (cudaSuccess when queued), launches nothing for empty inputs and never synchronizes the host.
#pragma once

#include "common/dtype.h"
#include "moe/moe_gemm_config.h"
#include "moe/moe_route.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace glm52::moe {

// --- routing ---

struct RouteArgs {
  const float* logits;  // [tokens, num_experts] fp32, contiguous
  const float* bias;    // [num_experts] fp32
  float* weights;       // [tokens, top_k] fp32
  int32_t* ids;         // [tokens, top_k] int32
  int64_t tokens;
  RouteParams params;
};

cudaError_t launch_moe_route(const RouteArgs& args, cudaStream_t stream);

// --- permute / unpermute ---

struct PermuteArgs {
  const void* x;          // [tokens, row_bytes] bytes, contiguous (any element type)
  const float* x_scale;   // [tokens, groups] fp32, or nullptr when groups == 0
  const int32_t* ids;     // [tokens, top_k] int32
  void* out;              // [rows, row_bytes] bytes
  float* out_scale;       // [rows, groups] fp32
  int32_t* m_indices;     // [rows] int32
  int32_t* row_map;       // [tokens, top_k] int32
  int32_t* chunk_prefix;  // workspace [permute_chunks(tokens * top_k), num_experts] int32
  int32_t* count;         // workspace [num_experts] int32 (masked: the masked_m output)
  int64_t* seg_start;     // workspace [num_experts + 1] int64
  int64_t tokens, top_k, row_bytes, groups, rows, num_experts, alignment;
  bool masked;            // the masked layout: segments at e * tokens, m_indices == nullptr
};

cudaError_t launch_moe_permute(const PermuteArgs& args, cudaStream_t stream);

struct UnpermuteArgs {
  const void* y;           // [rows, n] dtype, contiguous
  const float* weights;    // [tokens, top_k] fp32
  const int32_t* row_map;  // [tokens, top_k] int32 (-1, or out of [0, rows): skipped)
  void* out;               // [tokens, n] dtype
  DType dtype;
  int64_t tokens, top_k, rows, n;
};

cudaError_t launch_moe_unpermute(const UnpermuteArgs& args, cudaStream_t stream);

// --- SwiGLU + FP8 quantization ---

struct SiluQuantArgs {
  const void* x;         // [rows, 2 * n] dtype = [gate | up], unit column stride
  int64_t x_row_stride;  // elements between rows of x
  DType x_dtype;
  uint8_t* q;            // [rows, n] e4m3 codes, contiguous
  float* scale;          // [rows, ceil(n / group_size)] fp32, contiguous
  int64_t rows, n, group_size;
  bool scale_ue8m0;
};

cudaError_t launch_silu_and_mul_quant_fp8(const SiluQuantArgs& args, cudaStream_t stream);

// --- FP8 block-scaled grouped GEMM (CUTLASS, sm90a) ---

struct GroupedGemmArgs {
  GroupedLayout layout;
  GroupedGemmTile tile;      // select_grouped_gemm_tile(layout, hint)
  const uint8_t* a;          // contiguous/dense [m, k] or masked [groups, m, k] e4m3
  const float* a_scale;      // as a with k -> k / 128 fp32 (one scale per row per 128 columns)
  const uint8_t* b;          // [groups, n, k] e4m3
  const float* b_scale;      // [groups, n / 128, k / 128] fp32
  uint16_t* out;             // as a with k -> n, bf16
  const int32_t* m_indices;  // kContiguous: [m] int32
  const int32_t* masked_m;   // kMasked: [groups] int32
  int64_t groups, m, n, k;   // n, k multiples of 128
  void* workspace;           // grouped_gemm_workspace_bytes(groups) bytes, 16-byte aligned
  int sm_count;              // at most kMaxGemmSmCount
};

// Bytes of CUTLASS workspace `tile` needs on sm_count SMs (exact; its part of the bound is
// grouped_gemm_cutlass_bytes_bound() for sm_count <= kMaxGemmSmCount).
int64_t grouped_gemm_cutlass_workspace_bytes(GroupedGemmTile tile, int64_t groups, int sm_count);
cudaError_t launch_fp8_grouped_gemm(const GroupedGemmArgs& args, cudaStream_t stream);

}  // namespace glm52::moe
