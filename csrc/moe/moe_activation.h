// SwiGLU of the expert FFN, shared by the CPU twin and the CUDA kernel of silu_and_mul_quant_fp8:
// silu(gate) * up in fp32, then quant_fp8.h's group scale and e4m3 clamping (no rounding to
// BF16 in between). Framework-free (host and device).
#pragma once

#include "common/host_device.h"

#include <cmath>

namespace glm52::moe {

// silu(g) * u = g / (1 + exp(-g)) * u, in fp32. The device divides with __fdividef (2 ulp; the
// IEEE division calls a slow-path subroutine whose register saves spill to the stack in the
// vectorized kernels); exp may differ in its last bits between libraries too. Both are far below
// the e4m3 rounding that follows, and tests bound them against the reference.
GLM52_HD float silu_and_mul(float gate, float up) {
#if defined(__CUDA_ARCH__)
  return __fdividef(gate, 1.0f + expf(-gate)) * up;
#else
  return gate / (1.0f + expf(-gate)) * up;
#endif
}

}  // namespace glm52::moe
