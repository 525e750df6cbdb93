// CUDA RMSNorm (optionally fused with the residual add): one block of kNormThreads per row, two
// passes over the row (the second hits L1/L2). The ownership and summation order are
// norm/rms_norm.h's, which the CPU twin replays.
#include "common/cuda_convert.cuh"
#include "norm/cuda/rms_norm_launch.h"
#include "norm/rms_norm.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace glm52::norm {
namespace {

constexpr int64_t kMaxBlocks = 65535;  // grid-stride over rows past this

template <typename T>
__global__ void __launch_bounds__(kNormThreads) rms_norm_kernel(RmsNormArgs a) {
  __shared__ float warp_totals[kNormWarps];
  const T* w = static_cast<const T*>(a.weight);
  for (int64_t r = blockIdx.x; r < a.rows; r += gridDim.x) {
    const T* xr = static_cast<const T*>(a.x) + r * a.dim;
    const T* src = xr;
    float s = 0.0f;
    if (a.residual != nullptr) {
      const T* rr = static_cast<const T*>(a.residual) + r * a.dim;
      T* sr = static_cast<T*>(a.sum) + r * a.dim;
      for (int64_t i = threadIdx.x; i < a.dim; i += kNormThreads) {
        const T v = from_float<T>(to_float(xr[i]) + to_float(rr[i]));
        sr[i] = v;
        const float f = to_float(v);
        s = __fadd_rn(s, __fmul_rn(f, f));  // no FMA: the CPU twin rounds the product too
      }
      src = sr;  // the second pass reads back this thread's own writes: no barrier needed
    } else {
      for (int64_t i = threadIdx.x; i < a.dim; i += kNormThreads) {
        const float f = to_float(xr[i]);
        s = __fadd_rn(s, __fmul_rn(f, f));
      }
    }
    for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
    if ((threadIdx.x & 31) == 0) warp_totals[threadIdx.x / 32] = s;
    __syncthreads();
    float total = 0.0f;
    for (int wi = 0; wi < kNormWarps; ++wi) total += warp_totals[wi];
    const float scale = rms_scale(total, a.dim, a.eps);
    T* o = static_cast<T*>(a.out) + r * a.dim;
    for (int64_t i = threadIdx.x; i < a.dim; i += kNormThreads)
      o[i] = from_float<T>(__fmul_rn(__fmul_rn(to_float(src[i]), scale), to_float(w[i])));
    __syncthreads();  // warp_totals is reused by the next row
  }
}

template <typename T>
cudaError_t launch_typed(const RmsNormArgs& a, cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(a.rows < kMaxBlocks ? a.rows : kMaxBlocks);
  rms_norm_kernel<T><<<blocks, kNormThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_rms_norm(const RmsNormArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::kFloat32: return launch_typed<float>(a, stream);
    case DType::kFloat16: return launch_typed<__half>(a, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace glm52::norm
