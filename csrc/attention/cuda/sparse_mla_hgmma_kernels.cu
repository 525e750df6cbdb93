// Tensor-core (HGMMA, sm_90a) sparse MLA: prefill and decode over an array of token rows in the MLA
// cache layout (BF16 rows, or FP8 rows dequantized to BF16 on the way into shared memory).
//
// A CTA takes one query row and up to 64 heads (the wgmma M tile; fewer heads are zero rows in
// shared memory only: the API takes any H in 1..128). Two warpgroups; per tile of 64 selected keys:
//   1. gather: the tile's rows go into one of two shared-memory stages in the 128-byte-swizzled
//      K-major layout GMMA reads (cp.async for BF16; load + dequantize + store for FP8). The gather
//      of tile t+1 is issued right after the score GEMM of tile t, so it overlaps the math;
//   2. scores S = Q [64 x 576] . K^T: warpgroup w scores keys [32w, 32w + 32) with
//      SM90_64x32x16 (SS), 36 k-steps; invalid keys (-1, out of range) are masked to -inf;
//   3. online softmax in fp32 (attention_softmax.h, shared with the CPU twin): row maxima are
//      exchanged between the warpgroups through shared memory so both rescale identically; the
//      weights P go to shared memory as BF16;
//   4. O += P [64 x 64] . V: warpgroup w owns value columns [256w, 256w + 256) (128 fp32
//      accumulators per thread) with SM90_64x256x16 (SS); V is the same shared tile read
//      MN-major (its first 512 columns), so values are never copied.
// The per-row sums of the two warpgroups are combined once at the end.
#include "attention/attention_cache.h"
#include "attention/attention_softmax.h"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/sparse_mla_split.cuh"

#include <cuda_bf16.h>
#include <cuda_pipeline_primitives.h>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

namespace glm52::attention {
namespace {

using namespace cute;
using Bf16 = cutlass::bfloat16_t;

constexpr int kHeads = 64;  // wgmma M
constexpr int kKeys = 64;   // keys per tile
constexpr int kWarpgroups = 2;
constexpr int kThreads = 128 * kWarpgroups;
constexpr int kKeysPerWg = kKeys / kWarpgroups;      // score columns per warpgroup
constexpr int kDvPerWg = kValueDim / kWarpgroups;    // output columns per warpgroup
constexpr int kChunks = kLatentDim / 8;              // 16-byte chunks of a BF16 row

using SmemLayoutQK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Bf16>{}, Shape<Int<kHeads>, Int<kLatentDim>>{}));
using SmemLayoutV = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Bf16>{}, Shape<Int<kKeys>, Int<kValueDim>>{}));
using SmemLayoutVt = decltype(composition(SmemLayoutV{}, make_ordered_layout(Shape<Int<kValueDim>, Int<kKeys>>{},
                                                                             Step<_2, _1>{})));
using SmemLayoutP = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Bf16>{}, Shape<Int<kHeads>, Int<kKeys>>{}));
using MmaS = decltype(make_tiled_mma(SM90_64x32x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::K>{}));
using MmaO = decltype(make_tiled_mma(SM90_64x256x16_F32BF16BF16_SS<GMMA::Major::K, GMMA::Major::MN>{}));
static_assert(kKeys == kHeads, "the K tile and the Q tile share one layout");

struct HgmmaSmem {
  alignas(1024) Bf16 q[cosize_v<SmemLayoutQK>];
  alignas(1024) Bf16 kv[2][cosize_v<SmemLayoutQK>];
  alignas(1024) Bf16 p[cosize_v<SmemLayoutP>];
  float row_max[kWarpgroups][kHeads];
  float row_sum[kWarpgroups][kHeads];
  int32_t valid[2][kKeys];
};
static_assert(sizeof(HgmmaSmem) <= 227 * 1024, "exceeds the sm_90 shared memory per block");

