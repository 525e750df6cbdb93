// CPU twins of the indexer logits (ragged prefill and paged decode); the scores are
// indexer_score_cpu.h's.
#include "attention/attention_checks.h"
#include "attention/cpu/indexer_score_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>

namespace glm52::attention {
namespace {

// One query row over columns [0, num_cols): scores inside the range, -inf elsewhere or where key(t)
// has no key.
template <typename KeyFn>
void indexer_row(const uint8_t* q8, const float* w, int64_t heads, int64_t num_cols, KeyRange range, KeyFn key,
                 float* out) {
  const IndexerRowScorer scorer(q8, w, heads);
  for (int64_t t = 0; t < num_cols; ++t) {
    float scale = 0.0f;
    const uint8_t* codes = t >= range.begin && t < range.end ? key(t, &scale) : nullptr;
    out[t] = codes == nullptr ? -std::numeric_limits<float>::infinity() : scorer.score(codes, scale);
  }
}

void indexer_logits_out_cpu(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                            const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke, at::Tensor& out) {
  check_indexer_logits(q8, weights, k8, k_scale, ks, ke);
  check_indexer_logits_out(q8, k8, out);
  const int64_t rows = q8.size(0), heads = q8.size(1), num_keys = k8.size(0);
  const auto* q = static_cast<const uint8_t*>(q8.const_data_ptr());
  const auto* k = static_cast<const uint8_t*>(k8.const_data_ptr());
  const float* ksc = k_scale.const_data_ptr<float>();
  const int32_t *begin = ks.const_data_ptr<int32_t>(), *end = ke.const_data_ptr<int32_t>();
  float* o = out.mutable_data_ptr<float>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t s = r0; s < r1; ++s)
      indexer_row(q + s * heads * kIndexDim, weights.const_data_ptr<float>() + s * heads, heads, num_keys,
                  clamp_range(begin[s], end[s], num_keys), FlatKeysCpu{k, ksc}, o + s * num_keys);
  });
}

void indexer_logits_paged_out_cpu(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                                  const at::Tensor& block_table, const at::Tensor& lengths, at::Tensor& out) {
  check_indexer_logits_paged(q8, weights, cache, block_table, lengths);
  check_indexer_logits_paged_out(q8, out);
  const int64_t n = q8.size(1), heads = q8.size(2), max_len = out.size(2);
  const int64_t num_blocks = cache.size(0), table_len = block_table.size(1);
  const auto* q = static_cast<const uint8_t*>(q8.const_data_ptr());
  const uint8_t* c = cache.const_data_ptr<uint8_t>();
  const int32_t* table = block_table.const_data_ptr<int32_t>();
  const int32_t* len = lengths.const_data_ptr<int32_t>();
  float* o = out.mutable_data_ptr<float>();
  at::parallel_for(0, q8.size(0) * n, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int32_t* row_table = table + (r / n) * table_len;
      indexer_row(q + r * heads * kIndexDim, weights.const_data_ptr<float>() + r * heads, heads, max_len,
                  clamp_range(0, len[r], max_len), PagedKeysCpu{c, num_blocks, row_table, table_len},
                  o + r * max_len);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("indexer_logits_out", &indexer_logits_out_cpu);
  m.impl("indexer_logits_paged_out", &indexer_logits_paged_out_cpu);
}

}  // namespace glm52::attention
