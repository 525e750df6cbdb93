// CUDA kernels of the paged cache writes: one warp per token. Memory-bound and small (one token
// row each); the byte layout and the scale math are attention_cache.h's and quant_fp8.h's, shared
// with the CPU twins, and e4m3 rounding is the same RNE conversion the quant kernels use.
#include "common/cuda_convert.cuh"
#include "attention/attention_cache.h"
#include "attention/attention_rope.h"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/hadamard_warp.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <algorithm>

namespace glm52::attention {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBlocks = 8192;

__device__ __forceinline__ uint8_t e4m3_code(float v) {
  return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}

// Max over the `width` lanes of an aligned lane group (width a power of two).
__device__ __forceinline__ float group_max(float v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Lane l writes k_pe pair l (32 lanes, 32 pairs), rotated by the token's turn [32, 2] when given.
__device__ __forceinline__ void write_rope(const uint16_t* k_pe, const float* turn, uint16_t* dst, int lane) {
  const uint16_t x0 = k_pe[2 * lane], x1 = k_pe[2 * lane + 1];
  if (turn == nullptr) {
    dst[2 * lane] = x0;
    dst[2 * lane + 1] = x1;
    return;
  }
  float y0, y1;
  rope_rotate(bf16_bits_to_float(x0), bf16_bits_to_float(x1), turn + 2 * lane, y0, y1);
  dst[2 * lane] = __bfloat16_as_ushort(__float2bfloat16_rn(y0));
  dst[2 * lane + 1] = __bfloat16_as_ushort(__float2bfloat16_rn(y1));
}

static_assert(kRopeDim == 64, "one k_pe pair per lane");

__global__ void __launch_bounds__(kThreads) mla_cache_write_kernel(MlaCacheWriteArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t token_bytes = mla_token_bytes(a.fp8);
  for (int64_t t = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32; t < a.tokens; t += gridDim.x * int64_t{kWarps}) {
    const SlotRef s = resolve_slot(a.slots[t], a.num_blocks);
    if (!s.valid) continue;  // warp-uniform
    const uint16_t* row = a.kv + t * a.kv_row_stride;
    uint8_t* token = a.cache + (s.block * kBlockTokens + s.offset) * token_bytes;
    const float* turn = a.rope == nullptr ? nullptr : a.rope + t * kRopeDim;
    if (!a.fp8) {
      uint16_t* dst = reinterpret_cast<uint16_t*>(token);
      for (int i = lane; i < kValueDim; i += 32) dst[i] = row[i];
      write_rope(row + kValueDim, turn, dst + kValueDim, lane);
      continue;
    }
    // Lane l quantizes c_kv dims [16l, 16l + 16): 8 lanes per 128-dim scale group.
    float v[16];
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      v[i] = bf16_bits_to_float(row[16 * lane + i]);
      amax = fmaxf(amax, fabsf(v[i]));
    }
    const float scale = quant::group_scale(group_max(amax, kFp8GroupDim / 16), false);
#pragma unroll
    for (int i = 0; i < 16; ++i) token[16 * lane + i] = e4m3_code(quant::scaled_for_e4m3(v[i], scale));
    if (lane % (kFp8GroupDim / 16) == 0)
      *reinterpret_cast<float*>(token + kMlaFp8ScaleOffset + 4 * (lane / (kFp8GroupDim / 16))) = scale;
    write_rope(row + kValueDim, turn, reinterpret_cast<uint16_t*>(token + kMlaFp8RopeOffset), lane);
  }
}

// Lane l quantizes dims [4l, 4l + 4) of one key (the Hadamard butterfly's lane layout); the whole
// warp is one 128-dim group.
template <typename T>
__global__ void __launch_bounds__(kThreads) indexer_cache_write_kernel(IndexerCacheWriteArgs a) {
  const int lane = threadIdx.x & 31;
  const T* k = static_cast<const T*>(a.k);
  for (int64_t t = blockIdx.x * int64_t{kWarps} + threadIdx.x / 32; t < a.tokens; t += gridDim.x * int64_t{kWarps}) {
    const SlotRef s = resolve_slot(a.slots[t], a.num_blocks);
    if (!s.valid) continue;  // warp-uniform
    float v[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) v[i] = to_float(k[t * a.k_row_stride + 4 * lane + i]);
    // Pairs 2l and 2l + 1 rotated (and rounded to k's dtype, as the model stores the key).
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int64_t pair = 2 * lane + p;
      if (pair >= a.rope_pairs) break;
      rope_rotate(v[2 * p], v[2 * p + 1], a.rope + (t * a.rope_pairs + pair) * 2, v[2 * p], v[2 * p + 1]);
      v[2 * p] = to_float(from_float<T>(v[2 * p]));
      v[2 * p + 1] = to_float(from_float<T>(v[2 * p + 1]));
    }
    if (a.hadamard) warp_hadamard_rotate<4>(v, lane);
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i) amax = fmaxf(amax, fabsf(v[i]));
    const float scale = quant::group_scale(group_max(amax, 32), a.scale_ue8m0);
    uint8_t* codes = a.cache + index_code_offset(s);
#pragma unroll
    for (int i = 0; i < 4; ++i) codes[4 * lane + i] = e4m3_code(quant::scaled_for_e4m3(v[i], scale));
    if (lane == 0) *reinterpret_cast<float*>(a.cache + index_scale_offset(s)) = scale;
  }
}

dim3 warp_grid(int64_t tokens) { return dim3(static_cast<unsigned>(std::min(ceil_div(tokens, kWarps), kMaxBlocks))); }

}  // namespace

cudaError_t launch_mla_cache_write(const MlaCacheWriteArgs& a, cudaStream_t stream) {
  if (a.tokens == 0) return cudaSuccess;
  mla_cache_write_kernel<<<warp_grid(a.tokens), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

cudaError_t launch_indexer_cache_write(const IndexerCacheWriteArgs& a, cudaStream_t stream) {
  if (a.tokens == 0) return cudaSuccess;
  switch (a.k_dtype) {
    case DType::kFloat32: indexer_cache_write_kernel<float><<<warp_grid(a.tokens), kThreads, 0, stream>>>(a); break;
    case DType::kFloat16: indexer_cache_write_kernel<__half><<<warp_grid(a.tokens), kThreads, 0, stream>>>(a); break;
    case DType::kBFloat16:
      indexer_cache_write_kernel<__nv_bfloat16><<<warp_grid(a.tokens), kThreads, 0, stream>>>(a);
      break;
  }
  return cudaGetLastError();
}

}  // namespace glm52::attention
