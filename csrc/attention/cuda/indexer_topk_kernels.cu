// CUDA kernel of the fused indexer top-k: one CTA per query row streams the row's keys in tiles of
// kStreamTopkTile (one key per thread, scored by indexer_score.cuh, the bits of the SIMT
// indexer_logits kernel) into a running candidate buffer in shared memory; the [rows, L] scores are
// never written. Admission, reduction trigger, bin choice and output positions are
// attention_topk_stream.h / attention_topk.h's (the CPU twin runs the same functions serially): here
// the histograms are block-wide and compaction is an order-preserving block scan.
//
// Shared memory: the row's q [H, 128] fp32 and 2k + 256 candidates (8 B each): at most
// 64 KB + 130 KB for H = 128, k = 8192 (indexer_topk_plan.h).
// This is the kernel for head counts other than 32 and 64 and under GLM52_INDEXER_KERNEL=simt; 32
// and 64 heads otherwise score on tensor cores (indexer_topk_qgmma_kernels.cu, the same selection),
// as indexer_logits does. One CTA per row also leaves most SMs
// idle for decode-sized batches (a split of the key range over CTAs merged like context-parallel
// shards is the next step).
#include "attention/indexer_topk_plan.h"
#include "attention/cuda/indexer_keys.cuh"
#include "attention/cuda/indexer_score.cuh"
#include "attention/cuda/indexer_topk_block.cuh"
#include "attention/cuda/indexer_topk_launch.h"

namespace glm52::attention {
namespace {

constexpr int kThreads = kStreamTopkTile;
using Block = BlockTopk<kThreads>;

template <typename Keys>
__global__ void __launch_bounds__(kThreads) indexer_topk_kernel(IndexerTopkArgs a) {
  __shared__ Block::Shared sh;
  extern __shared__ __align__(16) unsigned char dyn_smem[];
  const IndexerLogitsArgs& s = a.scores;
  const int64_t capacity = stream_topk_capacity(a.k);
  float* q_smem = reinterpret_cast<float*>(dyn_smem);                    // [heads, 128]
  uint32_t* cand_keys = reinterpret_cast<uint32_t*>(q_smem + s.heads * kIndexDim);  // [capacity]
  int32_t* cand_cols = reinterpret_cast<int32_t*>(cand_keys + capacity);  // [capacity]

  const Keys keys{s};
  const int64_t row = blockIdx.x;
  for (int64_t i = threadIdx.x; i < s.heads * kIndexDim; i += kThreads)
    q_smem[i] = e4m3_bits_to_float(s.q8[row * s.heads * kIndexDim + i]);
  int32_t* out = a.out + row * a.k;
  for (int64_t j = threadIdx.x; j < a.k; j += kThreads) out[j] = -1;
  __syncthreads();

  const KeyRange range = keys.range(row);
  const float* w = s.weights + row * s.heads;
  const int64_t seq = row / s.queries_per_seq;
  TopkStream st = stream_topk_begin();  // identical in every thread
  for (int64_t t0 = range.begin; t0 < range.end; t0 += kThreads) {
    if (stream_topk_should_reduce(st, a.k)) Block::reduce(st, cand_keys, cand_cols, a.k, sh);
    const int64_t t = t0 + threadIdx.x;
    bool admitted = false;
    float v = 0.0f;
    if (t < range.end) {
      float scale = 0.0f;
      const uint8_t* codes = keys.key(seq, t, &scale);
      if (codes != nullptr) {
        v = indexer_score_simt(q_smem, w, s.heads, codes, scale);
        admitted = stream_topk_admits(st, v);
      }
    }
    uint32_t prefix, total;
    Block::Scan(sh.scan).ExclusiveSum(uint32_t{admitted}, prefix, total);
    if (admitted) {
      cand_keys[st.count + prefix] = topk_key(v);
      cand_cols[st.count + prefix] = static_cast<int32_t>(t);
    }
    st.count += total;
    __syncthreads();
  }
  Block::finish(st, cand_keys, cand_cols, a.k, out, sh);
}

template <typename Keys>
cudaError_t launch_typed(const IndexerTopkArgs& a, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(indexer_topk_simt_smem_bytes(a.scores.heads, a.k));
  cudaError_t err = cudaFuncSetAttribute(indexer_topk_kernel<Keys>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  indexer_topk_kernel<Keys><<<static_cast<unsigned>(a.scores.rows), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_indexer_topk(const IndexerTopkArgs& a, bool tensor_cores, cudaStream_t stream) {
  if (a.scores.rows == 0 || a.k == 0) return cudaSuccess;
  if (indexer_topk_kernel_for(a.scores.heads, tensor_cores) == IndexerTopkKernel::kQgmma)
    return launch_indexer_topk_qgmma(a, stream);
  return a.scores.paged ? launch_typed<IndexerPagedKeys>(a, stream) : launch_typed<IndexerFlatKeys>(a, stream);
}

}  // namespace glm52::attention
