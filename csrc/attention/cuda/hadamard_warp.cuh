// attention_hadamard.h's rotation of an n-wide row (n = 32 * E) run by one warp: lane l holds dims
// [E*l, E*l + E). Strides below E stay in the lane's registers; the larger ones exchange partners
// with shuffles (lane distance h / E). Each element goes through hadamard_butterfly in the CPU
// twin's order, so the bits match.
#pragma once

#include "attention/attention_hadamard.h"

namespace glm52::attention {

template <int E>
__device__ __forceinline__ void warp_hadamard_rotate(float (&v)[E], int lane) {
  static_assert(E == 1 || E == 2 || E == 4, "32, 64 or 128 dims per row");
  constexpr int kDim = 32 * E;
#pragma unroll
  for (int h = 1; h < E; h *= 2) {
    float next[E];
#pragma unroll
    for (int i = 0; i < E; ++i) next[i] = hadamard_butterfly(v[i], v[i ^ h], i, h);
#pragma unroll
    for (int i = 0; i < E; ++i) v[i] = next[i];
  }
#pragma unroll
  for (int h = E; h < kDim; h *= 2) {
#pragma unroll
    for (int i = 0; i < E; ++i) {
      const float partner = __shfl_xor_sync(0xffffffffu, v[i], h / E);
      v[i] = hadamard_butterfly(v[i], partner, E * lane + i, h);
    }
  }
  const float scale = hadamard_scale(kDim);
#pragma unroll
  for (int i = 0; i < E; ++i) v[i] *= scale;
}

}  // namespace glm52::attention
