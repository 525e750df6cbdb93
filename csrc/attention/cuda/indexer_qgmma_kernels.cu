// Tensor-core (QGMMA, sm_90a) indexer logits for 32 or 64 heads (GLM-5.2: 32; DeepSeek-V3.2: 64);
// other head counts take the SIMT kernel (indexer_kernels.cu).
//
// The tile scoring (Q and key tiles, wgmma, ReLU-weighted head reduction, key pipeline) is
// indexer_qgmma_tile.cuh, shared with the fused indexer_topk kernel. Here a CTA walks
// kTilesPerCta key tiles of its (64 / H) queries and writes every score (-inf outside a query's
// range); grid.y splits the key range.
#include "attention/cuda/indexer_qgmma_tile.cuh"

#include <algorithm>

namespace glm52::attention {
namespace {

using namespace qgmma;

constexpr int kTilesPerCta = 8;  // 1024 keys per CTA

template <typename Keys>
__global__ void __launch_bounds__(kThreads, 1) indexer_logits_qgmma_kernel(IndexerLogitsArgs a) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  check_smem_alignment(smem_raw);
  TileSmem& sm = *reinterpret_cast<TileSmem*>(smem_raw);
  const Keys keys{a};
  const QueryBlock qb = QueryBlock::of_tile(a, blockIdx.x);
  load_query_tile(a, qb, sm);
  const QueryRanges qr = query_ranges(keys, qb, 0, qb.per_cta);

  for (int64_t chunk0 = int64_t{blockIdx.y} * kTilesPerCta * kKeyTile; chunk0 < a.out_cols;
       chunk0 += int64_t{gridDim.y} * kTilesPerCta * kKeyTile) {
    const int tiles = static_cast<int>(min(int64_t{kTilesPerCta}, ceil_div(a.out_cols - chunk0, kKeyTile)));
    // Each thread writes column t0 + threadIdx.x of every query.
    auto write = [&](int64_t t0, auto&& score) {
      const int64_t t = t0 + threadIdx.x;
#pragma unroll
      for (int i = 0; i < kMaxQueries; ++i)
        if (i < qb.per_cta && qb.valid(i) && t < a.out_cols) a.out[qb.row(i) * a.out_cols + t] = score(i);
    };
    for_each_key_tile(
        keys, sm, qb.seq, qr, chunk0, tiles, a.out_cols,
        [&](int64_t t0, int stage) {
          score_key_tile(sm, stage);
          __syncthreads();
          write(t0, [&](int i) { return column_score(sm, qr, i, qb.per_cta, stage, t0); });
        },
        [&](int64_t t0) { write(t0, [](int) { return -INFINITY; }); });
  }
}

template <typename Keys>
cudaError_t launch_typed(const IndexerLogitsArgs& a, cudaStream_t stream) {
  constexpr int smem = static_cast<int>(sizeof(TileSmem));
  cudaError_t err = cudaFuncSetAttribute(indexer_logits_qgmma_kernel<Keys>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(qgmma_tiles(a)),
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
