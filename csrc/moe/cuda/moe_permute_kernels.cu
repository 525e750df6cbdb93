// CUDA kernels of moe_permute and moe_unpermute, no host sync:
//   1. count:   per chunk of kPermuteChunk routed entries, how many go to each expert;
//   2. scan:    one block turns the chunk counts into per-chunk prefixes (in place), the expert
//               counts and the segment starts (segment_starts, as the CPU twin);
//   3. rank:    one warp per chunk walks its entries in (token, slot) order and gives each its
//               row (match_any groups equal experts), so the layout is deterministic;
//   4. copy:    one block per routed entry moves the payload row (16-byte vectors) and its scales;
//   5. experts: m_indices[r] = segment_row_expert(r, ...), -1 on padding rows (contiguous layout;
//      the masked layout [E, T, K] puts expert e's rows at e * T and clamps its counts instead).
// Unpermute: one block per token sums its slots in order in fp32 (round-to-nearest mul, then add,
// as the CPU twin: bit-identical results).
#include "common/cuda_convert.cuh"
#include "moe/cuda/moe_launch.h"
#include "moe/moe_layout.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace glm52::moe {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 65535;

__global__ void __launch_bounds__(kThreads) moe_permute_count_kernel(PermuteArgs a) {
  extern __shared__ int32_t hist[];  // [num_experts]
  for (int64_t e = threadIdx.x; e < a.num_experts; e += kThreads) hist[e] = 0;
  __syncthreads();
  int64_t begin, end;
  permute_chunk_range(blockIdx.x, a.tokens * a.top_k, &begin, &end);
  for (int64_t i = begin + threadIdx.x; i < end; i += kThreads)
    if (const int e = local_expert(a.ids[i], a.num_experts); e >= 0) atomicAdd(&hist[e], 1);
  __syncthreads();
  for (int64_t e = threadIdx.x; e < a.num_experts; e += kThreads) a.chunk_prefix[blockIdx.x * a.num_experts + e] = hist[e];
}

// One block: thread e scans expert e's column of chunk counts (coalesced across experts), then
// thread 0 lays out the segments (at most a few hundred integer adds).
__global__ void __launch_bounds__(1024) moe_permute_scan_kernel(PermuteArgs a, int64_t chunks) {
  for (int64_t e = threadIdx.x; e < a.num_experts; e += blockDim.x)
    a.count[e] = chunk_column_scan(a.chunk_prefix, chunks, a.num_experts, e);
  __syncthreads();
  if (threadIdx.x != 0) return;
  if (a.masked) masked_segment_starts(a.num_experts, a.tokens, a.seg_start);
  else segment_starts(a.count, a.num_experts, a.alignment, a.seg_start);
}

// Masked layout, bad routing (an expert repeated within a token): counts past m_max = tokens are
// clamped here, after the rank kernel dropped the entries that would land past the segment.
__global__ void __launch_bounds__(kThreads) moe_permute_clamp_kernel(PermuteArgs a) {
  for (int64_t e = blockIdx.x * int64_t{kThreads} + threadIdx.x; e < a.num_experts; e += gridDim.x * int64_t{kThreads})
    a.count[e] = a.count[e] < a.tokens ? a.count[e] : static_cast<int32_t>(a.tokens);
}

__global__ void __launch_bounds__(32) moe_permute_rank_kernel(PermuteArgs a) {
  extern __shared__ int64_t cursor[];  // [num_experts]: next free row of each expert
  const int lane = threadIdx.x;
  for (int64_t e = lane; e < a.num_experts; e += 32)
    cursor[e] = a.seg_start[e] + a.chunk_prefix[blockIdx.x * a.num_experts + e];
  __syncwarp();
  int64_t begin, end;
  permute_chunk_range(blockIdx.x, a.tokens * a.top_k, &begin, &end);
  for (int64_t base = begin; base < end; base += 32) {
    const int64_t i = base + lane;
    const int e = i < end ? local_expert(a.ids[i], a.num_experts) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, e);
    const int rank = __popc(peers & ((1u << lane) - 1));
    const int64_t first = e >= 0 ? cursor[e] : 0;
    __syncwarp();
    if (e >= 0 && rank == 0) cursor[e] = first + __popc(peers);
    __syncwarp();
    // Masked layout: a row past the expert's segment (rank >= m_max, bad routing) is dropped.
    const bool fits = e >= 0 && (!a.masked || first + rank < a.seg_start[e] + a.tokens);
    if (i < end) a.row_map[i] = fits ? static_cast<int32_t>(first + rank) : -1;
  }
}

