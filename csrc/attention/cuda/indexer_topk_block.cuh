// Block-wide steps of the streaming top-k (attention_topk_stream.h), shared by the fused indexer
// top-k kernels (SIMT: 256 threads, one row per CTA; QGMMA: 128 threads, 64 / H rows per CTA): the
// same selection the CPU twin runs serially, with block-wide histograms and an order-preserving
// block scan for the compaction. Inlined: the callers' selection state stays in registers.
#pragma once

#include "attention/attention_topk_stream.h"

#include <cub/block/block_scan.cuh>

namespace glm52::attention {

template <int kThreads>
struct BlockTopk {
  using Scan = cub::BlockScan<uint32_t, kThreads>;

  struct Shared {
    typename Scan::TempStorage scan;
    uint32_t hist[kTopkBins];
    TopkSelection sel;
  };

  // topk_select_keys over keys [n] (all finite); every thread returns the selection.
  static __device__ __forceinline__ TopkSelection select(const uint32_t* keys, int64_t n, int64_t k, Shared& sh) {
    TopkSelection sel = topk_begin(n, k);
    for (int pass = 0; !sel.take_all && pass < kTopkPasses; ++pass) {
      for (int b = threadIdx.x; b < kTopkBins; b += kThreads) sh.hist[b] = 0;
      __syncthreads();
      for (int64_t i = threadIdx.x; i < n; i += kThreads) {
        const int bin = topk_bin(keys[i], pass, sel.threshold);
        const unsigned same = __match_any_sync(__activemask(), bin);  // lanes with one bin add once
        if (bin >= 0 && (threadIdx.x & 31) == __ffs(same) - 1) atomicAdd(&sh.hist[bin], __popc(same));
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        topk_select_bin(sel, sh.hist, pass);
        sh.sel = sel;
      }
      __syncthreads();
      sel = sh.sel;
    }
    return sel;
  }

  // topk_compact: selected entry j goes to out_cols[j] (and out_keys[j] unless null); in place
  // allowed (each tile is read before any of its entries is written, and positions never pass
  // their source).
  static __device__ __forceinline__ void compact(const TopkSelection& sel, const uint32_t* keys, const int32_t* cols, int64_t n,
                                 uint32_t* out_keys, int32_t* out_cols, Shared& sh) {
    static_assert(kThreads < (1 << 16), "greater/equal counts share one 32-bit scan value");
    int64_t greater_base = 0, equal_base = 0;
    for (int64_t t0 = 0; t0 < n; t0 += kThreads) {
      const int64_t i = t0 + threadIdx.x;
      bool gt = false, eq = false;
      uint32_t key = 0;
      int32_t col = -1;
      if (i < n) {
        key = keys[i];
        col = cols[i];
        gt = topk_greater(sel, key);
        eq = topk_equal(sel, key);
      }
      uint32_t prefix, total;
      Scan(sh.scan).ExclusiveSum((uint32_t{gt} << 16) | uint32_t{eq}, prefix, total);
      __syncthreads();
      if (gt || eq) {
        const int64_t pos = topk_position(sel, gt, greater_base + (prefix >> 16), equal_base + (prefix & 0xffffu));
        if (pos >= 0) {
          if (out_keys != nullptr) out_keys[pos] = key;
          out_cols[pos] = col;
        }
      }
      greater_base += total >> 16;
      equal_base += total & 0xffffu;
      __syncthreads();
    }
  }

  // stream_topk_reduce: the buffer [st.count] (2k or more finite keys) down to its k best.
  static __device__ __forceinline__ void reduce(TopkStream& st, uint32_t* keys, int32_t* cols, int64_t k, Shared& sh) {
    const TopkSelection sel = select(keys, st.count, k, sh);
    compact(sel, keys, cols, st.count, keys, cols, sh);
    st = {k, true, sel.threshold};  // exactly k taken: the buffer held 2k > k finite keys
  }

  // The row's result: its selected columns in column order to out [k] (already -1 filled).
  static __device__ __forceinline__ void finish(const TopkStream& st, const uint32_t* keys, const int32_t* cols, int64_t k,
                                int32_t* out, Shared& sh) {
    const TopkSelection sel = select(keys, st.count, k, sh);
    compact(sel, keys, cols, st.count, nullptr, out, sh);
  }
};

}  // namespace glm52::attention
