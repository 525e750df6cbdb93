// CUDA kernels of silu_and_mul_quant_fp8: the quantization kernels' team plan (quant_fp8.h: a
// team of lanes per group, 16-byte loads, amax by shuffles) with silu_and_mul (moe_activation.h)
// applied to the gate and up vectors as they are loaded, then quant_fp8.h's scale and clamping.
// A scalar kernel takes the shapes and alignments the vector path cannot.
#include "moe/cuda/moe_launch.h"
#include "moe/moe_activation.h"
#include "common/cuda_convert.cuh"
#include "quant/quant_fp8.h"

#include <algorithm>

namespace glm52::moe {
namespace {

using quant::GroupSpan;
using quant::QuantTeamPlan;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride loops cover the rest

// SwiGLU of the E elements of vector i owned by this lane (16-byte loads of gate and up).
template <typename T, int E>
__device__ __forceinline__ void load_silu(const T* gate, int64_t n, int64_t start, float* h) {
  const uint4 graw = __ldg(reinterpret_cast<const uint4*>(gate + start));
  const uint4 uraw = __ldg(reinterpret_cast<const uint4*>(gate + n + start));
  const T* gv = reinterpret_cast<const T*>(&graw);
  const T* uv = reinterpret_cast<const T*>(&uraw);
#pragma unroll
  for (int j = 0; j < E; ++j) h[j] = silu_and_mul(to_float(gv[j]), to_float(uv[j]));
}

// Two passes per group: amax, then quantize. The second pass reloads (from L1) and recomputes
// instead of holding the group in registers: the IEEE division in scaled_for_e4m3 calls a
// slow-path subroutine, and live registers across that call would be saved to the stack.
template <typename T, int VECS>
__global__ void __launch_bounds__(kThreads) silu_quant_vec_kernel(SiluQuantArgs a, QuantTeamPlan plan) {
  constexpr int E = 16 / sizeof(T);
  const T* x = static_cast<const T*>(a.x);
  const int team_lane = threadIdx.x & (plan.lanes - 1);
  const int64_t teams_per_block = kThreads / plan.lanes;
  const int64_t groups = a.rows * ceil_div(a.n, a.group_size);
  // `first` is uniform across the block, so every lane runs the same iterations (full-mask shuffles).
  for (int64_t first = blockIdx.x * teams_per_block; first < groups; first += gridDim.x * teams_per_block) {
    const int64_t g = first + threadIdx.x / plan.lanes;
    const bool active = g < groups;
    const GroupSpan span = quant::group_span(active ? g : 0, a.n, a.group_size);
    const T* gate = x + span.row * a.x_row_stride + span.col0;
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
      const int64_t start = quant::team_vector_start(plan, team_lane, i);
      if (active && start < span.len) {
        float h[E];
        load_silu<T, E>(gate, a.n, start, h);
#pragma unroll
        for (int j = 0; j < E; ++j) amax = fmaxf(amax, fabsf(h[j]));
      }
    }
    for (int offset = plan.lanes / 2; offset > 0; offset /= 2)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float scale = quant::group_scale(amax, a.scale_ue8m0);
    if (!active) continue;
    if (team_lane == 0) a.scale[span.row * ceil_div(a.n, a.group_size) + span.group] = scale;
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
      const int64_t start = quant::team_vector_start(plan, team_lane, i);
      if (start < span.len) {
        float h[E];
        load_silu<T, E>(gate, a.n, start, h);
#pragma unroll
        for (int j = 0; j < E; ++j) h[j] = quant::scaled_for_e4m3(h[j], scale);
        store_e4m3<E>(a.q + span.row * a.n + span.col0 + start, h);
      }
    }
  }
}

// Any size and alignment: one warp per group, silu_and_mul computed in both passes.
template <typename T>
__global__ void __launch_bounds__(kThreads) silu_quant_scalar_kernel(SiluQuantArgs a) {
  const T* x = static_cast<const T*>(a.x);
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = kThreads / 32;
  const int64_t groups = a.rows * ceil_div(a.n, a.group_size);
  for (int64_t g = blockIdx.x * warps_per_block + threadIdx.x / 32; g < groups; g += gridDim.x * warps_per_block) {
    const GroupSpan span = quant::group_span(g, a.n, a.group_size);
    const T* gate = x + span.row * a.x_row_stride + span.col0;
    float amax = 0.0f;
    for (int64_t i = lane; i < span.len; i += 32) amax = fmaxf(amax, fabsf(silu_and_mul(to_float(gate[i]), to_float(gate[i + a.n]))));
    for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float scale = quant::group_scale(amax, a.scale_ue8m0);
    if (lane == 0) a.scale[span.row * ceil_div(a.n, a.group_size) + span.group] = scale;
    uint8_t* qg = a.q + span.row * a.n + span.col0;
    for (int64_t i = lane; i < span.len; i += 32)
      qg[i] = e4m3(quant::scaled_for_e4m3(silu_and_mul(to_float(gate[i]), to_float(gate[i + a.n])), scale));
  }
}

template <typename T>
cudaError_t launch_typed(const SiluQuantArgs& a, cudaStream_t stream) {
  const int64_t groups = a.rows * ceil_div(a.n, a.group_size);
  // The up half starts n elements after the gate: aligned whenever n is a multiple of the vector.
  const QuantTeamPlan plan = quant::plan_quant_team(sizeof(T), a.n, a.group_size, a.x_row_stride,
                                                    reinterpret_cast<uint64_t>(a.x), reinterpret_cast<uint64_t>(a.q));
  const int64_t per_block = kThreads / (plan.vectorized ? plan.lanes : 32);
  const unsigned blocks = static_cast<unsigned>(std::min(ceil_div(groups, per_block), kMaxBlocks));
  // Groups wider than 4 vectors per lane (group_size >= 1024 for 16-bit inputs) take the scalar
  // kernel: the 8-vector instantiations keep registers live across scaled_for_e4m3's division
  // slow-path call, which ptxas saves to the stack.
  if (!plan.vectorized || plan.vecs_per_lane > 4) {
    silu_quant_scalar_kernel<T><<<static_cast<unsigned>(std::min(ceil_div(groups, int64_t{kThreads / 32}), kMaxBlocks)),
                                  kThreads, 0, stream>>>(a);
  } else {
    switch (plan.vecs_per_lane) {
      case 1: silu_quant_vec_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(a, plan); break;
      case 2: silu_quant_vec_kernel<T, 2><<<blocks, kThreads, 0, stream>>>(a, plan); break;
      default: silu_quant_vec_kernel<T, 4><<<blocks, kThreads, 0, stream>>>(a, plan); break;
    }
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_silu_and_mul_quant_fp8(const SiluQuantArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.n == 0) return cudaSuccess;
  switch (a.x_dtype) {
    case DType::kFloat32: return launch_typed<float>(a, stream);
    case DType::kFloat16: return launch_typed<__half>(a, stream);
    case DType::kBFloat16: return launch_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace glm52::moe
