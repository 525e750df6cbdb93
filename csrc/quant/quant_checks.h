// Argument contracts of the quantization ops, shared by their CPU and CUDA entry points.
#pragma once

#include "common/checks.h"
#include "common/host_device.h"

#include <ATen/core/Tensor.h>

namespace glm52::quant {

inline constexpr const char* kQuantOp = "quant_fp8_per_token_group";
inline constexpr const char* kDequantOp = "dequant_fp8_block";

// x [M, K] bf16/fp16/fp32 with unit column stride (any row stride); group_size > 0.
inline void check_quant_input(const at::Tensor& x, int64_t group_size) {
  check_dim(x, kQuantOp, "x", 2, "[M, K]");
  check_dtype(x, kQuantOp, "x", {at::kBFloat16, at::kHalf, at::kFloat});
  GLM52_CHECK_ARG(x.size(1) <= 1 || x.stride(1) == 1, kQuantOp, "x",
                  "must have unit stride along K, got strides ", shape_str(x.strides()));
  GLM52_CHECK_ARG(group_size > 0, kQuantOp, "group_size", "must be positive, got ", group_size);
}

// out [M, K] float8_e4m3fn and out_scale [M, ceil(K / group_size)] fp32, contiguous, beside x.
inline void check_quant_outputs(const at::Tensor& x, int64_t group_size, const at::Tensor& out,
                                const at::Tensor& out_scale) {
  check_quant_input(x, group_size);
  check_dtype(out, kQuantOp, "out", {at::kFloat8_e4m3fn});
  check_shape(out, kQuantOp, "out", x.sizes(), "[M, K]");
  check_contiguous(out, kQuantOp, "out");
  check_same_device(out, x, kQuantOp, "out", "x");
  check_dtype(out_scale, kQuantOp, "out_scale", {at::kFloat});
  check_shape(out_scale, kQuantOp, "out_scale", {x.size(0), ceil_div(x.size(1), group_size)},
              "[M, ceil(K / group_size)]");
  check_contiguous(out_scale, kQuantOp, "out_scale");
  check_same_device(out_scale, x, kQuantOp, "out_scale", "x");
}

// w [N, K] or [E, N, K] float8_e4m3fn contiguous; scale_inv [(E,) ceil(N/bn), ceil(K/bk)] fp32.
inline void check_dequant_inputs(const at::Tensor& w, const at::Tensor& scale_inv,
                                 at::IntArrayRef block) {
  GLM52_CHECK_ARG(w.dim() == 2 || w.dim() == 3, kDequantOp, "w", "must be [N, K] or [E, N, K], got shape ",
                  shape_str(w.sizes()));
  check_dtype(w, kDequantOp, "w", {at::kFloat8_e4m3fn});
  check_contiguous(w, kDequantOp, "w");
  GLM52_CHECK_ARG(block.size() == 2 && block[0] > 0 && block[1] > 0, kDequantOp, "block",
                  "must be two positive sizes (block_n, block_k), got ", shape_str(block));
  const int64_t n = w.size(-2), k = w.size(-1);
  std::vector<int64_t> expected(w.sizes().begin(), w.sizes().end() - 2);
  expected.push_back(ceil_div(n, block[0]));
  expected.push_back(ceil_div(k, block[1]));
  check_dtype(scale_inv, kDequantOp, "scale_inv", {at::kFloat});
  check_shape(scale_inv, kDequantOp, "scale_inv", expected, "[(E,) ceil(N / block_n), ceil(K / block_k)]");
  check_contiguous(scale_inv, kDequantOp, "scale_inv");
  check_same_device(scale_inv, w, kDequantOp, "scale_inv", "w");
}

inline void check_dequant_output(const at::Tensor& w, const at::Tensor& out) {
  check_dtype(out, kDequantOp, "out", {at::kBFloat16, at::kHalf, at::kFloat});
  check_shape(out, kDequantOp, "out", w.sizes(), "(same as w)");
  check_contiguous(out, kDequantOp, "out");
  check_same_device(out, w, kDequantOp, "out", "w");
}

}  // namespace glm52::quant
