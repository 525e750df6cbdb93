// Argument contracts of the MoE ops, shared by their CPU and CUDA entry points. Contents of
// index tensors (m_indices, masked_m, row_map) are checked only by the CPU twins: reading them on
// the GPU would need a host sync, so the CUDA kernels instead clamp or skip what is out of range
// (never an out-of-bounds access); each op's docstring says how.
#pragma once

#include "common/checks.h"
#include "common/host_device.h"
#include "common/workspace.h"
#include "moe/moe_gemm_config.h"
#include "moe/moe_layout.h"
#include "moe/moe_route.h"

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <utility>

namespace glm52::moe {

inline constexpr const char* kContiguousOp = "fp8_grouped_gemm_contiguous";
inline constexpr const char* kMaskedOp = "fp8_grouped_gemm_masked";
inline constexpr const char* kDenseOp = "fp8_gemm";
inline constexpr const char* kRouteOp = "moe_route";
inline constexpr const char* kPermuteOp = "moe_permute";
inline constexpr const char* kUnpermuteOp = "moe_unpermute";
inline constexpr const char* kPermuteMaskedOp = "moe_permute_masked";
inline constexpr const char* kSiluQuantOp = "silu_and_mul_quant_fp8";

constexpr int64_t kScaleBlock = 128;  // the FP8 recipe's block along K (and N for weights)

inline void check_tensor(const at::Tensor& t, const char* op, const char* arg, at::ScalarType dtype,
                         at::IntArrayRef shape, const char* layout, const at::Tensor& ref, const char* ref_arg) {
  check_dtype(t, op, arg, {dtype});
  check_shape(t, op, arg, shape, layout);
  check_contiguous(t, op, arg);
  check_same_device(t, ref, op, arg, ref_arg);
}

// The block-scaled GEMM operands: a [..., K] e4m3 with a_scale [..., ceil(K/128)] (one per row
// per 128 columns), b [E, N, K] (or [N, K] when dense) e4m3 with b_scale [(E,) ceil(N/128), ceil(K/128)].
// The CUDA kernels need N and K to be multiples of 128 (cuda_path).
inline void check_gemm_operands(const char* op, const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                const at::Tensor& b_scale, bool dense) {
  check_dtype(a, op, "a", {at::kFloat8_e4m3fn});
  check_contiguous(a, op, "a");
  const int64_t k = a.size(-1);
  std::vector<int64_t> a_scale_shape(a.sizes().begin(), a.sizes().end() - 1);
  a_scale_shape.push_back(ceil_div(k, kScaleBlock));
  check_tensor(a_scale, op, "a_scale", at::kFloat, a_scale_shape, "[..., ceil(K / 128)] (one scale per row per 128 columns)",
               a, "a");
  check_dim(b, op, "b", dense ? 2 : 3, dense ? "[N, K]" : "[E, N, K]");
  check_dtype(b, op, "b", {at::kFloat8_e4m3fn});
  check_contiguous(b, op, "b");
  check_same_device(b, a, op, "b", "a");
  GLM52_CHECK_ARG(b.size(-1) == k, op, "b", "must have K = ", k, " columns (as 'a'), got shape ", shape_str(b.sizes()));
  std::vector<int64_t> b_scale_shape(b.sizes().begin(), b.sizes().end() - 2);
  b_scale_shape.push_back(ceil_div(b.size(-2), kScaleBlock));
  b_scale_shape.push_back(ceil_div(k, kScaleBlock));
  check_tensor(b_scale, op, "b_scale", at::kFloat, b_scale_shape, "[(E,) ceil(N / 128), ceil(K / 128)]", a, "a");
}

// What only the CUDA GEMMs add: whole 128-blocks along N and K (the tile shape) and 16-byte
// aligned operands (TMA).
inline void check_gemm_cuda(const char* op, const at::Tensor& a, const at::Tensor& b, const at::Tensor& out) {
  const int64_t n = b.size(-2), k = b.size(-1);
  GLM52_CHECK_ARG(n % kScaleBlock == 0 && k % kScaleBlock == 0, op, "b",
                  "must have N and K multiples of 128 on CUDA (the kernel's tile), got N = ", n, ", K = ", k);
  for (auto [t, name] : {std::pair<const at::Tensor&, const char*>{a, "a"}, {b, "b"}, {out, "out"}})
    GLM52_CHECK_ARG(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0, op, name,
                    "must start at a 16-byte aligned address on CUDA (TMA), got ", t.const_data_ptr());
}

inline void check_gemm_out(const char* op, const at::Tensor& out, at::IntArrayRef shape, const char* layout,
                           const at::Tensor& a) {
  check_tensor(out, op, "out", at::kBFloat16, shape, layout, a, "a");
}

// fp8_grouped_gemm_contiguous: a [M, K], b [E, N, K], m_indices [M] int32; out [M, N] bf16.
inline void check_contiguous_gemm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                  const at::Tensor& b_scale, const at::Tensor& m_indices) {
  check_dim(a, kContiguousOp, "a", 2, "[M, K]");
  check_gemm_operands(kContiguousOp, a, a_scale, b, b_scale, false);
  check_tensor(m_indices, kContiguousOp, "m_indices", at::kInt, {a.size(0)}, "[M] (expert per row, -1 = padding)", a, "a");
}

