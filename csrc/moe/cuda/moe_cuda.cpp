// CUDA entry points of the MoE family: check, take the caller's workspace or allocate one (stream-ordered
// caching allocator: no host sync, CUDA-graph safe), pick the stream, launch.
#include "common/launch_dtype.h"
#include "moe/cuda/moe_launch.h"
#include "moe/moe_checks.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace glm52::moe {
namespace {

void check_int_rows(const char* op, const at::Tensor& a) {
  GLM52_CHECK_ARG(a.numel() / std::max<int64_t>(a.size(-1), 1) <= INT32_MAX, op, "a", "must have fewer than 2^31 rows");
}

// m_hint: what select_grouped_gemm_tile reads (the masked layout's expected_m, the dense rows).
void run_grouped_gemm(const char* op, GroupedLayout layout, int64_t m_hint, const at::Tensor& a,
                      const at::Tensor& a_scale, const at::Tensor& b, const at::Tensor& b_scale,
                      const int32_t* m_indices, const int32_t* masked_m, const std::optional<at::Tensor>& workspace,
                      at::Tensor& out) {
  check_gemm_cuda(op, a, b, out);
  check_int_rows(op, a);
  check_gemm_workspace(op, workspace, a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  const int64_t groups = b.dim() == 3 ? b.size(0) : 1, n = b.size(-2), k = b.size(-1);
  const int64_t m = layout == GroupedLayout::kMasked ? a.size(1) : a.size(0);
  if (out.numel() == 0) return;
  if (k == 0 || groups == 0) {  // nothing to accumulate (or no local expert): every row is zero
    out.zero_();
    return;
  }
  const GroupedGemmTile tile = select_grouped_gemm_tile(layout, m_hint);
  // More SMs than the workspace bound covers would only add persistent CTAs: cap them.
  const int sm_count = std::min(at::cuda::getCurrentDeviceProperties()->multiProcessorCount, kMaxGemmSmCount);
  const int64_t cutlass_bytes = grouped_gemm_cutlass_workspace_bytes(tile, groups, sm_count);
  TORCH_CHECK(cutlass_bytes <= grouped_gemm_cutlass_bytes_bound(), "glm52.", op, ": internal error: the ",
              grouped_gemm_tile_name(tile), " kernel needs ", cutlass_bytes, " bytes of CUTLASS workspace, more than ",
              "fp8_grouped_gemm_workspace_bytes reserves (", grouped_gemm_cutlass_bytes_bound(), ")");
  auto scratch = workspace_or_new(workspace, grouped_gemm_workspace_bytes(groups), a);
  GroupedGemmArgs args{layout,
                       tile,
                       static_cast<const uint8_t*>(a.const_data_ptr()),
                       a_scale.const_data_ptr<float>(),
                       static_cast<const uint8_t*>(b.const_data_ptr()),
                       b_scale.const_data_ptr<float>(),
                       static_cast<uint16_t*>(out.mutable_data_ptr()),
                       m_indices,
                       masked_m,
                       groups,
                       m,
                       n,
                       k,
                       scratch.mutable_data_ptr(),
                       sm_count};
  const cudaError_t err = launch_fp8_grouped_gemm(args, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err != cudaErrorInvalidConfiguration, "glm52.", op, ": the CUTLASS kernel cannot run this problem (N = ", n,
              ", K = ", k, ")");
  C10_CUDA_CHECK(err);
}

void fp8_grouped_gemm_contiguous_out_cuda(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                          const at::Tensor& b_scale, const at::Tensor& m_indices,
                                          const std::optional<at::Tensor>& workspace, at::Tensor& out) {
  check_contiguous_gemm(a, a_scale, b, b_scale, m_indices);
  check_gemm_out(kContiguousOp, out, {a.size(0), b.size(1)}, "[M, N]", a);
  run_grouped_gemm(kContiguousOp, GroupedLayout::kContiguous, a.size(0), a, a_scale, b, b_scale,
                   m_indices.const_data_ptr<int32_t>(), nullptr, workspace, out);
}

void fp8_grouped_gemm_masked_out_cuda(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                      const at::Tensor& b_scale, const at::Tensor& masked_m, int64_t expected_m,
                                      const std::optional<at::Tensor>& workspace, at::Tensor& out) {
  check_masked_gemm(a, a_scale, b, b_scale, masked_m, expected_m);
  check_gemm_out(kMaskedOp, out, {a.size(0), a.size(1), b.size(1)}, "[E, m_max, N]", a);
  run_grouped_gemm(kMaskedOp, GroupedLayout::kMasked, expected_m, a, a_scale, b, b_scale, nullptr,
                   masked_m.const_data_ptr<int32_t>(), workspace, out);
}

void fp8_gemm_out_cuda(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b, const at::Tensor& b_scale,
                       const std::optional<at::Tensor>& workspace, at::Tensor& out) {
  check_dense_gemm(a, a_scale, b, b_scale);
  check_gemm_out(kDenseOp, out, {a.size(0), b.size(0)}, "[M, N]", a);
  run_grouped_gemm(kDenseOp, GroupedLayout::kDense, a.size(0), a, a_scale, b, b_scale, nullptr, nullptr, workspace,
                   out);
}

void moe_route_out_cuda(const at::Tensor& logits, const at::Tensor& bias, int64_t top_k, int64_t n_group,
                        int64_t topk_group, double routed_scaling_factor, bool renormalize, at::Tensor& weights,
                        at::Tensor& ids) {
  const RouteParams p = check_route(logits, bias, top_k, n_group, topk_group, routed_scaling_factor, renormalize);
  check_route_out(logits, top_k, weights, ids);
  const c10::cuda::CUDAGuard guard(logits.device());
  RouteArgs args{logits.const_data_ptr<float>(), bias.const_data_ptr<float>(), weights.mutable_data_ptr<float>(),
                 ids.mutable_data_ptr<int32_t>(), logits.size(0), p};
  C10_CUDA_CHECK(launch_moe_route(args, c10::cuda::getCurrentCUDAStream()));
}

// Both layouts: contiguous (m_indices given) or masked (m_indices == nullptr, count = masked_m).
void launch_permute(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& x_scale,
                    const at::Tensor& ids, int64_t num_experts, int64_t alignment,
                    const std::optional<at::Tensor>& workspace, at::Tensor& out, at::Tensor& out_scale,
                    int32_t* m_indices, int32_t* masked_m, at::Tensor& row_map) {
  check_permute_workspace(op, workspace, x, ids, num_experts);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t routed = ids.numel();
  // moe_layout.h's carving: chunk counts and expert counts (int32), then the segment starts (int64).
  auto scratch = workspace_or_new(workspace, permute_workspace_bytes(routed, num_experts), x);
  char* base = static_cast<char*>(scratch.mutable_data_ptr());
  int32_t* chunk_prefix = reinterpret_cast<int32_t*>(base);
  PermuteArgs args{x.const_data_ptr(),
                   x_scale ? x_scale->const_data_ptr<float>() : nullptr,
                   ids.const_data_ptr<int32_t>(),
                   out.mutable_data_ptr(),
                   out_scale.mutable_data_ptr<float>(),
                   m_indices,
                   row_map.mutable_data_ptr<int32_t>(),
                   chunk_prefix,
                   masked_m ? masked_m : chunk_prefix + permute_chunks(routed) * num_experts,
                   reinterpret_cast<int64_t*>(base + permute_seg_start_offset(routed, num_experts)),
                   x.size(0),
                   ids.size(1),
                   x.size(1) * x.element_size(),
                   x_scale ? x_scale->size(1) : 0,
                   masked_m ? num_experts * x.size(0) : out.size(0),
                   num_experts,
                   alignment,
                   masked_m != nullptr};
  C10_CUDA_CHECK(launch_moe_permute(args, c10::cuda::getCurrentCUDAStream()));
}

void moe_permute_out_cuda(const at::Tensor& x, const std::optional<at::Tensor>& x_scale, const at::Tensor& ids,
                          int64_t num_experts, int64_t alignment, const std::optional<at::Tensor>& workspace,
                          at::Tensor& out, at::Tensor& out_scale, at::Tensor& m_indices, at::Tensor& row_map) {
  check_permute_out(x, x_scale, ids, num_experts, alignment, out, out_scale, m_indices, row_map);
  launch_permute(kPermuteOp, x, x_scale, ids, num_experts, alignment, workspace, out, out_scale,
                 m_indices.mutable_data_ptr<int32_t>(), nullptr, row_map);
}

void moe_permute_masked_out_cuda(const at::Tensor& x, const std::optional<at::Tensor>& x_scale, const at::Tensor& ids,
                                 int64_t num_experts, const std::optional<at::Tensor>& workspace, at::Tensor& out,
                                 at::Tensor& out_scale, at::Tensor& masked_m, at::Tensor& row_map) {
  check_permute_masked_out(x, x_scale, ids, num_experts, out, out_scale, masked_m, row_map);
  launch_permute(kPermuteMaskedOp, x, x_scale, ids, num_experts, 1, workspace, out, out_scale, nullptr,
                 masked_m.mutable_data_ptr<int32_t>(), row_map);
}

void moe_unpermute_out_cuda(const at::Tensor& y, const at::Tensor& weights, const at::Tensor& row_map, at::Tensor& out) {
  check_unpermute(y, weights, row_map);
  check_unpermute_out(y, weights, out);
  const c10::cuda::CUDAGuard guard(y.device());
  UnpermuteArgs args{y.const_data_ptr(), weights.const_data_ptr<float>(), row_map.const_data_ptr<int32_t>(),
                     out.mutable_data_ptr(), launch_dtype(y.scalar_type()), weights.size(0), weights.size(1), y.size(0),
                     y.size(1)};
  C10_CUDA_CHECK(launch_moe_unpermute(args, c10::cuda::getCurrentCUDAStream()));
}

void silu_and_mul_quant_fp8_out_cuda(const at::Tensor& x, int64_t group_size, bool scale_ue8m0, at::Tensor& out,
                                     at::Tensor& out_scale) {
  check_silu_quant_out(x, group_size, out, out_scale);
  const c10::cuda::CUDAGuard guard(x.device());
  SiluQuantArgs args{x.const_data_ptr(), x.stride(0), launch_dtype(x.scalar_type()),
                     static_cast<uint8_t*>(out.mutable_data_ptr()), out_scale.mutable_data_ptr<float>(), x.size(0),
                     x.size(1) / 2, group_size, scale_ue8m0};
  C10_CUDA_CHECK(launch_silu_and_mul_quant_fp8(args, c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CUDA, m) {
  m.impl("fp8_grouped_gemm_contiguous_out", &fp8_grouped_gemm_contiguous_out_cuda);
  m.impl("fp8_grouped_gemm_masked_out", &fp8_grouped_gemm_masked_out_cuda);
  m.impl("fp8_gemm_out", &fp8_gemm_out_cuda);
  m.impl("moe_route_out", &moe_route_out_cuda);
  m.impl("moe_permute_out", &moe_permute_out_cuda);
  m.impl("moe_permute_masked_out", &moe_permute_masked_out_cuda);
  m.impl("moe_unpermute_out", &moe_unpermute_out_cuda);
  m.impl("silu_and_mul_quant_fp8_out", &silu_and_mul_quant_fp8_out_cuda);
}

}  // namespace glm52::moe
