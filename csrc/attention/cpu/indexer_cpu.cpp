// CPU twins of the indexer logits (ragged prefill and paged decode). Codes are decoded with the
// same bit-level e4m3 decoder the CUDA kernels use; dots accumulate in fp32 over the 128 dims.
#include "attention/attention_checks.h"
#include "attention/attention_indexer.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <vector>

namespace glm52::attention {
namespace {

// One query row: q codes [H, 128], weights [H]; key(t) gives (codes [128], scale) or nullptr.
template <typename KeyFn>
void indexer_row(const uint8_t* q8, const float* w, int64_t heads, int64_t num_cols, KeyRange range, KeyFn key,
                 float* out) {
  std::vector<float> q(heads * kIndexDim);
  for (int64_t i = 0; i < heads * kIndexDim; ++i) q[i] = e4m3_bits_to_float(q8[i]);
  float k[kIndexDim];
  for (int64_t t = 0; t < num_cols; ++t) {
    float scale = 0.0f;
    const uint8_t* codes = t >= range.begin && t < range.end ? key(t, &scale) : nullptr;
    if (codes == nullptr) {
      out[t] = -std::numeric_limits<float>::infinity();
      continue;
    }
    for (int d = 0; d < kIndexDim; ++d) k[d] = e4m3_bits_to_float(codes[d]);
    float sum = 0.0f;
    for (int64_t h = 0; h < heads; ++h) {
      float dot = 0.0f;
      for (int d = 0; d < kIndexDim; ++d) dot += q[h * kIndexDim + d] * k[d];
      sum += relu_weighted(w[h], dot);
    }
    out[t] = sum * scale;
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
                  clamp_range(begin[s], end[s], num_keys),
                  [&](int64_t t, float* scale) {
                    *scale = ksc[t];
                    return k + t * kIndexDim;
                  },
                  o + s * num_keys);
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
                  clamp_range(0, len[r], max_len),
                  [&](int64_t t, float* scale) -> const uint8_t* {
                    const SlotRef s = resolve_slot(position_to_slot(row_table, table_len, t, num_blocks), num_blocks);
                    if (!s.valid) return nullptr;
                    *scale = load_f32(c + index_scale_offset(s));
                    return c + index_code_offset(s);
                  },
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
