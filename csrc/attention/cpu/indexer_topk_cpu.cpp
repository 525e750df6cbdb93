// CPU twin of the fused indexer top-k (flat and paged): each row's scores (indexer_score_cpu.h, the
// bits indexer_logits writes) stream tile by tile into the running selection of
// attention_topk_stream.h; the [S, L] scores are never held. Memory: 2k + tile candidates per row
// in flight (one row per worker thread).
#include "attention/cpu/indexer_score_cpu.h"
#include "attention/indexer_topk_checks.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace glm52::attention {
namespace {

// One query row: the top k of its scores over `range`, written to out [k] in column order.
template <typename KeyFn>
void indexer_topk_row(const IndexerRowScorer& scorer, KeyRange range, KeyFn key, int64_t k, int32_t* out) {
  std::fill(out, out + k, -1);
  if (k == 0) return;
  std::vector<uint32_t> keys(stream_topk_capacity(k));
  std::vector<int32_t> cols(keys.size());
  uint32_t hist[kTopkBins];
  TopkStream s = stream_topk_begin();
  for (int64_t t0 = range.begin; t0 < range.end; t0 += kStreamTopkTile) {
    if (stream_topk_should_reduce(s, k)) stream_topk_reduce(s, keys.data(), cols.data(), k, hist);
    const int64_t t1 = std::min<int64_t>(t0 + kStreamTopkTile, range.end);
    for (int64_t t = t0; t < t1; ++t) {
      float scale = 0.0f;
      const uint8_t* codes = key(t, &scale);
      if (codes == nullptr) continue;
      const float v = scorer.score(codes, scale);
      if (!stream_topk_admits(s, v)) continue;
      keys[s.count] = topk_key(v);
      cols[s.count++] = static_cast<int32_t>(t);
    }
  }
  const TopkSelection sel = topk_select_keys(keys.data(), s.count, k, hist);
  topk_compact(sel, keys.data(), cols.data(), s.count, nullptr, out);
}

void indexer_topk_out_cpu(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                          const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke, int64_t k,
                          at::Tensor& out) {
  check_indexer_topk(q8, weights, k8, k_scale, ks, ke, k);
  check_indexer_topk_out(q8, k, out);
  const int64_t heads = q8.size(1), num_keys = k8.size(0);
  const auto* q = static_cast<const uint8_t*>(q8.const_data_ptr());
  const float* w = weights.const_data_ptr<float>();
  const FlatKeysCpu keys{static_cast<const uint8_t*>(k8.const_data_ptr()), k_scale.const_data_ptr<float>()};
  const int32_t *begin = ks.const_data_ptr<int32_t>(), *end = ke.const_data_ptr<int32_t>();
  int32_t* o = out.mutable_data_ptr<int32_t>();
  at::parallel_for(0, q8.size(0), 1, [&](int64_t r0, int64_t r1) {
    for (int64_t s = r0; s < r1; ++s)
      indexer_topk_row(IndexerRowScorer(q + s * heads * kIndexDim, w + s * heads, heads),
                       clamp_range(begin[s], end[s], num_keys), keys, k, o + s * k);
  });
}

void indexer_topk_paged_out_cpu(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                                const at::Tensor& block_table, const at::Tensor& lengths, int64_t k,
                                at::Tensor& out) {
  check_indexer_topk_paged(q8, weights, cache, block_table, lengths, k);
  check_indexer_topk_paged_out(q8, k, out);
  const int64_t n = q8.size(1), heads = q8.size(2), table_len = block_table.size(1);
  const auto* q = static_cast<const uint8_t*>(q8.const_data_ptr());
  const float* w = weights.const_data_ptr<float>();
  const int32_t* table = block_table.const_data_ptr<int32_t>();
  const int32_t* len = lengths.const_data_ptr<int32_t>();
  int32_t* o = out.mutable_data_ptr<int32_t>();
  at::parallel_for(0, q8.size(0) * n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      indexer_topk_row(IndexerRowScorer(q + r * heads * kIndexDim, w + r * heads, heads),
                       clamp_range(0, len[r], table_len * kBlockTokens),
                       PagedKeysCpu{cache.const_data_ptr<uint8_t>(), cache.size(0), table + (r / n) * table_len,
                                    table_len},
                       k, o + r * k);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("indexer_topk_out", &indexer_topk_out_cpu);
  m.impl("indexer_topk_paged_out", &indexer_topk_paged_out_cpu);
}

}  // namespace glm52::attention
