// CUDA kernel of the indexer logits (ragged prefill and paged decode): SIMT, fp32 FMA, one thread
// per key. NOT a tensor-core kernel: a correct baseline for the FP8 GEMM (QGMMA) version.
//
// A CTA takes one query row and kKeysPerCta keys; the row's q [H, 128] is decoded once into shared
// memory (fp32) and broadcast to all threads. Each thread walks the heads in groups of kHeadGroup,
// decoding its key 16 dims at a time (the decode is amortized over the group), so registers stay
// bounded for any H up to 128. Key addressing (flat or paged) and the row ranges are
// attention_cache.h / attention_indexer.h's, shared with the CPU twin.
#include "attention/attention_indexer.h"
#include "attention/cuda/attention_launch.h"

#include <algorithm>

namespace glm52::attention {
namespace {

constexpr int kKeysPerCta = 128;
constexpr int kHeadGroup = 16;
constexpr int kChunk = 16;  // key dims decoded at a time (one 16-byte load)
constexpr unsigned kMaxGridY = 65535;

struct FlatKeys {
  const IndexerLogitsArgs& a;
  __device__ KeyRange range(int64_t row) const { return clamp_range(a.ks[row], a.ke[row], a.out_cols); }
  // Codes of key t and its scale, or nullptr when t maps to no key.
  __device__ const uint8_t* key(int64_t, int64_t t, float* scale) const {
    *scale = a.k_scale[t];
    return a.k8 + t * kIndexDim;
  }
};

struct PagedKeys {
  const IndexerLogitsArgs& a;
  __device__ KeyRange range(int64_t row) const { return clamp_range(0, a.lengths[row], a.out_cols); }
  __device__ const uint8_t* key(int64_t row, int64_t t, float* scale) const {
    const int32_t* table = a.block_table + (row / a.queries_per_seq) * a.table_len;
    const SlotRef s = resolve_slot(position_to_slot(table, a.table_len, t, a.num_blocks), a.num_blocks);
    if (!s.valid) return nullptr;
    *scale = load_f32(a.cache + index_scale_offset(s));
    return a.cache + index_code_offset(s);
  }
};

template <typename Keys>
__global__ void __launch_bounds__(kKeysPerCta) indexer_logits_simt_kernel(IndexerLogitsArgs a) {
  extern __shared__ float q_smem[];  // [heads, 128] decoded q of this row
  const Keys keys{a};
  const int64_t row = blockIdx.x;
  for (int64_t i = threadIdx.x; i < a.heads * kIndexDim; i += blockDim.x)
    q_smem[i] = e4m3_bits_to_float(a.q8[row * a.heads * kIndexDim + i]);
  __syncthreads();
  const KeyRange range = keys.range(row);
  const float* w = a.weights + row * a.heads;
  for (int64_t t0 = int64_t{blockIdx.y} * kKeysPerCta; t0 < a.out_cols; t0 += int64_t{gridDim.y} * kKeysPerCta) {
    const int64_t t = t0 + threadIdx.x;
    if (t >= a.out_cols) break;
    float scale = 0.0f;
    const uint8_t* codes = t >= range.begin && t < range.end ? keys.key(row, t, &scale) : nullptr;
    if (codes == nullptr) {
      a.out[row * a.out_cols + t] = -INFINITY;
      continue;
    }
    float sum = 0.0f;
    for (int64_t h0 = 0; h0 < a.heads; h0 += kHeadGroup) {
      float dot[kHeadGroup] = {};
      for (int c = 0; c < kIndexDim; c += kChunk) {
        const uint4 raw = *reinterpret_cast<const uint4*>(codes + c);
        const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&raw);
        float k[kChunk];
#pragma unroll
        for (int d = 0; d < kChunk; ++d) k[d] = e4m3_bits_to_float(bytes[d]);
#pragma unroll
        for (int h = 0; h < kHeadGroup; ++h) {
          if (h0 + h >= a.heads) break;
          const float* q = q_smem + (h0 + h) * kIndexDim + c;
#pragma unroll
          for (int d = 0; d < kChunk; ++d) dot[h] = fmaf(q[d], k[d], dot[h]);
        }
      }
#pragma unroll
      for (int h = 0; h < kHeadGroup; ++h)
        if (h0 + h < a.heads) sum += relu_weighted(w[h0 + h], dot[h]);
    }
    a.out[row * a.out_cols + t] = sum * scale;
  }
}

template <typename Keys>
cudaError_t launch_typed(const IndexerLogitsArgs& a, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(a.heads) * kIndexDim * sizeof(float);
  cudaError_t err = cudaFuncSetAttribute(indexer_logits_simt_kernel<Keys>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(a.rows),
                  static_cast<unsigned>(std::min<int64_t>(ceil_div(a.out_cols, kKeysPerCta), kMaxGridY)));
  indexer_logits_simt_kernel<Keys><<<grid, kKeysPerCta, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_indexer_logits(const IndexerLogitsArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.out_cols == 0) return cudaSuccess;
  return a.paged ? launch_typed<PagedKeys>(a, stream) : launch_typed<FlatKeys>(a, stream);
}

}  // namespace glm52::attention
