// The normalized n-point Walsh-Hadamard rotation (n = 128 for GLM-5.x) the FP8 indexer applies
// to its queries and keys before quantizing (DESIGN §2.1; the DeepSeek-V3.2 reference's
// `rotate_activation`). The rotation is orthogonal, so exact scores q·k are unchanged; it spreads
// outlier channels over all n dims so the e4m3 codes lose less. Shared by the CPU twins and the
// CUDA kernels (hadamard_rotate and indexer_cache_write's fused form).
//
// x <- (x · H_n) * n^-0.5 with H the Sylvester Hadamard matrix, computed as log2(n) butterfly
// stages of strides 1, 2, ..., n/2 in fp32 and one final multiply. A stage maps the pair (a, b) at
// indices (i, i + h) to (a + b, a - b); every element sees the same fp32 additions in the same
// order on the host and on the device (whose lanes exchange partners with shuffles), so both give
// the same bits. Nothing here can be contracted into a fused multiply-add (the multiply comes last).
#pragma once

#include "common/host_device.h"

namespace glm52::attention {

// Supported sizes: 32, 64 and 128 (GLM-5.x's indexer head dim; smaller test models use 32 or 64),
// so one warp holds a row with 1, 2 or 4 elements per lane.
GLM52_HD bool hadamard_dim_supported(int64_t n) { return n == 32 || n == 64 || n == 128; }

// n^-0.5 rounded to fp32: the rotation's last step multiplies by it.
GLM52_HD float hadamard_scale(int n) {
  return n == 32 ? 0.17677669529663687f : n == 64 ? 0.125f : 0.08838834764831845f;
}

// Element `index`'s value after the stage of stride `h`, from its own value and its partner's
// (index ^ h): the lower index of a pair keeps the sum, the upper the difference lower - upper.
GLM52_HD float hadamard_butterfly(float self, float partner, int index, int h) {
  return (index & h) ? partner - self : self + partner;
}

// The rotation of x[0, n) in place (n supported).
GLM52_HD void hadamard_rotate_inplace(float* x, int n) {
  for (int h = 1; h < n; h *= 2) {
    for (int i = 0; i < n; ++i) {
      if (i & h) continue;
      const float a = x[i], b = x[i + h];
      x[i] = hadamard_butterfly(a, b, i, h);
      x[i + h] = hadamard_butterfly(b, a, i + h, h);
    }
  }
  const float scale = hadamard_scale(n);
  for (int i = 0; i < n; ++i) x[i] *= scale;
}

}  // namespace glm52::attention