// fp8_grouped_gemm_masked: a [E, m_max, K], b [E, N, K], masked_m [E] int32; out [E, m_max, N] bf16.
inline void check_masked_gemm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                              const at::Tensor& b_scale, const at::Tensor& masked_m, int64_t expected_m) {
  check_dim(a, kMaskedOp, "a", 3, "[E, m_max, K]");
  check_gemm_operands(kMaskedOp, a, a_scale, b, b_scale, false);
  GLM52_CHECK_ARG(b.size(0) == a.size(0), kMaskedOp, "b", "must have E = ", a.size(0), " experts (as 'a'), got shape ",
                  shape_str(b.sizes()));
  check_tensor(masked_m, kMaskedOp, "masked_m", at::kInt, {a.size(0)}, "[E] (valid rows per expert)", a, "a");
  GLM52_CHECK_ARG(expected_m >= 0, kMaskedOp, "expected_m", "must be >= 0, got ", expected_m);
}

// fp8_gemm: a [M, K], b [N, K]; out [M, N] bf16.
inline void check_dense_gemm(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                             const at::Tensor& b_scale) {
  check_dim(a, kDenseOp, "a", 2, "[M, K]");
  check_gemm_operands(kDenseOp, a, a_scale, b, b_scale, true);
}

// The GEMMs' optional workspace (common/workspace.h): fp8_grouped_gemm_workspace_bytes(groups)
// bytes beside a, whichever tile runs; groups = b's experts (1 for the dense GEMM).
inline void check_gemm_workspace(const char* op, const std::optional<at::Tensor>& workspace, const at::Tensor& a,
                                 const at::Tensor& b) {
  const int64_t groups = b.dim() == 3 ? b.size(0) : 1;
  check_workspace(workspace, grouped_gemm_workspace_bytes(groups), "fp8_grouped_gemm_workspace_bytes", a, "a", op);
}

// moe_route: logits [T, E] fp32, bias [E] fp32 and the selection parameters.
inline RouteParams check_route(const at::Tensor& logits, const at::Tensor& bias, int64_t top_k, int64_t n_group,
                               int64_t topk_group, double scaling, bool renormalize) {
  check_dim(logits, kRouteOp, "logits", 2, "[T, E]");
  check_dtype(logits, kRouteOp, "logits", {at::kFloat});
  check_contiguous(logits, kRouteOp, "logits");
  const int64_t e = logits.size(1);
  GLM52_CHECK_ARG(e >= 1 && e <= kRouteMaxExperts, kRouteOp, "logits", "must have 1 to ", kRouteMaxExperts,
                  " experts (columns), got ", e);
  check_tensor(bias, kRouteOp, "bias", at::kFloat, {e}, "[E] (the correction bias)", logits, "logits");
  GLM52_CHECK_ARG(n_group >= 1 && n_group <= kRouteMaxGroups && e % n_group == 0, kRouteOp, "n_group",
                  "must divide E = ", e, " and be in [1, ", kRouteMaxGroups, "], got ", n_group);
  GLM52_CHECK_ARG(topk_group >= 1 && topk_group <= n_group, kRouteOp, "topk_group", "must be in [1, n_group = ",
                  n_group, "], got ", topk_group);
  const int64_t eligible = topk_group * (e / n_group);
  GLM52_CHECK_ARG(top_k >= 1 && top_k <= kRouteMaxTopK && top_k <= eligible, kRouteOp, "top_k", "must be in [1, min(",
                  kRouteMaxTopK, ", topk_group * E / n_group = ", eligible, ")], got ", top_k);
  return {static_cast<int>(e), static_cast<int>(top_k), static_cast<int>(n_group), static_cast<int>(topk_group),
          static_cast<float>(scaling), renormalize};
}

