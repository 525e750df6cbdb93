// Helpers compiled for both the host (CPU twins, tests) and the device (CUDA kernels).
// Framework-free: no torch types, so kernel headers stay light and the CPU build needs no CUDA.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GLM52_HD __host__ __device__ __forceinline__
#else
#define GLM52_HD inline
#endif

namespace glm52 {

GLM52_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

GLM52_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

GLM52_HD float bits_to_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// IEEE round-to-nearest division on both sides (nvcc could otherwise pick an approximate one
// under fast-math flags); the FP8 codes depend on it bit for bit.
GLM52_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

}  // namespace glm52
