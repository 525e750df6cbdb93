// SIMT CUDA kernel of sparse MLA (prefill and decode: both are attention over an array of token rows
// in the MLA cache layout, BF16 or FP8), fp32 FMA throughout: NOT the production path. The default
// is the tensor-core kernel (sparse_mla_hgmma_kernels.cu); this one is the simple cross-check
// selected with GLM52_SPARSE_MLA_KERNEL=simt (it also reads FP8 keys exactly, without the BF16
// rounding the HGMMA kernel applies when it stages them).
//
// A CTA takes one query row and a group of up to kHeadGroup heads (so any H in 1..128 runs without
// padding the API; a partial last group only idles lanes). The row's selected key rows are
// gathered kTile at a time with cp.async into a double buffer, so the gather of tile i+1 overlaps
// the math of tile i; invalid indices (-1, out of range) are zero-filled and masked to -inf.
// Per tile: warp w scores keys w, w+8, ... against all heads of the group (each lane holds 18 of the
// 576 dims, a warp reduction finishes each dot); then warp w updates the online softmax of heads
// 2w, 2w+1 (attention_softmax.h, shared with the CPU twin); then thread t accumulates output
// columns 2t, 2t+1 of every head of the group from the tile's values (the first 512 latent dims).
#include "attention/attention_cache.h"
#include "attention/attention_softmax.h"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/sparse_mla_split.cuh"

#include <cuda_bf16.h>
#include <cuda_pipeline_primitives.h>

namespace glm52::attention {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kHeadGroup = 16;
constexpr int kTile = 32;  // keys per pipeline stage
constexpr int kStages = 2;
constexpr int kDimsPerLane = kLatentDim / 32;  // 18
static_assert(kHeadGroup == 2 * kWarps, "each warp owns the softmax state of two heads");
static_assert(kValueDim == 2 * kThreads, "each thread owns two output columns");

struct SparseSmem {
  uint8_t rows[kStages][kTile][kMlaBf16TokenBytes];  // raw token rows (FP8 rows use the first 656 B)
  int32_t valid[kStages][kTile];
  uint16_t q[kHeadGroup][kLatentDim];  // bf16 bits
  float p[kHeadGroup][kTile];          // scores, then softmax weights
  float alpha[kHeadGroup];             // accumulator rescale of this tile
};

// Issues the cp.async gather of tile `tile` into stage `stage` (zero-fill for invalid indices and
// entries at or past key_end).
__device__ void gather_tile(const SparseMlaArgs& a, SparseSmem& sm, int64_t row, int64_t tile, int64_t key_end,
                            int stage) {
  const int token_bytes = mla_token_bytes(a.fp8);
  const int chunks = token_bytes / 16;
  for (int c = threadIdx.x; c < kTile * chunks; c += kThreads) {
    const int j = c / chunks, part = c % chunks;
    const int64_t slot = tile * kTile + j;
    const int64_t idx = slot < key_end ? a.indices[row * a.topk + slot] : -1;
    const bool ok = idx >= 0 && idx < a.num_tokens;
    const uint8_t* src = a.tokens + (ok ? idx : 0) * token_bytes + part * 16;
    __pipeline_memcpy_async(&sm.rows[stage][j][part * 16], src, 16, ok ? 0 : 16);
    if (part == 0) sm.valid[stage][j] = ok;
  }
  __pipeline_commit();
}

// One query row, heads [h0, h0 + 16), over its selected indices [key_begin, key_end) (key_begin a
// multiple of kTile), written to `dest`.
__device__ __forceinline__ void attend_range(const SparseMlaArgs& a, SparseSmem& sm, int64_t row, int64_t h0,
                                             int64_t key_begin, int64_t key_end, const SparseDest& dest) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int group = static_cast<int>(min(int64_t{kHeadGroup}, a.heads - h0));
  const int64_t first = key_begin / kTile, tiles = ceil_div(key_end, kTile) - first;

  for (int i = threadIdx.x; i < kHeadGroup * kLatentDim; i += kThreads) {
    const int h = i / kLatentDim;
    sm.q[h][i % kLatentDim] = h < group ? a.q[((row * a.heads) + h0 + h) * kLatentDim + i % kLatentDim] : 0;
  }
  if (tiles > 0) gather_tile(a, sm, row, first, key_end, 0);

  SoftmaxState state[2] = {softmax_init(), softmax_init()};  // heads 2*warp, 2*warp + 1
  float acc[kHeadGroup][2] = {};
  const float x_scale = a.sm_scale * kLog2e;

  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int stage = static_cast<int>(tile % kStages);
    if (tile + 1 < tiles) {
      gather_tile(a, sm, row, first + tile + 1, key_end, (stage + 1) % kStages);
      __pipeline_wait_prior(1);
    } else {
      __pipeline_wait_prior(0);
    }
    __syncthreads();