// Issues the gather of tile `tile` into stage `stage`; invalid keys and entries at or past key_end
// become zero rows.
__device__ void gather_tile(const SparseMlaArgs& a, HgmmaSmem& sm, int64_t row, int64_t tile, int64_t key_end,
                            int stage) {
  Tensor sK = make_tensor(make_smem_ptr(sm.kv[stage]), SmemLayoutQK{});
  const int32_t* indices = a.indices + row * a.topk + tile * kKeys;
  const int64_t keys_here = min(int64_t{kKeys}, key_end - tile * kKeys);
  auto key_of = [&](int j) -> int64_t {
    const int64_t idx = j < keys_here ? indices[j] : -1;
    return idx >= 0 && idx < a.num_tokens ? idx : -1;
  };
  if (threadIdx.x < kKeys) sm.valid[stage][threadIdx.x] = key_of(threadIdx.x) >= 0;
  if (!a.fp8) {
    for (int c = threadIdx.x; c < kKeys * kChunks; c += kThreads) {
      const int j = c / kChunks, part = c % kChunks;
      const int64_t idx = key_of(j);
      const uint8_t* src = a.tokens + (idx < 0 ? 0 : idx) * kMlaBf16TokenBytes + part * 16;
      __pipeline_memcpy_async(&sK(j, part * 8), src, 16, idx < 0 ? 16 : 0);
    }
  } else {
    // c_kv: 16 codes (one 16-byte load) -> 16 BF16 values = two 16-byte stores.
    for (int c = threadIdx.x; c < kKeys * (kValueDim / 16); c += kThreads) {
      const int j = c / (kValueDim / 16), part = c % (kValueDim / 16);
      const int64_t idx = key_of(j);
      alignas(16) __nv_bfloat16 vals[16];
      if (idx >= 0) {
        const uint8_t* token = a.tokens + idx * kMlaFp8TokenBytes;
        const uint4 raw = *reinterpret_cast<const uint4*>(token + part * 16);
        const uint8_t* codes = reinterpret_cast<const uint8_t*>(&raw);
        const float scale = load_f32(token + kMlaFp8ScaleOffset + 4 * (part * 16 / kFp8GroupDim));
#pragma unroll
        for (int i = 0; i < 16; ++i) vals[i] = __float2bfloat16_rn(e4m3_bits_to_float(codes[i]) * scale);
      } else {
#pragma unroll
        for (int i = 0; i < 16; ++i) vals[i] = __float2bfloat16_rn(0.0f);
      }
      *reinterpret_cast<uint4*>(&sK(j, part * 16)) = reinterpret_cast<const uint4*>(vals)[0];
      *reinterpret_cast<uint4*>(&sK(j, part * 16 + 8)) = reinterpret_cast<const uint4*>(vals)[1];
    }
    // k_pe: BF16 already, 16-byte copies.
    for (int c = threadIdx.x; c < kKeys * (kRopeDim / 8); c += kThreads) {
      const int j = c / (kRopeDim / 8), part = c % (kRopeDim / 8);
      const int64_t idx = key_of(j);
      const uint4 v = idx < 0 ? make_uint4(0, 0, 0, 0)
                              : *reinterpret_cast<const uint4*>(a.tokens + idx * kMlaFp8TokenBytes +
                                                                kMlaFp8RopeOffset + part * 16);
      *reinterpret_cast<uint4*>(&sK(j, kValueDim + part * 8)) = v;
    }
  }
  __pipeline_commit();  // an empty group on the FP8 path keeps the wait counts uniform
}

// Accumulator rows of a thread: r and r + 8 (wgmma layout); slot 0 or 1.
__device__ __forceinline__ int row_slot(int r) { return (r >> 3) & 1; }

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The 128-byte swizzle and the GMMA descriptors use absolute shared addresses, so the tiles need a
// 1024-byte aligned base; __align__ on dynamic shared memory does not promise it (it holds while the
// kernel has no static shared memory). Fail loudly rather than compute garbage.
__device__ __forceinline__ HgmmaSmem& aligned_smem(uint8_t* smem_raw) {
  if (threadIdx.x == 0 && (__cvta_generic_to_shared(smem_raw) & 1023) != 0) __trap();
  return *reinterpret_cast<HgmmaSmem*>(smem_raw);
}

