// CPU twin of topk_indices: the radix selection of attention_topk.h, pass by pass as the CUDA
// kernel runs it (histogram, bin choice, order-preserving compaction), so outputs are identical.
#include "attention/attention_checks.h"
#include "attention/attention_topk.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

namespace glm52::attention {
namespace {

void topk_row(const float* x, int64_t len, int64_t k, int32_t* out) {
  std::fill(out, out + k, -1);
  int64_t finite = 0;
  for (int64_t i = 0; i < len; ++i) finite += topk_is_finite(x[i]);
  TopkSelection sel = topk_begin(finite, k);
  for (int pass = 0; !sel.take_all && pass < kTopkPasses; ++pass) {
    uint32_t hist[kTopkBins] = {};
    for (int64_t i = 0; i < len; ++i) {
      if (!topk_is_finite(x[i])) continue;
      const int bin = topk_bin(topk_key(x[i]), pass, sel.threshold);
      if (bin >= 0) ++hist[bin];
    }
    topk_select_bin(sel, hist, pass);
  }
  int64_t greater = 0, equal = 0;
  for (int64_t i = 0; i < len; ++i) {
    if (!topk_is_finite(x[i])) continue;
    const uint32_t key = topk_key(x[i]);
    const bool gt = topk_greater(sel, key), eq = topk_equal(sel, key);
    if (!gt && !eq) continue;
    const int64_t pos = topk_position(sel, gt, greater, equal);
    if (pos >= 0) out[pos] = static_cast<int32_t>(i);
    greater += gt;
    equal += eq;
  }
}

void topk_indices_out_cpu(const at::Tensor& logits, int64_t k, const std::optional<at::Tensor>& lengths,
                          const std::optional<at::Tensor>& row_starts, at::Tensor& out) {
  check_topk(logits, k, lengths, row_starts);
  check_topk_out(logits, k, out);
  const int64_t rows = logits.size(0), cols = logits.size(1), row_stride = logits.stride(0);
  const float* x = logits.const_data_ptr<float>();
  const int32_t* len = lengths ? lengths->const_data_ptr<int32_t>() : nullptr;
  const int32_t* start = row_starts ? row_starts->const_data_ptr<int32_t>() : nullptr;
  int32_t* o = out.mutable_data_ptr<int32_t>();
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const TopkWindow w = topk_window(start, len, r, cols);
      topk_row(x + r * row_stride + w.start, w.len, k, o + r * k);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) { m.impl("topk_indices_out", &topk_indices_out_cpu); }

}  // namespace glm52::attention
