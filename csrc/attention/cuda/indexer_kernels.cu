// SIMT CUDA kernel of the indexer logits (ragged prefill and paged decode), fp32 FMA, one thread per
// key: NOT a tensor-core kernel. It serves the head counts the QGMMA kernel
// (indexer_qgmma_kernels.cu, 32 or 64 heads) does not, and GLM52_INDEXER_KERNEL=simt.
//
// A CTA takes one query row and kKeysPerCta keys; the row's q [H, 128] is decoded once into shared
// memory (fp32) and broadcast to all threads; each thread scores its key with indexer_score.cuh
// (shared with the fused indexer_topk kernel). Key addressing (flat or paged) and the row ranges are
// attention_cache.h / attention_indexer.h's, shared with the CPU twin.
#include "attention/cuda/indexer_keys.cuh"
#include "attention/cuda/indexer_score.cuh"

#include <algorithm>

namespace glm52::attention {
namespace {

constexpr int kKeysPerCta = 128;
constexpr unsigned kMaxGridY = 65535;

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
    const uint8_t* codes = t >= range.begin && t < range.end ? keys.key(row / a.queries_per_seq, t, &scale) : nullptr;
    if (codes == nullptr) {
      a.out[row * a.out_cols + t] = -INFINITY;
      continue;
    }
    a.out[row * a.out_cols + t] = indexer_score_simt(q_smem, w, a.heads, codes, scale);
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

cudaError_t launch_indexer_logits(const IndexerLogitsArgs& a, bool tensor_cores, cudaStream_t stream) {
  if (a.rows == 0 || a.out_cols == 0) return cudaSuccess;
  if (tensor_cores && indexer_logits_qgmma_supports(a.heads)) return launch_indexer_logits_qgmma(a, stream);
  return a.paged ? launch_typed<IndexerPagedKeys>(a, stream) : launch_typed<IndexerFlatKeys>(a, stream);
}

}  // namespace glm52::attention
