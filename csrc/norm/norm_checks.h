// Argument contracts of the RMSNorm ops, shared by their CPU and CUDA entry points.
#pragma once

#include "common/checks.h"

#include <ATen/core/Tensor.h>

namespace glm52::norm {

inline constexpr const char* kRmsNormOp = "rms_norm";
inline constexpr const char* kAddRmsNormOp = "add_rms_norm";

// x [..., D] bf16/fp16/fp32 contiguous, D >= 1; weight [D] of x's dtype, contiguous, beside x.
inline void check_norm_input(const at::Tensor& x, const at::Tensor& weight, double eps, const char* op) {
  GLM52_CHECK_ARG(x.dim() >= 1 && x.size(-1) >= 1, op, "x", "must be [..., D] with D >= 1, got shape ",
                  shape_str(x.sizes()));
  check_dtype(x, op, "x", {at::kBFloat16, at::kHalf, at::kFloat});
  check_contiguous(x, op, "x");
  check_dim(weight, op, "weight", 1, "[D]");
  check_shape(weight, op, "weight", {x.size(-1)}, "[D] (D = x's last size)");
  check_dtype(weight, op, "weight", {x.scalar_type()});
  check_contiguous(weight, op, "weight");
  check_same_device(weight, x, op, "weight", "x");
  GLM52_CHECK_ARG(eps >= 0, op, "eps", "must be >= 0, got ", eps);
}

// A tensor of x's shape and dtype, contiguous, beside x (residual, out, sum).
inline void check_like_x(const at::Tensor& t, const at::Tensor& x, const char* op, const char* arg) {
  check_dtype(t, op, arg, {x.scalar_type()});
  check_shape(t, op, arg, x.sizes(), "x's shape");
  check_contiguous(t, op, arg);
  check_same_device(t, x, op, arg, "x");
}

}  // namespace glm52::norm