inline void check_route_out(const at::Tensor& logits, int64_t top_k, const at::Tensor& weights, const at::Tensor& ids) {
  check_tensor(weights, kRouteOp, "weights", at::kFloat, {logits.size(0), top_k}, "[T, top_k]", logits, "logits");
  check_tensor(ids, kRouteOp, "ids", at::kInt, {logits.size(0), top_k}, "[T, top_k]", logits, "logits");
}

// moe_permute: x [T, K] (any of e4m3, bf16, fp16, fp32), x_scale [T, G] fp32 or none, ids [T, k] int32.
inline void check_permute(const at::Tensor& x, const std::optional<at::Tensor>& x_scale, const at::Tensor& ids,
                          int64_t num_experts, int64_t alignment) {
  check_dim(x, kPermuteOp, "x", 2, "[T, K]");
  check_dtype(x, kPermuteOp, "x", {at::kFloat8_e4m3fn, at::kBFloat16, at::kHalf, at::kFloat});
  check_contiguous(x, kPermuteOp, "x");
  if (x_scale) {
    check_dim(*x_scale, kPermuteOp, "x_scale", 2, "[T, G]");
    check_tensor(*x_scale, kPermuteOp, "x_scale", at::kFloat, {x.size(0), x_scale->size(1)}, "[T, G]", x, "x");
  }
  check_dim(ids, kPermuteOp, "ids", 2, "[T, top_k]");
  check_tensor(ids, kPermuteOp, "ids", at::kInt, {x.size(0), ids.size(1)}, "[T, top_k]", x, "x");
  GLM52_CHECK_ARG(num_experts >= 1 && num_experts <= kRouteMaxExperts, kPermuteOp, "num_experts", "must be in [1, ",
                  kRouteMaxExperts, "], got ", num_experts);
  GLM52_CHECK_ARG(alignment >= 1 && alignment <= 4096, kPermuteOp, "alignment", "must be in [1, 4096], got ", alignment);
}

inline int64_t permute_rows(const at::Tensor& ids, int64_t num_experts, int64_t alignment) {
  return permuted_rows_bound(ids.numel(), num_experts, alignment);
}

inline void check_permute_out(const at::Tensor& x, const std::optional<at::Tensor>& x_scale, const at::Tensor& ids,
                              int64_t num_experts, int64_t alignment, const at::Tensor& out, const at::Tensor& out_scale,
                              const at::Tensor& m_indices, const at::Tensor& row_map) {
  check_permute(x, x_scale, ids, num_experts, alignment);
  const int64_t rows = permute_rows(ids, num_experts, alignment);
  GLM52_CHECK_ARG(rows <= INT32_MAX, kPermuteOp, "ids", "gives ", rows, " permuted rows, more than int32 row_map can index");
  check_tensor(out, kPermuteOp, "out", x.scalar_type(), {rows, x.size(1)},
               "[permuted_rows_bound(T * top_k, num_experts, alignment), K]", x, "x");
  check_tensor(out_scale, kPermuteOp, "out_scale", at::kFloat, {rows, x_scale ? x_scale->size(1) : 0},
               "[rows, G] ([rows, 0] without x_scale)", x, "x");
  check_tensor(m_indices, kPermuteOp, "m_indices", at::kInt, {rows}, "[rows]", x, "x");
  check_tensor(row_map, kPermuteOp, "row_map", at::kInt, ids.sizes(), "[T, top_k]", x, "x");
}