__global__ void __launch_bounds__(kThreads) moe_permute_copy_kernel(PermuteArgs a) {
  const int64_t routed = a.tokens * a.top_k;
  const bool vec = a.row_bytes % 16 == 0 && reinterpret_cast<uintptr_t>(a.x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  for (int64_t i = blockIdx.x; i < routed; i += gridDim.x) {
    const int32_t row = a.row_map[i];
    if (row < 0) continue;
    const int64_t t = i / a.top_k;
    if (vec) {
      const uint4* src = reinterpret_cast<const uint4*>(static_cast<const char*>(a.x) + t * a.row_bytes);
      uint4* dst = reinterpret_cast<uint4*>(static_cast<char*>(a.out) + row * a.row_bytes);
      for (int64_t v = threadIdx.x; v < a.row_bytes / 16; v += kThreads) dst[v] = __ldg(src + v);
    } else {
      const char* src = static_cast<const char*>(a.x) + t * a.row_bytes;
      char* dst = static_cast<char*>(a.out) + row * a.row_bytes;
      for (int64_t b = threadIdx.x; b < a.row_bytes; b += kThreads) dst[b] = src[b];
    }
    for (int64_t g = threadIdx.x; g < a.groups; g += kThreads) a.out_scale[row * a.groups + g] = a.x_scale[t * a.groups + g];
  }
}

__global__ void __launch_bounds__(kThreads) moe_permute_experts_kernel(PermuteArgs a) {
  for (int64_t r = blockIdx.x * int64_t{kThreads} + threadIdx.x; r < a.rows; r += gridDim.x * int64_t{kThreads})
    a.m_indices[r] = segment_row_expert(r, a.seg_start, a.count, a.num_experts);
}

// One block per token; each thread owns VEC consecutive columns at a time (VEC * sizeof(T) = 16
// bytes on the vector path, 1 on the scalar one).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) moe_unpermute_kernel(UnpermuteArgs a) {
  const T* y = static_cast<const T*>(a.y);
  T* out = static_cast<T*>(a.out);
  for (int64_t t = blockIdx.x; t < a.tokens; t += gridDim.x) {
    for (int64_t c0 = threadIdx.x * int64_t{VEC}; c0 < a.n; c0 += kThreads * int64_t{VEC}) {
      float acc[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) acc[v] = 0.0f;
      for (int64_t j = 0; j < a.top_k; ++j) {
        const int32_t row = a.row_map[t * a.top_k + j];
        if (row < 0 || row >= a.rows) continue;
        const float w = a.weights[t * a.top_k + j];
        alignas(16) T vals[VEC];
        if constexpr (VEC * sizeof(T) == 16) {
          *reinterpret_cast<uint4*>(vals) = __ldg(reinterpret_cast<const uint4*>(y + row * a.n + c0));
        } else {
#pragma unroll
          for (int v = 0; v < VEC; ++v) vals[v] = y[row * a.n + c0 + v];
        }
#pragma unroll
        for (int v = 0; v < VEC; ++v) acc[v] = __fadd_rn(acc[v], __fmul_rn(w, to_float(vals[v])));
      }
      alignas(16) T res[VEC];
#pragma unroll
      for (int v = 0; v < VEC; ++v) res[v] = from_float<T>(acc[v]);
      if constexpr (VEC * sizeof(T) == 16) {
        *reinterpret_cast<uint4*>(out + t * a.n + c0) = *reinterpret_cast<const uint4*>(res);
      } else {
#pragma unroll
        for (int v = 0; v < VEC; ++v) out[t * a.n + c0 + v] = res[v];
      }
    }
  }
}

template <typename T>
cudaError_t launch_unpermute_typed(const UnpermuteArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(a.tokens, kMaxBlocks));
  const bool vec = a.n % kVec == 0 && reinterpret_cast<uintptr_t>(a.y) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(a.out) % 16 == 0;
  if (vec) moe_unpermute_kernel<T, kVec><<<blocks, kThreads, 0, stream>>>(a);
  else moe_unpermute_kernel<T, 1><<<blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_moe_permute(const PermuteArgs& a, cudaStream_t stream) {
  const int64_t routed = a.tokens * a.top_k, chunks = permute_chunks(routed);
  if (routed == 0) return cudaSuccess;  // no rows either: permuted_rows_bound(0, ...) == 0
  const size_t hist_bytes = sizeof(int32_t) * a.num_experts, cursor_bytes = sizeof(int64_t) * a.num_experts;
  // chunks <= 2^31 / 2048 blocks: far beyond any routed count that fits int32 rows.
  moe_permute_count_kernel<<<static_cast<unsigned>(chunks), kThreads, hist_bytes, stream>>>(a);
  moe_permute_scan_kernel<<<1, 1024, 0, stream>>>(a, chunks);
  moe_permute_rank_kernel<<<static_cast<unsigned>(chunks), 32, cursor_bytes, stream>>>(a);
  moe_permute_copy_kernel<<<static_cast<unsigned>(std::min<int64_t>(routed, kMaxBlocks)), kThreads, 0, stream>>>(a);
  if (a.masked) {
    moe_permute_clamp_kernel<<<static_cast<unsigned>(ceil_div(a.num_experts, kThreads)), kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  }
  const int64_t row_blocks = std::min<int64_t>(ceil_div(a.rows, kThreads), kMaxBlocks);
  moe_permute_experts_kernel<<<static_cast<unsigned>(row_blocks), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_moe_unpermute(const UnpermuteArgs& a, cudaStream_t stream) {
  if (a.tokens == 0 || a.n == 0) return cudaSuccess;
  switch (a.dtype) {
    case DType::kFloat32: return launch_unpermute_typed<float>(a, stream);
    case DType::kFloat16: return launch_unpermute_typed<__half>(a, stream);
    case DType::kBFloat16: return launch_unpermute_typed<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace glm52::moe
