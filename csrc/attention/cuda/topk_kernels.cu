// CUDA kernel of topk_indices: radix selection, one CTA per row, no sort (attention_topk.h holds
// the digit, bin-choice and output-position logic the CPU twin runs too).
//
// Passes over the row (L2-resident up to ~1M columns per CTA in flight): a histogram of the first
// digit over the finite entries (its total is the finite count), three more histograms over the
// candidates that match the prefix, then one order-preserving compaction that scans (#greater,
// #equal) per 1024-column tile with a block-wide prefix sum. Outputs equal the CPU twin's exactly.
#include "attention/attention_topk.h"
#include "attention/cuda/attention_launch.h"

#include <cub/block/block_scan.cuh>

namespace glm52::attention {
namespace {

constexpr int kThreads = 1024;

__global__ void __launch_bounds__(kThreads) topk_radix_select_kernel(TopkArgs a) {
  using Scan = cub::BlockScan<uint32_t, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ uint32_t hist[kTopkBins];
  __shared__ TopkSelection sel_smem;

  const int64_t row = blockIdx.x;
  const TopkWindow window = topk_window(a.row_starts, a.lengths, row, a.cols);
  const float* x = a.logits + row * a.row_stride + window.start;
  const int64_t len = window.len;
  int32_t* out = a.out + row * a.k;

  TopkSelection sel{false, 0u, 0u};
  for (int pass = 0; pass < kTopkPasses; ++pass) {
    for (int b = threadIdx.x; b < kTopkBins; b += kThreads) hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < len; i += kThreads) {
      const float v = x[i];
      const int bin = topk_is_finite(v) ? topk_bin(topk_key(v), pass, sel.threshold) : -1;
      // Logits crowd into few bins (one sign and exponent for most of a row): lanes with the same
      // bin add once, so shared-memory atomics do not serialize 32-way.
      const unsigned same = __match_any_sync(__activemask(), bin);
      if (bin >= 0 && (threadIdx.x & 31) == __ffs(same) - 1) atomicAdd(&hist[bin], __popc(same));
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (pass == 0) {
        int64_t finite = 0;
        for (int b = 0; b < kTopkBins; ++b) finite += hist[b];
        sel = topk_begin(finite, a.k);
      }
      if (!sel.take_all) topk_select_bin(sel, hist, pass);
      sel_smem = sel;
    }
    __syncthreads();
    sel = sel_smem;
    if (sel.take_all) break;  // uniform across the CTA
  }

  // Positions past the selection stay -1: the selection has min(k, #finite) entries.
  for (int64_t j = threadIdx.x; j < a.k; j += kThreads) out[j] = -1;
  __syncthreads();

  // Compaction in column order; the scan carries (#greater << 16 | #equal) per tile (<= 1024 each).
  int64_t greater_base = 0, equal_base = 0;
  for (int64_t t0 = 0; t0 < len; t0 += kThreads) {
    const int64_t i = t0 + threadIdx.x;
    bool gt = false, eq = false;
    if (i < len) {
      const float v = x[i];
      if (topk_is_finite(v)) {
        const uint32_t key = topk_key(v);
        gt = topk_greater(sel, key);
        eq = topk_equal(sel, key);
      }
    }
    uint32_t prefix, total;
    Scan(scan_storage).ExclusiveSum((uint32_t{gt} << 16) | uint32_t{eq}, prefix, total);
    if (gt || eq) {
      const int64_t pos = topk_position(sel, gt, greater_base + (prefix >> 16), equal_base + (prefix & 0xffffu));
      if (pos >= 0) out[pos] = static_cast<int32_t>(i);
    }
    greater_base += total >> 16;
    equal_base += total & 0xffffu;
    __syncthreads();  // scan_storage is reused by the next tile
  }
}

}  // namespace

cudaError_t launch_topk_indices(const TopkArgs& a, cudaStream_t stream) {
  if (a.rows == 0 || a.k == 0) return cudaSuccess;
  topk_radix_select_kernel<<<static_cast<unsigned>(a.rows), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace glm52::attention
