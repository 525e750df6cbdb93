// Argument validation shared by the CPU and CUDA entry points of every op. Each failure names the
// op, the argument and what was expected, e.g.
//   glm52.quant_fp8_per_token_group: argument 'x' must be 2-D [M, K], got shape [2, 3, 4]
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <sstream>
#include <string>

namespace glm52 {

#define GLM52_CHECK_ARG(cond, op, arg, ...) \
  TORCH_CHECK(cond, "glm52.", op, ": argument '", arg, "' ", __VA_ARGS__)

inline std::string shape_str(at::IntArrayRef shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* arg,
                        std::initializer_list<at::ScalarType> allowed) {
  for (auto dtype : allowed)
    if (t.scalar_type() == dtype) return;
  std::ostringstream expected;
  const char* sep = "";
  for (auto dtype : allowed) {
    expected << sep << c10::toString(dtype);
    sep = " or ";
  }
  GLM52_CHECK_ARG(false, op, arg, "must have dtype ", expected.str(), ", got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, const char* op, const char* arg, int64_t dim,
                      const char* layout) {
  GLM52_CHECK_ARG(t.dim() == dim, op, arg, "must be ", dim, "-D ", layout, ", got shape ",
                  shape_str(t.sizes()));
}

inline void check_shape(const at::Tensor& t, const char* op, const char* arg,
                        at::IntArrayRef expected, const char* layout) {
  GLM52_CHECK_ARG(t.sizes() == expected, op, arg, "must have shape ", shape_str(expected), " ",
                  layout, ", got ", shape_str(t.sizes()));
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* op,
                              const char* arg, const char* ref_arg) {
  GLM52_CHECK_ARG(t.device() == ref.device(), op, arg, "must be on the same device as '", ref_arg,
                  "' (", ref.device(), "), got ", t.device());
}

inline void check_contiguous(const at::Tensor& t, const char* op, const char* arg) {
  GLM52_CHECK_ARG(t.is_contiguous(), op, arg, "must be contiguous, got strides ",
                  shape_str(t.strides()));
}

}  // namespace glm52
