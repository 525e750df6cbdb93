// Tensor-core (QGMMA, sm_90a) indexer logits for 32 or 64 heads (GLM-5.2: 32; DeepSeek-V3.2: 64);
// other head counts take the SIMT kernel (indexer_kernels.cu).
//
// Logits are an FP8 GEMM followed by a ReLU-weighted reduction over heads: per CTA the M tile is
// 64 rows = (64 / H) query tokens of one sequence x H heads, the N tile 128 keys, K = 128 (four
// SM90_64x128x32 e4m3 steps, fp32 accumulation). Epilogue: ReLU(acc) * w[row], summed over the
// heads of each query (two rows per thread, then lane shuffles, then one shared-memory exchange
// between warps), times the key scale, -inf outside the query's range. A CTA walks kTilesPerCta
// key tiles with a two-stage cp.async pipeline (tile i+1 loads while tile i multiplies); tiles
// outside every query's range are not loaded. Key addressing and ranges are the helpers the CPU
// twin uses (attention_cache.h, attention_indexer.h).
#include "attention/cuda/indexer_keys.cuh"

#include <cuda_pipeline_primitives.h>

#include <cute/atom/mma_traits_sm90_gmma.hpp>
#include <cute/tensor.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/numeric_types.h>

#include <algorithm>

namespace glm52::attention {
namespace {

using namespace cute;
using E4m3 = cutlass::float_e4m3_t;

constexpr int kRows = 64;         // wgmma M
constexpr int kKeyTile = 128;     // wgmma N
constexpr int kTilesPerCta = 8;   // 1024 keys per CTA
constexpr int kThreads = 128;     // one warpgroup
constexpr int kWarps = kThreads / 32;
constexpr int kChunks = kIndexDim / 16;  // 16-byte chunks of a key

using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E4m3>{}, Shape<Int<kRows>, Int<kIndexDim>>{}));
using SmemLayoutK = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<E4m3>{}, Shape<Int<kKeyTile>, Int<kIndexDim>>{}));
using Mma = decltype(make_tiled_mma(SM90_64x128x32_F32E4M3E4M3_SS_TN<>{}));

struct QgmmaSmem {
  alignas(1024) E4m3 q[cosize_v<SmemLayoutQ>];
  alignas(1024) E4m3 k[2][cosize_v<SmemLayoutK>];
  float k_scale[2][kKeyTile];  // 0 marks a key with no slot
  int32_t key_ok[2][kKeyTile];
  float w[kRows];
  float partial[kWarps][kKeyTile];
};

// The CTA's queries: rows seq * n + j for j in [j0, j0 + per_cta) with j < n.
struct QueryBlock {
  int64_t seq, j0, per_cta, n;
  __device__ bool valid(int i) const { return j0 + i < n; }
  __device__ int64_t row(int i) const { return seq * n + j0 + i; }
};

