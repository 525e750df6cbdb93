// CUDA kernels of the quantization family. Memory-bound, one pass over the input: a team of lanes
// loads its group with 16-byte loads into registers, reduces amax with shuffles, then converts
// and stores from the same registers. Shapes or alignments the vector path cannot take go to a
// scalar kernel with the same results. The math is quant_fp8.h's, shared with the CPU twins.
#include "quant/cuda/quant_fp8_launch.h"
#include "common/cuda_convert.cuh"
#include "quant/quant_fp8.h"

#include <algorithm>

namespace glm52::quant {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 8192;  // grid-stride loops cover the rest

// One team of plan.lanes lanes per group; each lane holds up to VECS 16-byte vectors.
template <typename T, int VECS>
__global__ void __launch_bounds__(kThreads) quant_fp8_group_vec_kernel(QuantFp8Args a, QuantTeamPlan plan) {
  constexpr int E = 16 / sizeof(T);
  const T* x = static_cast<const T*>(a.x);
  const int team_lane = threadIdx.x & (plan.lanes - 1);
  const int64_t teams_per_block = kThreads / plan.lanes;
  const int64_t groups = a.rows * ceil_div(a.cols, a.group_size);
  // `first` is uniform across the block, so every lane runs the same iterations (full-mask shuffles).
  for (int64_t first = blockIdx.x * teams_per_block; first < groups; first += gridDim.x * teams_per_block) {
    const int64_t g = first + threadIdx.x / plan.lanes;
    const bool active = g < groups;
    const GroupSpan span = group_span(active ? g : 0, a.cols, a.group_size);
    float v[VECS][E];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
      const int64_t start = team_vector_start(plan, team_lane, i);
      if (active && start < span.len) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(x + span.row * a.x_row_stride + span.col0 + start));
        const T* elems = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < E; ++j) {
          v[i][j] = to_float(elems[j]);
          amax = fmaxf(amax, fabsf(v[i][j]));
        }
      }
    }
    for (int offset = plan.lanes / 2; offset > 0; offset /= 2)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float scale = group_scale(amax, a.scale_ue8m0);
    if (!active) continue;
    if (team_lane == 0) a.scale[span.row * ceil_div(a.cols, a.group_size) + span.group] = scale;
#pragma unroll
    for (int i = 0; i < VECS; ++i) {
      const int64_t start = team_vector_start(plan, team_lane, i);
      if (start < span.len) {
#pragma unroll
        for (int j = 0; j < E; ++j) v[i][j] = scaled_for_e4m3(v[i][j], scale);
        store_e4m3<E>(a.q + span.row * a.cols + span.col0 + start, v[i]);
      }
    }
  }
}

// Any size and alignment: one warp per group, two passes over the group (the second hits cache).
template <typename T>
__global__ void __launch_bounds__(kThreads) quant_fp8_group_scalar_kernel(QuantFp8Args a) {
  const T* x = static_cast<const T*>(a.x);
  const int lane = threadIdx.x & 31;
  const int64_t warps_per_block = kThreads / 32;
  const int64_t groups = a.rows * ceil_div(a.cols, a.group_size);
  for (int64_t g = blockIdx.x * warps_per_block + threadIdx.x / 32; g < groups; g += gridDim.x * warps_per_block) {
    const GroupSpan span = group_span(g, a.cols, a.group_size);
    const T* xg = x + span.row * a.x_row_stride + span.col0;
    float amax = 0.0f;
    for (int64_t i = lane; i < span.len; i += 32) amax = fmaxf(amax, fabsf(to_float(xg[i])));
    for (int offset = 16; offset > 0; offset /= 2) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    const float scale = group_scale(amax, a.scale_ue8m0);
    if (lane == 0) a.scale[span.row * ceil_div(a.cols, a.group_size) + span.group] = scale;
    uint8_t* qg = a.q + span.row * a.cols + span.col0;
    for (int64_t i = lane; i < span.len; i += 32)
      qg[i] = e4m3(scaled_for_e4m3(to_float(xg[i]), scale));
  }
}

