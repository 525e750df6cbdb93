// Fused indexer top-k scored on tensor cores (QGMMA, sm_90a) for 32 or 64 heads: a CTA scores the
// key tiles of one wgmma M tile, the (64 / H) queries of the QGMMA indexer_logits kernel's tile, with
// that kernel's code (indexer_qgmma_tile.cuh, on the same 128-key grid, so the scores are the same
// bits), and feeds each selected query's 128 scores per tile into its running selection in shared
// memory (attention_topk_stream.h through indexer_topk_block.cuh, as the SIMT kernel and the CPU
// twin). The [rows, L] scores are never written; the result equals
// topk_indices(indexer_logits(...)) with the QGMMA logits kernel.
//
// Shared memory (indexer_topk_plan.h): the scoring tiles and the selection scratch (fixed, at most
// kIndexerTopkQgmmaFixedSmem), then 2k + 256 candidate keys and columns per selected query. A CTA
// selects for all queries of its tile when their buffers fit, else for one (32 heads, k > 5600: two
// CTAs score the tile, only the key tiles their query needs). One CTA per tile leaves SMs idle for
// small batches (decode), as the SIMT kernel's one CTA per row does.
#include "attention/indexer_topk_plan.h"
#include "attention/cuda/indexer_qgmma_tile.cuh"
#include "attention/cuda/indexer_topk_block.cuh"
#include "attention/cuda/indexer_topk_launch.h"

namespace glm52::attention {
namespace {

using namespace qgmma;
using Block = BlockTopk<kThreads>;

struct TopkQgmmaSmem {
  TileSmem tile;
  Block::Shared select;
};
static_assert(sizeof(TopkQgmmaSmem) <= kIndexerTopkQgmmaFixedSmem, "indexer_topk_plan.h's fixed budget");
static_assert(kIndexerTopkQgmmaRows == kRows, "indexer_topk_plan.h's M tile");
static_assert(kThreads < (1 << 16) && kMaxQueries <= 2, "per-query admission counts share one 32-bit scan value");
static_assert(kKeyTile <= kStreamTopkTile, "a tile's admissions fit the 2k + 256 candidate buffer");

template <typename Keys>
__global__ void __launch_bounds__(kThreads, 1) indexer_topk_qgmma_kernel(IndexerTopkArgs a) {
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  check_smem_alignment(smem_raw);
  TopkQgmmaSmem& sm = *reinterpret_cast<TopkQgmmaSmem*>(smem_raw);
  const IndexerLogitsArgs& s = a.scores;
  const Keys keys{s};
  // CTA b: M tile b / splits, queries [first, first + selected) of it.
  const int selected = static_cast<int>(indexer_topk_qgmma_selected(s.heads, a.k));
  const int splits = static_cast<int>(indexer_topk_qgmma_queries(s.heads)) / selected;
  const QueryBlock qb = QueryBlock::of_tile(s, blockIdx.x / splits);
  const int first = static_cast<int>(blockIdx.x % splits) * selected;
  auto mine = [&](int i) { return i >= first && i < first + selected && i < qb.per_cta && qb.valid(i); };
  const int64_t capacity = stream_topk_capacity(a.k);
  // [selected, capacity] each, query i at slot i - first.
  uint32_t* cand_keys = reinterpret_cast<uint32_t*>(smem_raw + kIndexerTopkQgmmaFixedSmem);
  int32_t* cand_cols = reinterpret_cast<int32_t*>(cand_keys + selected * capacity);

  load_query_tile(s, qb, sm.tile);  // every query of the tile: the wgmma operands of the logits kernel
#pragma unroll
  for (int i = 0; i < kMaxQueries; ++i)
    if (mine(i))
      for (int64_t j = threadIdx.x; j < a.k; j += kThreads) a.out[qb.row(i) * a.k + j] = -1;
  const QueryRanges qr = query_ranges(keys, qb, first, selected);
  // Tiles on the logits kernel's 128-key grid: every wgmma sees the operands it sees there.
  const bool any = qr.all.begin < qr.all.end;
  const int64_t first_key = any ? qr.all.begin / kKeyTile * kKeyTile : 0;
  const int tiles = any ? static_cast<int>(ceil_div(qr.all.end - first_key, kKeyTile)) : 0;

  TopkStream st[kMaxQueries];  // each identical in every thread
#pragma unroll
  for (int i = 0; i < kMaxQueries; ++i) st[i] = stream_topk_begin();
  for_each_key_tile(
      keys, sm.tile, qb.seq, qr, first_key, tiles, s.out_cols,
      [&](int64_t t0, int stage) {
#pragma unroll
        for (int i = 0; i < kMaxQueries; ++i)
          if (mine(i) && stream_topk_should_reduce(st[i], a.k))
            Block::reduce(st[i], cand_keys + (i - first) * capacity, cand_cols + (i - first) * capacity, a.k,
                          sm.select);
        score_key_tile(sm.tile, stage);
        __syncthreads();
        // Query i's admissions count in bits [16 i, 16 i + 16) of one block scan.
        uint32_t admitted = 0;
        uint32_t key[kMaxQueries] = {};
#pragma unroll
        for (int i = 0; i < kMaxQueries; ++i) {
          if (!mine(i)) continue;
          const float v = column_score(sm.tile, qr, i, qb.per_cta, stage, t0);  // -inf: never admitted
          key[i] = topk_key(v);
          if (stream_topk_admits(st[i], v)) admitted |= 1u << (16 * i);
        }
        uint32_t prefix, total;
        Block::Scan(sm.select.scan).ExclusiveSum(admitted, prefix, total);
#pragma unroll
        for (int i = 0; i < kMaxQueries; ++i) {
          if (!mine(i)) continue;
          if ((admitted >> (16 * i)) & 1u) {
            const int64_t at = (i - first) * capacity + st[i].count + ((prefix >> (16 * i)) & 0xffffu);
            cand_keys[at] = key[i];
            cand_cols[at] = static_cast<int32_t>(t0 + threadIdx.x);
          }
          st[i].count += (total >> (16 * i)) & 0xffffu;
        }
      },
      [](int64_t) {});
#pragma unroll
  for (int i = 0; i < kMaxQueries; ++i)
    if (mine(i))
      Block::finish(st[i], cand_keys + (i - first) * capacity, cand_cols + (i - first) * capacity, a.k,
                    a.out + qb.row(i) * a.k, sm.select);
}

template <typename Keys>
cudaError_t launch_typed(const IndexerTopkArgs& a, cudaStream_t stream) {
  const int smem = static_cast<int>(indexer_topk_qgmma_smem_bytes(a.scores.heads, a.k));
  cudaError_t err = cudaFuncSetAttribute(indexer_topk_qgmma_kernel<Keys>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return err;
  const int64_t splits = indexer_topk_qgmma_queries(a.scores.heads) / indexer_topk_qgmma_selected(a.scores.heads, a.k);
  indexer_topk_qgmma_kernel<Keys><<<static_cast<unsigned>(qgmma_tiles(a.scores) * splits), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_indexer_topk_qgmma(const IndexerTopkArgs& a, cudaStream_t stream) {
  if (!indexer_topk_qgmma_heads(a.scores.heads)) return cudaErrorInvalidValue;
  if (a.scores.rows == 0 || a.k == 0) return cudaSuccess;
  return a.scores.paged ? launch_typed<IndexerPagedKeys>(a, stream) : launch_typed<IndexerFlatKeys>(a, stream);
}

}  // namespace glm52::attention