template <typename Keys>
__device__ void load_key_tile(const Keys& keys, QgmmaSmem& sm, int64_t seq, int64_t t0, int64_t num_keys, int stage) {
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

template <typename Keys>
__global__ void __launch_bounds__(kThreads, 1) indexer_logits_qgmma_kernel(IndexerLogitsArgs a) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  // The 128-byte swizzle and the GMMA descriptors use absolute shared addresses, so the tiles need
  // a 1024-byte aligned base; __align__ on dynamic shared memory does not promise it (it holds while
  // the kernel has no static shared memory). Fail loudly rather than compute garbage.
  if (threadIdx.x == 0 && (__cvta_generic_to_shared(smem_raw) & 1023) != 0) __trap();
  QgmmaSmem& sm = *reinterpret_cast<QgmmaSmem*>(smem_raw);
  const Keys keys{a};
  const int heads = static_cast<int>(a.heads);
  const int per_cta = kRows / heads;
  const int64_t blocks_per_seq = ceil_div(a.queries_per_seq, per_cta);
  const QueryBlock qb{blockIdx.x / blocks_per_seq, (blockIdx.x % blocks_per_seq) * per_cta, per_cta, a.queries_per_seq};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  // Q tile and head weights (zero rows for queries past the sequence's n).
  Tensor sQ = make_tensor(make_smem_ptr(sm.q), SmemLayoutQ{});
  for (int c = threadIdx.x; c < kRows * kChunks; c += kThreads) {
    const int r = c / kChunks, part = c % kChunks, i = r / heads;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (qb.valid(i)) v = *reinterpret_cast<const uint4*>(a.q8 + (qb.row(i) * heads + r % heads) * kIndexDim + part * 16);
    *reinterpret_cast<uint4*>(&sQ(r, part * 16)) = v;
  }
  for (int r = threadIdx.x; r < kRows; r += kThreads)
    sm.w[r] = qb.valid(r / heads) ? a.weights[qb.row(r / heads) * heads + r % heads] : 0.0f;
  constexpr int kMaxQueries = kRows / 32;  // per_cta <= 2; loops over it unroll (registers, no stack)
  KeyRange ranges[kMaxQueries];
  KeyRange all{INT64_MAX, 0};
#pragma unroll
  for (int i = 0; i < kMaxQueries; ++i) {
    if (i >= per_cta) break;
    ranges[i] = qb.valid(i) ? keys.range(qb.row(i)) : KeyRange{0, 0};
    if (ranges[i].begin < ranges[i].end) all = {min(all.begin, ranges[i].begin), max(all.end, ranges[i].end)};
  }
  auto needed = [&](int64_t t0) { return t0 < all.end && t0 + kKeyTile > all.begin; };

  Mma mma;
  auto thr = mma.get_thread_slice(threadIdx.x);
  Tensor tSrQ = thr.partition_fragment_A(sQ);
  Tensor tSrS = partition_fragment_C(mma, Shape<Int<kRows>, Int<kKeyTile>>{});
  Tensor tScS = thr.partition_C(make_identity_tensor(Shape<Int<kRows>, Int<kKeyTile>>{}));
  static_assert(size(decltype(tSrS){}) == 64, "64 x 128 fp32 over 128 threads");

  for (int64_t chunk0 = int64_t{blockIdx.y} * kTilesPerCta * kKeyTile; chunk0 < a.out_cols;
       chunk0 += int64_t{gridDim.y} * kTilesPerCta * kKeyTile) {
    const int tiles = static_cast<int>(min(int64_t{kTilesPerCta}, ceil_div(a.out_cols - chunk0, kKeyTile)));
    if (needed(chunk0)) load_key_tile(keys, sm, qb.seq, chunk0, a.out_cols, 0);
    __pipeline_commit();
    for (int tile = 0; tile < tiles; ++tile) {
      const int stage = tile & 1;
      const int64_t t0 = chunk0 + int64_t{tile} * kKeyTile;
      if (tile + 1 < tiles && needed(t0 + kKeyTile)) load_key_tile(keys, sm, qb.seq, t0 + kKeyTile, a.out_cols, stage ^ 1);
      __pipeline_commit();
      __pipeline_wait_prior(1);
      cutlass::arch::fence_view_async_shared();
      __syncthreads();
      const int64_t t = t0 + threadIdx.x;  // the column this thread stores
      if (!needed(t0)) {
#pragma unroll
        for (int i = 0; i < kMaxQueries; ++i)
          if (i < per_cta && qb.valid(i) && t < a.out_cols) a.out[qb.row(i) * a.out_cols + t] = -INFINITY;
        continue;
      }
      Tensor sK = make_tensor(make_smem_ptr(sm.k[stage]), SmemLayoutK{});
      Tensor tSrK = thr.partition_fragment_B(sK);
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
#pragma unroll
      for (int j = 0; j < kKeyTile / 8; ++j) {
#pragma unroll
        for (int c2 = 0; c2 < 2; ++c2) {
          const int v0 = c2 + 4 * j, v1 = v0 + 2;
          float sum = relu_weighted(sm.w[get<0>(tScS(v0))], tSrS(v0)) + relu_weighted(sm.w[get<0>(tScS(v1))], tSrS(v1));
          sum += __shfl_xor_sync(0xffffffffu, sum, 4);
          sum += __shfl_xor_sync(0xffffffffu, sum, 8);
          sum += __shfl_xor_sync(0xffffffffu, sum, 16);
          if (lane < 4) sm.partial[warp][get<1>(tScS(v0))] = sum;
        }
      }
      __syncthreads();
      const int warps_per_query = kWarps / per_cta;
#pragma unroll
      for (int i = 0; i < kMaxQueries; ++i) {
        if (i >= per_cta || !qb.valid(i) || t >= a.out_cols) continue;
        float sum = 0.0f;
        for (int w = 0; w < warps_per_query; ++w) sum += sm.partial[i * warps_per_query + w][threadIdx.x];
        const bool visible = t >= ranges[i].begin && t < ranges[i].end && sm.key_ok[stage][threadIdx.x];
        a.out[qb.row(i) * a.out_cols + t] = visible ? sum * sm.k_scale[stage][threadIdx.x] : -INFINITY;
      }
      __syncthreads();  // partial and this stage are rewritten next
    }
  }
}

template <typename Keys>
cudaError_t launch_typed(const IndexerLogitsArgs& a, cudaStream_t stream) {
  constexpr int smem = static_cast<int>(sizeof(QgmmaSmem));
  cudaError_t err = cudaFuncSetAttribute(indexer_logits_qgmma_kernel<Keys>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int64_t per_cta = kRows / a.heads;
  const int64_t seqs = a.rows / a.queries_per_seq;
  const dim3 grid(static_cast<unsigned>(seqs * ceil_div(a.queries_per_seq, per_cta)),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(a.out_cols, kTilesPerCta * kKeyTile), 65535)));
  indexer_logits_qgmma_kernel<Keys><<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

bool indexer_logits_qgmma_supports(int64_t heads) { return heads == 32 || heads == 64; }

cudaError_t launch_indexer_logits_qgmma(const IndexerLogitsArgs& a, cudaStream_t stream) {
  if (!indexer_logits_qgmma_supports(a.heads)) return cudaErrorInvalidValue;
  return a.paged ? launch_typed<IndexerPagedKeys>(a, stream) : launch_typed<IndexerFlatKeys>(a, stream);
}

}  // namespace glm52::attention
