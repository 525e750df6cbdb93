// The QGMMA (sm_90a, e4m3 wgmma through CuTe) scoring of indexer key tiles, shared by the
// indexer_logits kernel (indexer_qgmma_kernels.cu: every score written) and the fused indexer_topk
// kernel (indexer_topk_qgmma_kernels.cu: scores streamed into a per-row selection), so both produce
// the same bits.
//
// Logits are an FP8 GEMM followed by a ReLU-weighted reduction over heads: per CTA the M tile is
// 64 rows = (64 / H) query tokens of one sequence x H heads (H = 32 or 64), the N tile 128 keys,
// K = 128 (four SM90_64x128x32 e4m3 steps, fp32 accumulation). Head reduction: ReLU(acc) * w[row],
// summed over the heads of each query (two rows per thread, then lane shuffles, then one
// shared-memory exchange between warps), times the key scale, -inf outside the query's range.
// Every add of that reduction is __fadd_rn: the compiler may not fuse it with the weight product
// into an FMA in one kernel and not the other. Key tiles stream through a two-stage cp.async
// pipeline (tile i + 1 loads while tile i multiplies); tiles outside every query's range are not
// loaded. Key addressing and ranges are the helpers the CPU twin uses (attention_cache.h,
// attention_indexer.h).
#pragma once

#include "attention/cuda/indexer_keys.cuh"

#include <cuda_pipeline_primitives.h>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

namespace glm52::attention::qgmma {

using namespace cute;
using E4m3 = cutlass::float_e4m3_t;

constexpr int kRows = 64;        // wgmma M
constexpr int kKeyTile = 128;    // wgmma N
constexpr int kThreads = 128;    // one warpgroup; thread i owns column i of a key tile's scores
constexpr int kWarps = kThreads / 32;
constexpr int kChunks = kIndexDim / 16;  // 16-byte chunks of a key
constexpr int kMaxQueries = kRows / 32;  // per CTA (H >= 32); loops over it unroll (registers, no stack)
static_assert(kThreads == kKeyTile, "one score column per thread");

using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E4m3>{}, Shape<Int<kRows>, Int<kIndexDim>>{}));
using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E4m3>{}, Shape<Int<kKeyTile>, Int<kIndexDim>>{}));
using Mma = decltype(make_tiled_mma(SM90_64x128x32_F32E4M3E4M3_SS_TN<>{}));

// Shared memory of the scoring. Must sit at a 1024-byte aligned shared address: the 128-byte
// swizzle and the GMMA descriptors use absolute addresses (check_smem_alignment).
struct TileSmem {
  alignas(1024) E4m3 q[cosize_v<SmemLayoutQ>];
  alignas(1024) E4m3 k[2][cosize_v<SmemLayoutK>];
  float k_scale[2][kKeyTile];  // 0 marks a key with no slot
  int32_t key_ok[2][kKeyTile];
  float w[kRows];
  float partial[kWarps][kKeyTile];
};

// __align__ on dynamic shared memory does not promise 1024 bytes (it holds while the kernel has no
// static shared memory). Fail loudly rather than compute garbage.
__device__ __forceinline__ void check_smem_alignment(const void* smem) {
  if (threadIdx.x == 0 && (__cvta_generic_to_shared(smem) & 1023) != 0) __trap();
}

// The queries of M tile b: rows seq * n + j for j in [j0, j0 + per_cta) with j < n; tile b is
// block b % ceil(n / per_cta) of sequence b / ceil(n / per_cta).
struct QueryBlock {
  int64_t seq, j0, n;
  int per_cta;
  __device__ static QueryBlock of_tile(const IndexerLogitsArgs& a, int64_t b) {
    const int per_cta = kRows / static_cast<int>(a.heads);
    const int64_t blocks_per_seq = ceil_div(a.queries_per_seq, per_cta);
    return {b / blocks_per_seq, (b % blocks_per_seq) * per_cta, a.queries_per_seq, per_cta};
  }
  __device__ bool valid(int i) const { return j0 + i < n; }
  __device__ int64_t row(int i) const { return seq * n + j0 + i; }
};

