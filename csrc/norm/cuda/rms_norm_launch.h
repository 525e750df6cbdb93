// Launcher of the RMSNorm kernel (rms_norm_kernels.cu). Framework-free: raw pointers, sizes and a
// stream; the torch-facing checks live in norm_checks.h.
#pragma once

#include "common/dtype.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace glm52::norm {

struct RmsNormArgs {
  const void* x;         // [rows, dim] dtype, contiguous
  const void* residual;  // [rows, dim] or nullptr (plain RMSNorm)
  const void* weight;    // [dim]
  void* out;             // [rows, dim]
  void* sum;             // [rows, dim] x + residual, or nullptr
  DType dtype;
  int64_t rows, dim;
  float eps;
};

// Returns the launch error (cudaSuccess when queued); no rows launch nothing.
cudaError_t launch_rms_norm(const RmsNormArgs& args, cudaStream_t stream);

}  // namespace glm52::norm