    // Scores: warp w takes keys w, w + 8, ...; lane l holds dims l + 32 i.
    for (int j = warp; j < kTile; j += kWarps) {
      const uint8_t* token = sm.rows[stage][j];
      float k[kDimsPerLane];
#pragma unroll
      for (int i = 0; i < kDimsPerLane; ++i) k[i] = mla_token_elem(token, lane + 32 * i, a.fp8);
      for (int h = 0; h < group; ++h) {
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < kDimsPerLane; ++i) dot = fmaf(bf16_bits_to_float(sm.q[h][lane + 32 * i]), k[i], dot);
        for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        if (lane == 0) sm.p[h][j] = sm.valid[stage][j] ? dot * x_scale : neg_inf();
      }
    }
    __syncthreads();

    // Online softmax: warp w owns heads 2w and 2w + 1; lane j holds key j of the tile.
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const int h = 2 * warp + s;
      if (h >= group) break;
      const float x = sm.p[h][lane];
      float tile_max = x;
      for (int offset = 16; offset > 0; offset /= 2) tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
      const float m_new = softmax_next_max(state[s], tile_max);
      const float alpha = softmax_rescale(state[s].m, m_new);
      const float p = softmax_weight(x, m_new);
      float sum = p;
      for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
      state[s] = {m_new, state[s].l * alpha + sum};
      sm.p[h][lane] = p;
      if (lane == 0) sm.alpha[h] = alpha;
    }
    __syncthreads();

    // P.V: thread t owns output columns 2t, 2t + 1 of every head of the group.
    const int c = 2 * threadIdx.x;
#pragma unroll
    for (int h = 0; h < kHeadGroup; ++h) {
      acc[h][0] *= sm.alpha[h];
      acc[h][1] *= sm.alpha[h];
    }
    for (int j = 0; j < kTile; ++j) {
      const uint8_t* token = sm.rows[stage][j];
      const float v0 = mla_token_elem(token, c, a.fp8), v1 = mla_token_elem(token, c + 1, a.fp8);
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h) {
        acc[h][0] = fmaf(sm.p[h][j], v0, acc[h][0]);
        acc[h][1] = fmaf(sm.p[h][j], v1, acc[h][1]);
      }
    }
    __syncthreads();  // the stage is refilled by the next iteration's gather
  }

  // Each warp publishes its heads' final state through smem (alpha <- 1/l), then all write.
  for (int s = 0; s < 2; ++s) {
    const int h = 2 * warp + s;
    if (h < group && lane == 0) {
      sm.alpha[h] = softmax_out_scale(state[s]);
      const float lse = softmax_lse(state[s]);
      if (dest.part_out == nullptr) a.lse[row * a.heads + h0 + h] = lse;
      else dest.part_lse[dest.part_row * a.heads + h0 + h] = lse;
    }
  }
  __syncthreads();
  const int c = 2 * threadIdx.x;
#pragma unroll  // constant indices keep acc in registers
  for (int h = 0; h < kHeadGroup; ++h) {
    if (h >= group) break;
    const float o0 = acc[h][0] * sm.alpha[h], o1 = acc[h][1] * sm.alpha[h];
    if (dest.part_out == nullptr) {
      *reinterpret_cast<__nv_bfloat162*>(a.out + ((row * a.heads) + h0 + h) * kValueDim + c) = __floats2bfloat162_rn(o0, o1);
    } else {
      *reinterpret_cast<float2*>(dest.part_out + ((dest.part_row * a.heads) + h0 + h) * kValueDim + c) = make_float2(o0, o1);
    }
  }
}

__global__ void __launch_bounds__(kThreads) sparse_mla_simt_kernel(SparseMlaArgs a) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  SparseSmem& sm = *reinterpret_cast<SparseSmem*>(smem_raw);
  attend_range(a, sm, blockIdx.x, int64_t{blockIdx.y} * kHeadGroup, 0, a.topk, SparseDest{nullptr, nullptr, 0});
}

__global__ void __launch_bounds__(kThreads) sparse_mla_simt_split_kernel(SparseMlaArgs a, SparseSplitArgs s) {
  extern __shared__ __align__(16) uint8_t smem_raw[];
  SparseSmem& sm = *reinterpret_cast<SparseSmem*>(smem_raw);
  for_each_piece(a, s, kHeadGroup, [&](int64_t row, int64_t h0, int64_t key_begin, int64_t key_end, const SparseDest& dest) {
    attend_range(a, sm, row, h0, key_begin, key_end, dest);
  });
}

}  // namespace

cudaError_t launch_sparse_mla(const SparseMlaArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  constexpr size_t smem = sizeof(SparseSmem);
  cudaError_t err = cudaFuncSetAttribute(sparse_mla_simt_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(ceil_div(a.heads, kHeadGroup)));
  sparse_mla_simt_kernel<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_sparse_mla_split(const SparseMlaArgs& a, const SparseSplitArgs& split, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  constexpr size_t smem = sizeof(SparseSmem);
  cudaError_t err = cudaFuncSetAttribute(sparse_mla_simt_split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  sparse_mla_simt_split_kernel<<<split_grid(a, split, kHeadGroup), kThreads, smem, stream>>>(a, split);
  err = cudaGetLastError();
  return err != cudaSuccess ? err : launch_sparse_mla_combine(a, split, stream);
}

}  // namespace glm52::attention
