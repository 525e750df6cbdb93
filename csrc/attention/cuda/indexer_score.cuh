// One indexer score on the fp32 SIMT path, shared by indexer_logits_simt_kernel (every column
// written) and the fused indexer_topk kernel (scores streamed into a selection), so both produce the
// same bits: the key decoded 16 dims at a time (one 16-byte load), heads walked in groups of
// kHeadGroup so registers stay bounded for any H up to 128, dots by fmaf in dim order.
#pragma once

#include "attention/attention_indexer.h"

namespace glm52::attention {

constexpr int kScoreHeadGroup = 16;
constexpr int kScoreChunk = 16;

// q_smem: [heads, 128] decoded q of the row; w: [heads]; codes: [128] e4m3 of the key, 16-B aligned.
__device__ __forceinline__ float indexer_score_simt(const float* q_smem, const float* w, int64_t heads,
                                                   const uint8_t* codes, float scale) {
  float sum = 0.0f;
  for (int64_t h0 = 0; h0 < heads; h0 += kScoreHeadGroup) {
    float dot[kScoreHeadGroup] = {};
    for (int c = 0; c < kIndexDim; c += kScoreChunk) {
      const uint4 raw = *reinterpret_cast<const uint4*>(codes + c);
      const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&raw);
      float k[kScoreChunk];
#pragma unroll
      for (int d = 0; d < kScoreChunk; ++d) k[d] = e4m3_bits_to_float(bytes[d]);
#pragma unroll
      for (int h = 0; h < kScoreHeadGroup; ++h) {
        if (h0 + h >= heads) break;
        const float* q = q_smem + (h0 + h) * kIndexDim + c;
#pragma unroll
        for (int d = 0; d < kScoreChunk; ++d) dot[h] = fmaf(q[d], k[d], dot[h]);
      }
    }
#pragma unroll
    for (int h = 0; h < kScoreHeadGroup; ++h)
      if (h0 + h < heads) sum += relu_weighted(w[h0 + h], dot[h]);
  }
  return sum * scale;
}

}  // namespace glm52::attention