template <typename T>
cudaError_t launch_quant_typed(const QuantFp8Args& a, cudaStream_t stream) {
  const int64_t groups = a.rows * ceil_div(a.cols, a.group_size);
  const QuantTeamPlan plan = plan_quant_team(sizeof(T), a.cols, a.group_size, a.x_row_stride,
                                             reinterpret_cast<uint64_t>(a.x), reinterpret_cast<uint64_t>(a.q));
  const int64_t per_block = kThreads / (plan.vectorized ? plan.lanes : 32);
  const dim3 grid(static_cast<unsigned>(std::min(ceil_div(groups, per_block), kMaxBlocks)));
  if (!plan.vectorized) {
    quant_fp8_group_scalar_kernel<T><<<grid, kThreads, 0, stream>>>(a);
  } else if (plan.vecs_per_lane == 1) {
    quant_fp8_group_vec_kernel<T, 1><<<grid, kThreads, 0, stream>>>(a, plan);
  } else if (plan.vecs_per_lane == 2) {
    quant_fp8_group_vec_kernel<T, 2><<<grid, kThreads, 0, stream>>>(a, plan);
  } else if (plan.vecs_per_lane == 4) {
    quant_fp8_group_vec_kernel<T, 4><<<grid, kThreads, 0, stream>>>(a, plan);
  } else {
    quant_fp8_group_vec_kernel<T, kMaxVecsPerLane><<<grid, kThreads, 0, stream>>>(a, plan);
  }
  return cudaGetLastError();
}

// Each thread converts VEC consecutive elements of one row (VEC = 16: one 16-byte load of codes).
template <typename OutT, int VEC>
__global__ void __launch_bounds__(kThreads) dequant_fp8_block_kernel(DequantFp8BlockArgs a) {
  OutT* out = static_cast<OutT*>(a.out);
  const int64_t chunks = a.batch * a.rows * a.cols / VEC;
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < chunks; i += int64_t{gridDim.x} * kThreads) {
    const int64_t e = i * VEC, br = e / a.cols, c = e - br * a.cols;
    const float s = a.scale_inv[block_scale_offset(br / a.rows, br % a.rows, c, a.rows, a.cols, a.block_rows, a.block_cols)];
    alignas(16) uint8_t codes[VEC];
    if constexpr (VEC == 16) {
      *reinterpret_cast<uint4*>(codes) = __ldg(reinterpret_cast<const uint4*>(a.w + e));
    } else {
      codes[0] = a.w[e];
    }
    alignas(16) OutT vals[VEC];
#pragma unroll
    for (int j = 0; j < VEC; ++j) vals[j] = from_float<OutT>(e4m3_to_float(codes[j]) * s);
#pragma unroll
    for (int j = 0; j < VEC * int(sizeof(OutT)) / 16; ++j)
      reinterpret_cast<uint4*>(out + e)[j] = reinterpret_cast<const uint4*>(vals)[j];
    if constexpr (VEC * sizeof(OutT) < 16) out[e] = vals[0];
  }
}

template <typename OutT>
cudaError_t launch_dequant_typed(const DequantFp8BlockArgs& a, cudaStream_t stream) {
  // 16 codes per thread when no 16-element run crosses a row or a scale block and all is aligned.
  const bool vec = a.cols % 16 == 0 && a.block_cols % 16 == 0 && reinterpret_cast<uint64_t>(a.w) % 16 == 0 &&
                   reinterpret_cast<uint64_t>(a.out) % 16 == 0;
  const int64_t per_thread = vec ? 16 : 1;
  const int64_t chunks = a.batch * a.rows * a.cols / per_thread;
  const dim3 grid(static_cast<unsigned>(std::min(ceil_div(chunks, kThreads), kMaxBlocks)));
  if (vec)
    dequant_fp8_block_kernel<OutT, 16><<<grid, kThreads, 0, stream>>>(a);
  else
    dequant_fp8_block_kernel<OutT, 1><<<grid, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_quant_fp8_per_token_group(const QuantFp8Args& a, cudaStream_t stream) {
  if (a.rows == 0 || a.cols == 0) return cudaSuccess;
  switch (a.x_dtype) {
    case DType::kFloat32: return launch_quant_typed<float>(a, stream);
    case DType::kFloat16: return launch_quant_typed<__half>(a, stream);
    case DType::kBFloat16: return launch_quant_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_dequant_fp8_block(const DequantFp8BlockArgs& a, cudaStream_t stream) {
  if (a.batch * a.rows * a.cols == 0) return cudaSuccess;
  switch (a.out_dtype) {
    case DType::kFloat32: return launch_dequant_typed<float>(a, stream);
    case DType::kFloat16: return launch_dequant_typed<__half>(a, stream);
    case DType::kBFloat16: return launch_dequant_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace glm52::quant