// Number of M tiles.
GLM52_HD int64_t qgmma_tiles(const IndexerLogitsArgs& a) {
  return a.rows / a.queries_per_seq * ceil_div(a.queries_per_seq, kRows / a.heads);
}

// The key ranges of the CTA's queries and their union `all` (empty: begin >= end).
struct QueryRanges {
  KeyRange ranges[kMaxQueries];
  KeyRange all;
  __device__ bool needed(int64_t t0) const { return t0 < all.end && t0 + kKeyTile > all.begin; }
  // Query i's score of column t from its tile sum: -inf outside its range or without a key.
  __device__ float score(int i, int64_t t, float sum, int key_ok, float scale) const {
    return t >= ranges[i].begin && t < ranges[i].end && key_ok ? sum * scale : -INFINITY;
  }
};

// Queries [first, first + count) of the block get their ranges, the others none (never scored).
template <typename Keys>
__device__ QueryRanges query_ranges(const Keys& keys, const QueryBlock& qb, int first, int count) {
  QueryRanges r;
  r.all = {INT64_MAX, 0};
#pragma unroll
  for (int i = 0; i < kMaxQueries; ++i) {
    const bool take = i >= first && i < first + count && i < qb.per_cta && qb.valid(i);
    r.ranges[i] = take ? keys.range(qb.row(i)) : KeyRange{0, 0};
    if (r.ranges[i].begin < r.ranges[i].end)
      r.all = {min(r.all.begin, r.ranges[i].begin), max(r.all.end, r.ranges[i].end)};
  }
  return r;
}

// Q tile and head weights (zero rows for queries past the sequence's n).
__device__ inline void load_query_tile(const IndexerLogitsArgs& a, const QueryBlock& qb, TileSmem& sm) {
  const int heads = static_cast<int>(a.heads);
  Tensor sQ = make_tensor(make_smem_ptr(sm.q), SmemLayoutQ{});
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, part = c % kChunks, i = r / heads;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (qb.valid(i)) v = *reinterpret_cast<const uint4*>(a.q8 + (qb.row(i) * heads + r % heads) * kIndexDim + part * 16);
    *reinterpret_cast<uint4*>(&sQ(r, part * 16)) = v;
  }
  for (int r = threadIdx.x; r < kRows; r += kThreads)
    sm.w[r] = qb.valid(r / heads) ? a.weights[qb.row(r / heads) * heads + r % heads] : 0.0f;
}

template <typename Keys>
__device__ void load_key_tile(const Keys& keys, TileSmem& sm, int64_t seq, int64_t t0, int64_t num_keys, int stage) {
  Tensor sK = make_tensor(make_smem_ptr(sm.k[stage]), SmemLayoutK{});
  for (int c = threadIdx.x; c < kKeyTile * kChunks; c += kThreads) {
    const int j = c / kChunks, part = c % kChunks;
    float scale = 0.0f;
    const uint8_t* codes = t0 + j < num_keys ? keys.key(seq, t0 + j, &scale) : nullptr;
    __pipeline_memcpy_async(&sK(j, part * 16), codes ? codes + part * 16 : keys.a.q8, 16, codes ? 0 : 16);
    if (part == 0) {
      sm.k_scale[stage][j] = scale;
      sm.key_ok[stage][j] = codes != nullptr;
    }
  }
}

