// RMSNorm math shared by the CPU twin and the CUDA kernel (framework-free): who owns which
// element, the order of the fp32 sum of squares, and the scale.
//
// One row of D elements is owned by kNormThreads lanes: lane t sums elements t, t + 256, ... in
// order; the 256 partials then reduce as the kernel's warp shuffles do (within each warp of 32,
// lane l += lane l + off for off = 16, 8, 4, 2, 1), and the 8 warp totals add in order. The CPU
// twin replays exactly this order, so both devices produce the same bits.
#pragma once

#include "common/host_device.h"

#include <cmath>
#include <cstdint>

namespace glm52::norm {

inline constexpr int kNormThreads = 256;
inline constexpr int kNormWarps = kNormThreads / 32;

// 1 / sqrt(mean(x^2) + eps), correctly rounded square root and division (no rsqrt approximation).
GLM52_HD float rms_scale(float sum_squares, int64_t dim, float eps) {
  return 1.0f / sqrtf(sum_squares / static_cast<float>(dim) + eps);
}

// The in-warp tree of one warp's 32 partials (in place; the total ends in p[0]).
GLM52_HD float warp_tree_sum(float* p) {
  for (int off = 16; off > 0; off /= 2)
    for (int l = 0; l < off; ++l) p[l] += p[l + off];
  return p[0];
}

// The whole block's reduction of kNormThreads partials (host replay of the kernel's order).
GLM52_HD float block_tree_sum(float* partials) {
  float total = 0.0f;
  for (int w = 0; w < kNormWarps; ++w) total += warp_tree_sum(partials + 32 * w);
  return total;
}

}  // namespace glm52::norm