// One query row, heads [h0, h0 + 64), over its selected indices [key_begin, key_end) (key_begin a
// multiple of kKeys), written to `dest`.
__device__ __forceinline__ void attend_range(const SparseMlaArgs& a, HgmmaSmem& sm, int64_t row, int64_t h0,
                                             int64_t key_begin, int64_t key_end, const SparseDest& dest) {
  const int wg = threadIdx.x / 128, wg_tid = threadIdx.x % 128;
  const int group = static_cast<int>(min(int64_t{kHeads}, a.heads - h0));
  const int64_t first = key_begin / kKeys, tiles = ceil_div(key_end, kKeys) - first;

  Tensor sQ = make_tensor(make_smem_ptr(sm.q), SmemLayoutQK{});
  Tensor sP = make_tensor(make_smem_ptr(sm.p), SmemLayoutP{});
  for (int c = threadIdx.x; c < kHeads * kChunks; c += kThreads) {
    const int h = c / kChunks, part = c % kChunks;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (h < group) v = *reinterpret_cast<const uint4*>(a.q + (row * a.heads + h0 + h) * kLatentDim + part * 8);
    *reinterpret_cast<uint4*>(&sQ(h, part * 8)) = v;
  }
  if (tiles > 0) gather_tile(a, sm, row, first, key_end, 0);

  MmaS mma_s;
  MmaO mma_o;
  auto thr_s = mma_s.get_thread_slice(wg_tid);
  auto thr_o = mma_o.get_thread_slice(wg_tid);
  Tensor tSrQ = thr_s.partition_fragment_A(sQ);
  Tensor tOrP = thr_o.partition_fragment_A(sP);
  Tensor tSrS = partition_fragment_C(mma_s, Shape<Int<kHeads>, Int<kKeysPerWg>>{});
  Tensor tOrO = partition_fragment_C(mma_o, Shape<Int<kHeads>, Int<kDvPerWg>>{});
  Tensor tScS = thr_s.partition_C(make_identity_tensor(Shape<Int<kHeads>, Int<kKeysPerWg>>{}));
  Tensor tOcO = thr_o.partition_C(make_identity_tensor(Shape<Int<kHeads>, Int<kDvPerWg>>{}));
  clear(tOrO);

  int rows[2];
#pragma unroll
  for (int i = 0; i < size(tScS); ++i) rows[row_slot(get<0>(tScS(i)))] = get<0>(tScS(i));
  SoftmaxState state[2] = {softmax_init(), softmax_init()};
  const float x_scale = a.sm_scale * kLog2e;

  for (int64_t tile = 0; tile < tiles; ++tile) {
    const int stage = static_cast<int>(tile & 1);
    __pipeline_wait_prior(0);
    cutlass::arch::fence_view_async_shared();  // generic-proxy writes -> visible to wgmma
    __syncthreads();

    Tensor sK = make_tensor(make_smem_ptr(sm.kv[stage]), SmemLayoutQK{});
    Tensor tSrK = thr_s.partition_fragment_B(local_tile(sK, Shape<Int<kKeysPerWg>, Int<kLatentDim>>{}, make_coord(wg, _0{})));
    warpgroup_fence_operand(tSrS);
    warpgroup_arrive();
    mma_s.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
    for (int k = 0; k < size<2>(tSrQ); ++k) {
      cute::gemm(mma_s, tSrQ(_, _, k), tSrK(_, _, k), tSrS);
      mma_s.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
    if (tile + 1 < tiles) gather_tile(a, sm, row, first + tile + 1, key_end, stage ^ 1);  // overlaps the score GEMM
    warpgroup_wait<0>();
    warpgroup_fence_operand(tSrS);

    float tile_max[2] = {neg_inf(), neg_inf()};
#pragma unroll
    for (int i = 0; i < size(tSrS); ++i) {
      const int key = wg * kKeysPerWg + get<1>(tScS(i));
      tSrS(i) = sm.valid[stage][key] ? tSrS(i) * x_scale : neg_inf();
      const int s = row_slot(get<0>(tScS(i)));
      tile_max[s] = fmaxf(tile_max[s], tSrS(i));
    }
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      tile_max[s] = quad_max(tile_max[s]);
      if (wg_tid % 4 == 0) sm.row_max[wg][rows[s]] = tile_max[s];
    }
    __syncthreads();
    float alpha[2];
#pragma unroll
    for (int s = 0; s < 2; ++s) {
      const float m_new = softmax_next_max(state[s], fmaxf(sm.row_max[0][rows[s]], sm.row_max[1][rows[s]]));
      alpha[s] = softmax_rescale(state[s].m, m_new);
      state[s] = {m_new, state[s].l * alpha[s]};
    }
#pragma unroll
    for (int i = 0; i < size(tSrS); ++i) {
      const int r = get<0>(tScS(i)), s = row_slot(r);
      const float p = softmax_weight(tSrS(i), state[s].m);
      state[s].l += p;  // this thread's share; the quad and the two warpgroups are summed at the end
      sP(r, wg * kKeysPerWg + get<1>(tScS(i))) = Bf16(p);
    }
#pragma unroll
    for (int i = 0; i < size(tOrO); ++i) tOrO(i) *= alpha[row_slot(get<0>(tOcO(i)))];
    cutlass::arch::fence_view_async_shared();
    __syncthreads();

    Tensor sVt = make_tensor(make_smem_ptr(sm.kv[stage]), SmemLayoutVt{});
    Tensor tOrV = thr_o.partition_fragment_B(local_tile(sVt, Shape<Int<kDvPerWg>, Int<kKeys>>{}, make_coord(wg, _0{})));
    warpgroup_fence_operand(tOrO);
    warpgroup_arrive();
#pragma unroll
    for (int k = 0; k < size<2>(tOrP); ++k) cute::gemm(mma_o, tOrP(_, _, k), tOrV(_, _, k), tOrO);
    warpgroup_commit_batch();
    warpgroup_wait<0>();
    warpgroup_fence_operand(tOrO);
    __syncthreads();  // P, the row maxima and this stage are rewritten next iteration
  }

#pragma unroll
  for (int s = 0; s < 2; ++s) {
    state[s].l = quad_sum(state[s].l);
    if (wg_tid % 4 == 0) sm.row_sum[wg][rows[s]] = state[s].l;
  }
  __syncthreads();
  float inv[2];
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    state[s].l = sm.row_sum[0][rows[s]] + sm.row_sum[1][rows[s]];
    inv[s] = softmax_out_scale(state[s]);
    if (wg == 0 && wg_tid % 4 == 0 && rows[s] < group) {
      if (dest.part_out == nullptr) a.lse[row * a.heads + h0 + rows[s]] = softmax_lse(state[s]);
      else dest.part_lse[dest.part_row * a.heads + h0 + rows[s]] = softmax_lse(state[s]);
    }
  }
  if (dest.part_out == nullptr) {
    __nv_bfloat16* out = reinterpret_cast<__nv_bfloat16*>(a.out);
#pragma unroll
    for (int i = 0; i < size(tOrO); ++i) {
      const int r = get<0>(tOcO(i));
      if (r < group)
        out[(row * a.heads + h0 + r) * kValueDim + wg * kDvPerWg + get<1>(tOcO(i))] =
            __float2bfloat16_rn(tOrO(i) * inv[row_slot(r)]);
    }
  } else {
#pragma unroll
    for (int i = 0; i < size(tOrO); ++i) {
      const int r = get<0>(tOcO(i));
      if (r < group)
        dest.part_out[(dest.part_row * a.heads + h0 + r) * kValueDim + wg * kDvPerWg + get<1>(tOcO(i))] =
            tOrO(i) * inv[row_slot(r)];
    }
  }
}

