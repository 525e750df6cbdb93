// Which CUDA kernel runs the fused indexer top-k, and the shared memory it takes: a host-side rule
// (the launcher follows it; every build answers it through torch.ops.glm52.indexer_topk_kernel, so
// tests check it without a GPU).
//
//   QGMMA scoring (indexer_topk_qgmma_kernels.cu) for 32 or 64 heads when tensor cores are allowed
//   (GLM52_INDEXER_KERNEL is not "simt"), as indexer_logits; SIMT scoring (indexer_topk_kernels.cu)
//   otherwise. Each equals topk_indices of the indexer_logits kernel with the same scoring.
//
// Shared-memory budget of the QGMMA kernel: a fixed part (q tile 8 KB, two key stages 32 KB, key
// scales/flags 2 KB, head weights, head-reduction partials 2 KB, selection scratch: at most
// kIndexerTopkQgmmaFixedSmem = 48 KB) plus one candidate buffer of 2k + 256 entries (8 B each) per
// selected row. A CTA scores one wgmma M tile, the 64 / H queries of the logits kernel's tile, and
// keeps the selections of all of them when their buffers fit (64 heads: one query, every k <= 8192,
// at most 178 KB; 32 heads: two queries for k <= 5600, e.g. 116 KB at k = 2048), else of one (32
// heads, k > 5600: two CTAs score the same tile, each selects for one query; at most 178 KB).
// So every accepted k fits an sm_90 CTA: nothing to refuse (static_asserts below).
// SIMT: the row's decoded q (H x 512 B) plus one candidate buffer, at most 194 KB (H = 128, k = 8192).
#pragma once

#include "attention/attention_indexer.h"
#include "attention/attention_topk_stream.h"

namespace glm52::attention {

// Opt-in dynamic shared memory of one sm_90 CTA (cudaDevAttrMaxSharedMemoryPerBlockOptin, H100/H200).
constexpr int64_t kSm90MaxSmemBytes = 227 * 1024;
// Upper bound of the QGMMA kernel's fixed shared part (static_assert'ed in the kernel file).
constexpr int64_t kIndexerTopkQgmmaFixedSmem = 48 * 1024;
constexpr int64_t kIndexerTopkQgmmaRows = 64;  // wgmma M: (64 / H) queries x H heads
constexpr int64_t kIndexerTopkMaxHeads = 128;

enum class IndexerTopkKernel { kSimt, kQgmma };

GLM52_HD constexpr bool indexer_topk_qgmma_heads(int64_t heads) { return heads == 32 || heads == 64; }

// Bytes of one row's candidate buffer (keys and columns).
GLM52_HD constexpr int64_t indexer_topk_candidate_bytes(int64_t k) { return stream_topk_capacity(k) * 8; }

// Queries of one M tile of the QGMMA kernel (heads 32 or 64).
GLM52_HD constexpr int64_t indexer_topk_qgmma_queries(int64_t heads) { return kIndexerTopkQgmmaRows / heads; }

// Queries whose selection one QGMMA CTA keeps: all of its M tile's when their buffers fit, else one.
GLM52_HD constexpr int64_t indexer_topk_qgmma_selected(int64_t heads, int64_t k) {
  const int64_t all = indexer_topk_qgmma_queries(heads);
  return kIndexerTopkQgmmaFixedSmem + all * indexer_topk_candidate_bytes(k) <= kSm90MaxSmemBytes ? all : 1;
}

// Dynamic shared memory of the QGMMA kernel (heads 32 or 64).
GLM52_HD constexpr int64_t indexer_topk_qgmma_smem_bytes(int64_t heads, int64_t k) {
  return kIndexerTopkQgmmaFixedSmem + indexer_topk_qgmma_selected(heads, k) * indexer_topk_candidate_bytes(k);
}

// Dynamic shared memory of the SIMT kernel: the row's decoded fp32 q and its candidates.
GLM52_HD constexpr int64_t indexer_topk_simt_smem_bytes(int64_t heads, int64_t k) {
  return heads * kIndexDim * 4 + indexer_topk_candidate_bytes(k);
}

static_assert(indexer_topk_qgmma_smem_bytes(32, kStreamTopkMaxK) <= kSm90MaxSmemBytes &&
                  indexer_topk_qgmma_smem_bytes(64, kStreamTopkMaxK) <= kSm90MaxSmemBytes &&
                  indexer_topk_simt_smem_bytes(kIndexerTopkMaxHeads, kStreamTopkMaxK) <= kSm90MaxSmemBytes,
              "every accepted k fits one CTA's shared memory");

GLM52_HD constexpr IndexerTopkKernel indexer_topk_kernel_for(int64_t heads, bool tensor_cores) {
  return tensor_cores && indexer_topk_qgmma_heads(heads) ? IndexerTopkKernel::kQgmma : IndexerTopkKernel::kSimt;
}

GLM52_HD constexpr int64_t indexer_topk_smem_bytes(IndexerTopkKernel kernel, int64_t heads, int64_t k) {
  return kernel == IndexerTopkKernel::kQgmma ? indexer_topk_qgmma_smem_bytes(heads, k)
                                             : indexer_topk_simt_smem_bytes(heads, k);
}

}  // namespace glm52::attention
