// Interleaved RoPE applied while a key is written to a cache (mla_cache_write's k_pe,
// indexer_cache_write's leading dims), shared by the CPU twins and the CUDA kernels.
//
// The rotation is the model's (glm52.layers.apply_rope): pair (x0, x1) as the complex number
// x0 + i x1 times cos + i sin, in fp32, each product rounded before the sum (no fused multiply-add,
// which nvcc would otherwise contract), then rounded to the key's dtype. So the fused write stores
// what rotating in PyTorch and writing the result stores.
#pragma once

#include "common/host_device.h"

namespace glm52::attention {

GLM52_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;  // host builds target x86-64 without FMA, so nothing is contracted
#endif
}

GLM52_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// (y0, y1) = (x0 cos - x1 sin, x0 sin + x1 cos); `turn` points at one pair's (cos, sin).
GLM52_HD void rope_rotate(float x0, float x1, const float* turn, float& y0, float& y1) {
  const float c = turn[0], s = turn[1];
  y0 = add_rn(mul_rn(x0, c), -mul_rn(x1, s));
  y1 = add_rn(mul_rn(x0, s), mul_rn(x1, c));
}

}  // namespace glm52::attention