__global__ void __launch_bounds__(kThreads, 1) sparse_mla_hgmma_kernel(SparseMlaArgs a) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  attend_range(a, aligned_smem(smem_raw), blockIdx.x, int64_t{blockIdx.y} * kHeads, 0, a.topk,
               SparseDest{nullptr, nullptr, 0});
}

__global__ void __launch_bounds__(kThreads, 1) sparse_mla_hgmma_split_kernel(SparseMlaArgs a, SparseSplitArgs s) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  HgmmaSmem& sm = aligned_smem(smem_raw);
  for_each_piece(a, s, kHeads, [&](int64_t row, int64_t h0, int64_t key_begin, int64_t key_end, const SparseDest& dest) {
    attend_range(a, sm, row, h0, key_begin, key_end, dest);
  });
}

}  // namespace

cudaError_t launch_sparse_mla_hgmma(const SparseMlaArgs& a, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  constexpr int smem = static_cast<int>(sizeof(HgmmaSmem));
  cudaError_t err = cudaFuncSetAttribute(sparse_mla_hgmma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(ceil_div(a.heads, kHeads)));
  sparse_mla_hgmma_kernel<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_sparse_mla_hgmma_split(const SparseMlaArgs& a, const SparseSplitArgs& split, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  constexpr int smem = static_cast<int>(sizeof(HgmmaSmem));
  cudaError_t err =
      cudaFuncSetAttribute(sparse_mla_hgmma_split_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  sparse_mla_hgmma_split_kernel<<<split_grid(a, split, kHeads), kThreads, smem, stream>>>(a, split);
  err = cudaGetLastError();
  return err != cudaSuccess ? err : launch_sparse_mla_combine(a, split, stream);
}

}  // namespace glm52::attention
