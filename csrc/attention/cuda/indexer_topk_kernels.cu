// CUDA kernel of the fused indexer top-k: one CTA per query row streams the row's keys in tiles of
// kStreamTopkTile (one key per thread, scored by indexer_score.cuh, the bits of the SIMT
// indexer_logits kernel) into a running candidate buffer in shared memory; the [rows, L] scores are
// never written. Admission, reduction trigger, bin choice and output positions are
// attention_topk_stream.h / attention_topk.h's (the CPU twin runs the same functions serially): here
// the histograms are block-wide and compaction is an order-preserving block scan.
//
// Shared memory: the row's q [H, 128] fp32 and 2k + 256 candidates (8 B each): at most
// 64 KB + 133 KB for H = 128, k = 8192.
// Not on tensor cores: the QGMMA logits tile (indexer_qgmma_kernels.cu) would feed this selection
// unchanged; one CTA per row also leaves most SMs idle for decode-sized batches (a split of the key
// range over CTAs merged like context-parallel shards is the next step).
#include "attention/attention_topk_stream.h"
#include "attention/cuda/indexer_keys.cuh"
#include "attention/cuda/indexer_score.cuh"
#include "attention/cuda/indexer_topk_launch.h"

#include <cub/block/block_scan.cuh>

namespace glm52::attention {
namespace {

constexpr int kThreads = kStreamTopkTile;
using Scan = cub::BlockScan<uint32_t, kThreads>;

struct SelectShared {
  typename Scan::TempStorage scan;
  uint32_t hist[kTopkBins];
  TopkSelection sel;
};

// Block-wide topk_select_keys over keys [n] (all finite); every thread returns the selection.
__device__ TopkSelection block_select(const uint32_t* keys, int64_t n, int64_t k, SelectShared& sh) {
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

// Block-wide topk_compact: selected entry j goes to out_cols[j] (and out_keys[j] unless null); in
// place allowed (each tile is read before any of its entries is written, and positions never pass
// their source).
__device__ void block_compact(const TopkSelection& sel, const uint32_t* keys, const int32_t* cols, int64_t n,
                              uint32_t* out_keys, int32_t* out_cols, SelectShared& sh) {
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

template <typename Keys>
__global__ void __launch_bounds__(kThreads) indexer_topk_kernel(IndexerTopkArgs a) {
  __shared__ SelectShared sh;
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
    if (stream_topk_should_reduce(st, a.k)) {
      const TopkSelection sel = block_select(cand_keys, st.count, a.k, sh);
      block_compact(sel, cand_keys, cand_cols, st.count, cand_keys, cand_cols, sh);
      st = {a.k, true, sel.threshold};  // exactly k taken: the buffer held 2k > k finite keys
    }
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
    Scan(sh.scan).ExclusiveSum(uint32_t{admitted}, prefix, total);
    if (admitted) {
      cand_keys[st.count + prefix] = topk_key(v);
      cand_cols[st.count + prefix] = static_cast<int32_t>(t);
    }
    st.count += total;
    __syncthreads();
  }
  const TopkSelection sel = block_select(cand_keys, st.count, a.k, sh);
  block_compact(sel, cand_keys, cand_cols, st.count, nullptr, out, sh);
}

template <typename Keys>
cudaError_t launch_typed(const IndexerTopkArgs& a, cudaStream_t stream) {
  const size_t smem = static_cast<size_t>(a.scores.heads) * kIndexDim * sizeof(float) +
                      static_cast<size_t>(stream_topk_capacity(a.k)) * (sizeof(uint32_t) + sizeof(int32_t));
  cudaError_t err = cudaFuncSetAttribute(indexer_topk_kernel<Keys>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  indexer_topk_kernel<Keys><<<static_cast<unsigned>(a.scores.rows), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_indexer_topk(const IndexerTopkArgs& a, cudaStream_t stream) {
  if (a.scores.rows == 0 || a.k == 0) return cudaSuccess;
  return a.scores.paged ? launch_typed<IndexerPagedKeys>(a, stream) : launch_typed<IndexerFlatKeys>(a, stream);
}

}  // namespace glm52::attention