// moe_permute_masked: as moe_permute; out [E, T, K], out_scale [E, T, G], masked_m [E], row_map [T, k].
inline void check_permute_masked_out(const at::Tensor& x, const std::optional<at::Tensor>& x_scale,
                                     const at::Tensor& ids, int64_t num_experts, const at::Tensor& out,
                                     const at::Tensor& out_scale, const at::Tensor& masked_m, const at::Tensor& row_map) {
  check_permute(x, x_scale, ids, num_experts, 1);
  const int64_t tokens = x.size(0);
  GLM52_CHECK_ARG(num_experts * tokens <= INT32_MAX, kPermuteMaskedOp, "ids", "gives ", num_experts * tokens,
                  " rows, more than int32 row_map can index");
  check_tensor(out, kPermuteMaskedOp, "out", x.scalar_type(), {num_experts, tokens, x.size(1)}, "[E, T, K]", x, "x");
  check_tensor(out_scale, kPermuteMaskedOp, "out_scale", at::kFloat, {num_experts, tokens, x_scale ? x_scale->size(1) : 0},
               "[E, T, G] ([E, T, 0] without x_scale)", x, "x");
  check_tensor(masked_m, kPermuteMaskedOp, "masked_m", at::kInt, {num_experts}, "[E]", x, "x");
  check_tensor(row_map, kPermuteMaskedOp, "row_map", at::kInt, ids.sizes(), "[T, top_k]", x, "x");
}

// moe_permute's and moe_permute_masked's optional workspace: moe_permute_workspace_bytes(T * top_k, E) bytes beside x.
inline void check_permute_workspace(const char* op, const std::optional<at::Tensor>& workspace, const at::Tensor& x,
                                    const at::Tensor& ids, int64_t num_experts) {
  check_workspace(workspace, permute_workspace_bytes(ids.numel(), num_experts), "moe_permute_workspace_bytes", x, "x",
                  op);
}

// moe_unpermute: y [rows, N] bf16/fp16/fp32, weights [T, k] fp32, row_map [T, k] int32.
inline void check_unpermute(const at::Tensor& y, const at::Tensor& weights, const at::Tensor& row_map) {
  check_dim(y, kUnpermuteOp, "y", 2, "[rows, N]");
  check_dtype(y, kUnpermuteOp, "y", {at::kBFloat16, at::kHalf, at::kFloat});
  check_contiguous(y, kUnpermuteOp, "y");
  check_dim(weights, kUnpermuteOp, "weights", 2, "[T, top_k]");
  check_tensor(weights, kUnpermuteOp, "weights", at::kFloat, weights.sizes(), "[T, top_k]", y, "y");
  check_tensor(row_map, kUnpermuteOp, "row_map", at::kInt, weights.sizes(), "[T, top_k] (as 'weights')", y, "y");
}

inline void check_unpermute_out(const at::Tensor& y, const at::Tensor& weights, const at::Tensor& out) {
  check_tensor(out, kUnpermuteOp, "out", y.scalar_type(), {weights.size(0), y.size(1)}, "[T, N] (y's dtype)", y, "y");
}

// silu_and_mul_quant_fp8: x [M, 2N] bf16/fp16/fp32 (unit column stride), group_size > 0.
inline void check_silu_quant(const at::Tensor& x, int64_t group_size) {
  check_dim(x, kSiluQuantOp, "x", 2, "[M, 2N]");
  check_dtype(x, kSiluQuantOp, "x", {at::kBFloat16, at::kHalf, at::kFloat});
  GLM52_CHECK_ARG(x.size(1) % 2 == 0, kSiluQuantOp, "x", "must have an even number of columns [gate | up], got shape ",
                  shape_str(x.sizes()));
  GLM52_CHECK_ARG(x.size(1) <= 1 || x.stride(1) == 1, kSiluQuantOp, "x", "must have unit stride along columns, got strides ",
                  shape_str(x.strides()));
  GLM52_CHECK_ARG(group_size > 0, kSiluQuantOp, "group_size", "must be positive, got ", group_size);
}

inline void check_silu_quant_out(const at::Tensor& x, int64_t group_size, const at::Tensor& out,
                                 const at::Tensor& out_scale) {
  check_silu_quant(x, group_size);
  const int64_t n = x.size(1) / 2;
  check_tensor(out, kSiluQuantOp, "out", at::kFloat8_e4m3fn, {x.size(0), n}, "[M, N]", x, "x");
  check_tensor(out_scale, kSiluQuantOp, "out_scale", at::kFloat, {x.size(0), ceil_div(n, group_size)},
               "[M, ceil(N / group_size)]", x, "x");
}

}  // namespace glm52::moe
