// Streaming top-k (indexer_topk, indexer_topk_paged), shared by the CPU twin and the CUDA kernel:
// the k largest finite scores of a row whose scores arrive tile by tile in increasing column order,
// without ever holding the whole row.
//
// A row keeps a candidate buffer (keys of attention_topk.h and their columns, in column order) of
// at most 2k + tile entries. A score is admitted while fewer than k candidates were ever reduced
// (`full` false) or when its key is strictly above `threshold`, the k-th largest key seen so far.
// When the buffer holds 2k or more, the radix selection of attention_topk.h reduces it to its k
// best (ties to the lower column, which is the lower buffer position) and `threshold` becomes the
// k-th largest key. The end is one more selection over the buffer, written in column order.
//
// Exact: order the scores by (key descending, column ascending). A dropped score has k scores
// ahead of it among the columns seen so far (in the buffer at the reduction), so it is not in the
// row's top k; a later score equal to `threshold` has a higher column than the k held scores that
// are >= it, so it loses every tie. Hence the result equals topk_indices of the whole row.
//
// The candidates of several shards of one row (context parallelism: each rank's top-k over its own
// keys) merge the same way: concatenated in global column order, one selection (merge_topk_candidates).
#pragma once

#include "attention/attention_topk.h"

namespace glm52::attention {

// Largest k the streaming selection accepts: the CUDA kernel keeps 2k + tile candidates (8 B each)
// and the row's decoded q in shared memory.
constexpr int64_t kStreamTopkMaxK = 8192;
constexpr int kStreamTopkTile = 256;  // keys scored per step (one per thread of the CUDA kernel)

GLM52_HD constexpr int64_t stream_topk_capacity(int64_t k) { return 2 * k + kStreamTopkTile; }

struct TopkStream {
  int64_t count;       // candidates in the buffer
  bool full;           // a reduction happened: `threshold` is the k-th largest key seen
  uint32_t threshold;
};

GLM52_HD TopkStream stream_topk_begin() { return {0, false, 0u}; }

GLM52_HD bool stream_topk_admits(const TopkStream& s, float score) {
  return topk_is_finite(score) && (!s.full || topk_key(score) > s.threshold);
}

// Whether the buffer must be reduced to k before the next tile is appended.
GLM52_HD bool stream_topk_should_reduce(const TopkStream& s, int64_t k) { return s.count >= 2 * k; }

// The selection over n finite keys (serial histograms; the CUDA kernel builds them block-wide and
// calls topk_select_bin itself). hist: kTopkBins scratch.
GLM52_HD TopkSelection topk_select_keys(const uint32_t* keys, int64_t n, int64_t k, uint32_t* hist) {
  TopkSelection sel = topk_begin(n, k);
  for (int pass = 0; !sel.take_all && pass < kTopkPasses; ++pass) {
    for (int b = 0; b < kTopkBins; ++b) hist[b] = 0;
    for (int64_t i = 0; i < n; ++i) {
      const int bin = topk_bin(keys[i], pass, sel.threshold);
      if (bin >= 0) ++hist[bin];
    }
    topk_select_bin(sel, hist, pass);
  }
  return sel;
}

// Serial order-preserving compaction of a selection over (keys, cols) [n]: entry j of the selected
// set goes to out_cols[j] (and out_keys[j] unless null). In place is allowed (outputs never pass
// their inputs). Returns the number written.
GLM52_HD int64_t topk_compact(const TopkSelection& sel, const uint32_t* keys, const int32_t* cols, int64_t n,
                              uint32_t* out_keys, int32_t* out_cols) {
  int64_t greater = 0, equal = 0, written = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t key = keys[i];
    const int32_t col = cols[i];
    const bool gt = topk_greater(sel, key), eq = topk_equal(sel, key);
    if (!gt && !eq) continue;
    const int64_t pos = topk_position(sel, gt, greater, equal);
    if (pos >= 0) {
      if (out_keys != nullptr) out_keys[pos] = key;
      out_cols[pos] = col;
      ++written;
    }
    greater += gt;
    equal += eq;
  }
  return written;
}

// Reduce the buffer to its k best; the state's threshold becomes the k-th largest key.
GLM52_HD void stream_topk_reduce(TopkStream& s, uint32_t* keys, int32_t* cols, int64_t k, uint32_t* hist) {
  const TopkSelection sel = topk_select_keys(keys, s.count, k, hist);
  s.count = topk_compact(sel, keys, cols, s.count, keys, cols);
  s.full = true;
  s.threshold = sel.threshold;
}

}  // namespace glm52::attention
