// Key sources of the indexer-logits kernels (SIMT and QGMMA): where key t of a sequence lives and
// which keys a query row may see. Flat keys: one sequence (ragged prefill, ranges [ks, ke));
// paged keys: the indexer cache through the sequence's block table (ranges [0, lengths)).
#pragma once

#include "attention/attention_indexer.h"
#include "attention/cuda/attention_launch.h"

namespace glm52::attention {

struct IndexerFlatKeys {
  const IndexerLogitsArgs& a;
  __device__ KeyRange range(int64_t row) const { return clamp_range(a.ks[row], a.ke[row], a.out_cols); }
  // Codes of key t and its scale (nullptr: no key there).
  __device__ const uint8_t* key(int64_t /*seq*/, int64_t t, float* scale) const {
    *scale = a.k_scale[t];
    return a.k8 + t * kIndexDim;
  }
};

struct IndexerPagedKeys {
  const IndexerLogitsArgs& a;
  __device__ KeyRange range(int64_t row) const { return clamp_range(0, a.lengths[row], a.out_cols); }
  __device__ const uint8_t* key(int64_t seq, int64_t t, float* scale) const {
    const int32_t* table = a.block_table + seq * a.table_len;
    const SlotRef s = resolve_slot(position_to_slot(table, a.table_len, t, a.num_blocks), a.num_blocks);
    if (!s.valid) return nullptr;
    *scale = load_f32(a.cache + index_scale_offset(s));
    return a.cache + index_code_offset(s);
  }
};

}  // namespace glm52::attention
