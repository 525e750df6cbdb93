// The split-KV plan on the device (attention_split.h): one CTA, no host synchronization.
//   1. num_splits[1..rows] <- inclusive prefix sums of the row costs (block scan with a carry);
//   2. each part's metadata row from those sums (split_plan_part, as the CPU twin);
//   3. num_splits[1..rows] <- prefix sums of the rows' piece counts (split_row_pieces).
// Step 3 rewrites the sums step 2 read: a chunk reads its rows' sums, and a barrier separates
// every read from the writes (each row's start is recomputed from its own end and cost).
#include "attention/attention_split.h"
#include "attention/cuda/attention_launch.h"

#include <cub/block/block_scan.cuh>

namespace glm52::attention {
namespace {

constexpr int kMetaThreads = 512;

__global__ void __launch_bounds__(kMetaThreads) sparse_mla_metadata_kernel(const int32_t* row_topk, int64_t rows,
                                                                           int64_t parts, int32_t* meta,
                                                                           int32_t* num_splits) {
  using Scan = cub::BlockScan<int64_t, kMetaThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ int64_t carry;
  if (threadIdx.x == 0) {
    carry = 0;
    num_splits[0] = 0;
  }
  __syncthreads();
  for (int64_t c0 = 0; c0 < rows; c0 += kMetaThreads) {
    const int64_t r = c0 + threadIdx.x;
    int64_t sum, chunk_total;
    Scan(scan_storage).InclusiveSum(r < rows ? split_row_cost(row_topk[r]) : 0, sum, chunk_total);
    if (r < rows) num_splits[r + 1] = static_cast<int32_t>(carry + sum);
    __syncthreads();
    if (threadIdx.x == 0) carry += chunk_total;
    __syncthreads();
  }
  const int64_t total = carry;
  for (int64_t p = threadIdx.x; p < parts; p += kMetaThreads)
    split_plan_part(p, parts, num_splits + 1, 1, row_topk, rows, meta + p * kSplitMetaInts);
  __syncthreads();
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  const int64_t span = split_span(total, parts);
  for (int64_t c0 = 0; c0 < rows; c0 += kMetaThreads) {
    const int64_t r = c0 + threadIdx.x;
    int64_t pieces = 0;
    if (r < rows) {
      const int64_t row_end = num_splits[r + 1];
      pieces = split_row_pieces(row_end - split_row_cost(row_topk[r]), row_end, span, parts);
    }
    __syncthreads();  // every read of this chunk's sums happens before any write below
    int64_t sum, chunk_total;
    Scan(scan_storage).InclusiveSum(pieces, sum, chunk_total);
    if (r < rows) num_splits[r + 1] = static_cast<int32_t>(carry + sum);
    __syncthreads();
    if (threadIdx.x == 0) carry += chunk_total;
    __syncthreads();
  }
}

}  // namespace

cudaError_t launch_sparse_mla_metadata(const int32_t* row_topk, int64_t rows, int64_t parts, int32_t* meta,
                                       int32_t* num_splits, cudaStream_t stream) {
  sparse_mla_metadata_kernel<<<1, kMetaThreads, 0, stream>>>(row_topk, rows, parts, meta, num_splits);
  return cudaGetLastError();
}

}  // namespace glm52::attention
