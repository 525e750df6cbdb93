// Lightning-indexer math shared by the CPU twins and the CUDA kernels (DESIGN §2.1, FP8 path):
//   I(s, t) = k_scale(t) * sum_h w'(s, h) * ReLU(q8(s, h) . k8(t))   for t in the row's range,
//   -inf elsewhere. w' already holds the q scale and 128^-0.5.
#pragma once

#include "attention/attention_cache.h"

namespace glm52::attention {

// A row's visible key range [begin, end) clamped to the keys that exist.
struct KeyRange {
  int64_t begin, end;
};

GLM52_HD KeyRange clamp_range(int64_t begin, int64_t end, int64_t num_keys) {
  begin = begin < 0 ? 0 : begin;
  end = end > num_keys ? num_keys : end;
  return {begin, end < begin ? begin : end};
}

GLM52_HD float relu_weighted(float weight, float dot) { return dot > 0.0f ? weight * dot : 0.0f; }

}  // namespace glm52::attention
