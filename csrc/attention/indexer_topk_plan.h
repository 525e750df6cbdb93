// Which CUDA kernel runs the fused indexer top-k, and the shared memory it takes: a host-side rule
// (the launcher follows it; the CPU build answers the same through torch.ops.glm52.indexer_topk_kernel,
// so tests check it without a GPU).
//
//   QGMMA (indexer_topk_qgmma_kernels.cu) for 32 or 64 heads when tensor cores are allowed
//   (GLM52_INDEXER_KERNEL is not "simt") and its shared memory fits an sm_90 CTA; SIMT
//   (indexer_topk_kernels.cu) otherwise.
//
// Shared-memory budget of the QGMMA kernel: a fixed part (q tile 8 KB, two key stages 32 KB, key
// scales/flags 2 KB, head weights, head-reduction partials 2 KB, selection scratch: at most
// kIndexerTopkQgmmaFixedSmem) plus 64 / H query rows' candidate buffers of 2k + 256 entries, 8 B
// each. 64 heads (one row): every k <= 8192 fits (k = 8192: 178 KB). 32 heads (two rows): k <= 5600
// fits (k = 2048: 116 KB); larger k takes the SIMT kernel (one row per CTA).
// SIMT: the row's decoded q (H x 512 B) plus one candidate buffer, at most 194 KB (H = 128, k = 8192).
#pragma once

#include "attention/attention_indexer.h"
#include "attention/attention_topk_stream.h"

namespace glm52::attention {

// Opt-in dynamic shared memory of one sm_90 CTA (cudaDevAttrMaxSharedMemoryPerBlockOptin, H100/H200).
constexpr int64_t kSm90MaxSmemBytes = 227 * 1024;
// Upper bound of the QGMMA kernel's fixed shared part (static_assert'ed in the kernel file).
constexpr int64_t kIndexerTopkQgmmaFixedSmem = 48 * 1024;
constexpr int64_t kIndexerTopkQgmmaRows = 64;  // wgmma M: (64 / H) query rows x H heads per CTA

enum class IndexerTopkKernel { kSimt, kQgmma };

GLM52_HD bool indexer_topk_qgmma_heads(int64_t heads) { return heads == 32 || heads == 64; }

// Bytes of one row's candidate buffer (keys and columns).
GLM52_HD int64_t indexer_topk_candidate_bytes(int64_t k) { return stream_topk_capacity(k) * 8; }

// Dynamic shared memory of the QGMMA kernel (heads 32 or 64).
GLM52_HD int64_t indexer_topk_qgmma_smem_bytes(int64_t heads, int64_t k) {
  return kIndexerTopkQgmmaFixedSmem + (kIndexerTopkQgmmaRows / heads) * indexer_topk_candidate_bytes(k);
}

// Dynamic shared memory of the SIMT kernel: the row's decoded fp32 q and its candidates.
GLM52_HD int64_t indexer_topk_simt_smem_bytes(int64_t heads, int64_t k) {
  return heads * kIndexDim * 4 + indexer_topk_candidate_bytes(k);
}

GLM52_HD IndexerTopkKernel indexer_topk_kernel_for(int64_t heads, int64_t k, bool tensor_cores) {
  const bool qgmma = tensor_cores && indexer_topk_qgmma_heads(heads) &&
                     indexer_topk_qgmma_smem_bytes(heads, k) <= kSm90MaxSmemBytes;
  return qgmma ? IndexerTopkKernel::kQgmma : IndexerTopkKernel::kSimt;
}

GLM52_HD int64_t indexer_topk_smem_bytes(IndexerTopkKernel kernel, int64_t heads, int64_t k) {
  return kernel == IndexerTopkKernel::kQgmma ? indexer_topk_qgmma_smem_bytes(heads, k)
                                             : indexer_topk_simt_smem_bytes(heads, k);
}

}  // namespace glm52::attention
