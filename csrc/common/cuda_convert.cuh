// Device-side element conversions shared by every family's kernels (framework-free).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <cstdint>

namespace glm52 {

template <typename T>
__device__ __forceinline__ float to_float(T v) { return static_cast<float>(v); }
template <>
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <>
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float(float v) { return __float2bfloat16_rn(v); }

// Round-to-nearest-even e4m3 (callers clamp to ±448 first; SATFINITE only guards the edges).
__device__ __forceinline__ uint8_t e4m3(float v) { return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3); }

__device__ __forceinline__ uint32_t e4m3x2(float a, float b) {
  return __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
}

// Stores E (4 or 8) codes with one 4- or 8-byte store, packed in registers (no local array).
template <int E>
__device__ __forceinline__ void store_e4m3(uint8_t* dst, const float* v) {
  if constexpr (E == 8) {
    *reinterpret_cast<uint2*>(dst) =
        make_uint2(e4m3x2(v[0], v[1]) | e4m3x2(v[2], v[3]) << 16, e4m3x2(v[4], v[5]) | e4m3x2(v[6], v[7]) << 16);
  } else {
    static_assert(E == 4, "16-byte vectors hold 4 or 8 elements");
    *reinterpret_cast<uint32_t*>(dst) = e4m3x2(v[0], v[1]) | e4m3x2(v[2], v[3]) << 16;
  }
}

// Exact: every e4m3 value is a half.
__device__ __forceinline__ float e4m3_to_float(uint8_t code) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(code, __NV_E4M3)));
}

}  // namespace glm52