// The 64 x 128 scores of the key tile in `stage`, reduced over heads into sm.partial[warp][column]
// (each warp's 16 rows). The caller synchronizes before reading partial (tile_sum).
__device__ __forceinline__ void score_key_tile(TileSmem& sm, int stage) {
  Mma mma;
  auto thr = mma.get_thread_slice(threadIdx.x);
  Tensor sQ = make_tensor(make_smem_ptr(sm.q), SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(sm.k[stage]), SmemLayoutK{});
  Tensor tSrQ = thr.partition_fragment_A(sQ);
  Tensor tSrK = thr.partition_fragment_B(sK);
  Tensor tSrS = partition_fragment_C(mma, Shape<Int<kRows>, Int<kKeyTile>>{});
  Tensor tScS = thr.partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kKeyTile>>{}));
  static_assert(size(decltype(tSrS){}) == 64, "64 x 128 fp32 over 128 threads");
  warpgroup_fence_operand(tSrS);
  warpgroup_arrive();
  mma.accumulate_ = GMMA::ScaleOut::Zero;
#pragma unroll
  for (int k = 0; k < size<2>(tSrQ); ++k) {
    cute::gemm(mma, tSrQ(_, _, k), tSrK(_, _, k), tSrS);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_wait<0>();
  warpgroup_fence_operand(tSrS);

  // Fragment value v = c2 + 2 * rh + 4 * j: row r0 + 8 rh, column c0 + c2 + 8 j (wgmma D layout).
  // Both rows of a thread belong to the same query (H >= 32), so they add up first.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
#pragma unroll
  for (int j = 0; j < kKeyTile / 8; ++j) {
#pragma unroll
    for (int c2 = 0; c2 < 2; ++c2) {
      const int v0 = c2 + 4 * j, v1 = v0 + 2;
      float sum = __fadd_rn(relu_weighted(sm.w[get<0>(tScS(v0))], tSrS(v0)), relu_weighted(sm.w[get<0>(tScS(v1))], tSrS(v1)));
      sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 4));
      sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 8));
      sum = __fadd_rn(sum, __shfl_xor_sync(0xffffffffu, sum, 16));
      if (lane < 4) sm.partial[warp][get<1>(tScS(v0))] = sum;
    }
  }
}

// Query i's head sum at this thread's column of the tile (after score_key_tile and a barrier).
__device__ __forceinline__ float tile_sum(const TileSmem& sm, int i, int per_cta) {
  const int warps_per_query = kWarps / per_cta;
  float sum = 0.0f;
  for (int w = 0; w < warps_per_query; ++w) sum = __fadd_rn(sum, sm.partial[i * warps_per_query + w][threadIdx.x]);
  return sum;
}

// Query i's score at this thread's column t0 + threadIdx.x of the tile in `stage`.
__device__ __forceinline__ float column_score(const TileSmem& sm, const QueryRanges& qr, int i, int per_cta,
                                              int stage, int64_t t0) {
  return qr.score(i, t0 + threadIdx.x, tile_sum(sm, i, per_cta), sm.key_ok[stage][threadIdx.x],
                  sm.k_scale[stage][threadIdx.x]);
}

// Walks `tiles` key tiles from t0 through the two-stage pipeline: body(t, stage) on each tile some
// query needs, once its keys sit in sm.k[stage] (followed by a barrier: the next load reuses the
// other stage); skip(t) on the others, which are never loaded.
template <typename Keys, typename Body, typename Skip>
__device__ void for_each_key_tile(const Keys& keys, TileSmem& sm, int64_t seq, const QueryRanges& qr, int64_t t0,
                                  int tiles, int64_t num_keys, Body&& body, Skip&& skip) {
  if (tiles > 0 && qr.needed(t0)) load_key_tile(keys, sm, seq, t0, num_keys, 0);
  __pipeline_commit();
  for (int tile = 0; tile < tiles; ++tile) {
    const int stage = tile & 1;
    const int64_t t = t0 + int64_t{tile} * kKeyTile;
    if (tile + 1 < tiles && qr.needed(t + kKeyTile)) load_key_tile(keys, sm, seq, t + kKeyTile, num_keys, stage ^ 1);
    __pipeline_commit();
    __pipeline_wait_prior(1);
    cutlass::arch::fence_view_async_shared();
    __syncthreads();
    if (!qr.needed(t)) {
      skip(t);
      continue;
    }
    body(t, stage);
    __syncthreads();
  }
}

}  // namespace glm52::attention::qgmma
