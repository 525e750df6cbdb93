// SwiGLU of the expert FFN, shared by the CPU twin and the CUDA kernel of silu_and_mul_quant_fp8:
// silu(gate) * up in fp32, then quant_fp8.h's group scale and e4m3 clamping (no rounding to
// BF16 in between). Framework-free (host and device).
#pragma once

#include "common/host_device.h"

#include <cmath>

namespace glm52::moe {

// silu(g) * u = g / (1 + exp(-g)) * u, in fp32.
GLM52_HD float silu_and_mul(float gate, float up) { return div_rn(gate, 1.0f + expf(-gate)) * up; }

}  // namespace glm52::moe
