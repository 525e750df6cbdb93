// Launcher of the fused indexer top-k kernel (flat or paged keys). Framework-free, like
// attention_launch.h; the torch-facing checks live in indexer_topk_checks.h.
#pragma once

#include "attention/cuda/attention_launch.h"

namespace glm52::attention {

struct IndexerTopkArgs {
  IndexerLogitsArgs scores;  // the logits op's inputs; `out` unused, out_cols bounds the key range
  int64_t k;
  int32_t* out;              // [rows, k]
};

// No host synchronization; an error when the shared memory the selection needs is not available.
// The kernel is indexer_topk_kernel_for(heads, tensor_cores) (indexer_topk_plan.h): QGMMA scoring
// for 32 or 64 heads when tensor_cores, SIMT otherwise.
cudaError_t launch_indexer_topk(const IndexerTopkArgs& args, bool tensor_cores, cudaStream_t stream);
// The QGMMA-scored kernel alone (indexer_topk_qgmma_kernels.cu): cudaErrorInvalidValue unless 32
// or 64 heads.
cudaError_t launch_indexer_topk_qgmma(const IndexerTopkArgs& args, cudaStream_t stream);

}  // namespace glm52::attention
