// Indexer scores of one query row on the CPU, shared by indexer_logits (every column written) and
// the fused indexer_topk (scores streamed into a running selection), so both see the same bits:
// codes decoded with the bit-level e4m3 decoder the CUDA kernels use, dots accumulated in fp32
// over the 128 dims in order, heads summed in order.
#pragma once

#include "attention/attention_indexer.h"

#include <vector>

namespace glm52::attention {

class IndexerRowScorer {
 public:
  // q8: [heads, 128] e4m3 codes; w: [heads] folded head weights.
  IndexerRowScorer(const uint8_t* q8, const float* w, int64_t heads) : w_(w), heads_(heads), q_(heads * kIndexDim) {
    for (int64_t i = 0; i < heads * kIndexDim; ++i) q_[i] = e4m3_bits_to_float(q8[i]);
  }

  // codes: [128] e4m3 of one key; scale: its fp32 scale.
  float score(const uint8_t* codes, float scale) const {
    float k[kIndexDim];
    for (int d = 0; d < kIndexDim; ++d) k[d] = e4m3_bits_to_float(codes[d]);
    float sum = 0.0f;
    for (int64_t h = 0; h < heads_; ++h) {
      float dot = 0.0f;
      for (int d = 0; d < kIndexDim; ++d) dot += q_[h * kIndexDim + d] * k[d];
      sum += relu_weighted(w_[h], dot);
    }
    return sum * scale;
  }

 private:
  const float* w_;
  int64_t heads_;
  std::vector<float> q_;
};

// Key sources: key(t, &scale) gives the codes of key t and its scale, or nullptr for none.
struct FlatKeysCpu {
  const uint8_t* k8;      // [L, 128]
  const float* k_scale;   // [L]
  const uint8_t* operator()(int64_t t, float* scale) const {
    *scale = k_scale[t];
    return k8 + t * kIndexDim;
  }
};

struct PagedKeysCpu {
  const uint8_t* cache;   // [num_blocks, 8448]
  int64_t num_blocks;
  const int32_t* table;   // [table_len] of this row's sequence
  int64_t table_len;
  const uint8_t* operator()(int64_t t, float* scale) const {
    const SlotRef s = resolve_slot(position_to_slot(table, table_len, t, num_blocks), num_blocks);
    if (!s.valid) return nullptr;
    *scale = load_f32(cache + index_scale_offset(s));
    return cache + index_code_offset(s);
  }
};

}  // namespace glm52::attention
