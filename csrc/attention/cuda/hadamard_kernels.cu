// hadamard_rotate: one warp per row of 32, 64 or 128 dims, fp32 out. Memory-bound; the math is
// attention_hadamard.h's (warp form in hadamard_warp.cuh), shared with the CPU twin.
#include "common/cuda_convert.cuh"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/hadamard_warp.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace glm52::attention {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = 8192;

template <typename T, int E>
__global__ void __launch_bounds__(kThreads) hadamard_rotate_kernel(const T* __restrict__ x,  // [rows, 32 E]
                                                                   float* __restrict__ out,  // [rows, 32 E]
                                                                   int64_t rows) {
  const int lane = threadIdx.x & 31;
  for (int64_t r = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32; r < rows; r += gridDim.x * int64_t{kWarps}) {
    const int64_t base = r * 32 * E + E * lane;
    float v[E];
#pragma unroll
    for (int i = 0; i < E; ++i) v[i] = to_float(x[base + i]);
    warp_hadamard_rotate<E>(v, lane);
#pragma unroll
    for (int i = 0; i < E; ++i) out[base + i] = v[i];
  }
}

template <typename T>
void launch_typed(const void* x, float* out, int64_t rows, int dim, dim3 grid, cudaStream_t stream) {
  const T* xt = static_cast<const T*>(x);
  switch (dim) {
    case 32: hadamard_rotate_kernel<T, 1><<<grid, kThreads, 0, stream>>>(xt, out, rows); break;
    case 64: hadamard_rotate_kernel<T, 2><<<grid, kThreads, 0, stream>>>(xt, out, rows); break;
    default: hadamard_rotate_kernel<T, 4><<<grid, kThreads, 0, stream>>>(xt, out, rows); break;
  }
}

}  // namespace

cudaError_t launch_hadamard_rotate(const void* x, DType dtype, float* out, int64_t rows, int dim,
                                   cudaStream_t stream) {
  if (rows == 0) return cudaSuccess;
  if (!hadamard_dim_supported(dim)) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(std::min(ceil_div(rows, kWarps), kMaxBlocks)));
  switch (dtype) {
    case DType::kFloat32: launch_typed<float>(x, out, rows, dim, grid, stream); break;
    case DType::kFloat16: launch_typed<__half>(x, out, rows, dim, grid, stream); break;
    case DType::kBFloat16: launch_typed<__nv_bfloat16>(x, out, rows, dim, grid, stream); break;
  }
  return cudaGetLastError();
}

}  // namespace glm52::attention
