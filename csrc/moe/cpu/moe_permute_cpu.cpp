// CPU twins of moe_permute and moe_unpermute. moe_permute runs the CUDA kernels' phases with
// moe_layout.h's index math (chunk ranges, chunk-count scan, segment starts, the expert of each
// permuted row); within a chunk the CUDA rank kernel's warp steps give the same order as this
// sequential walk: (token, slot) order.
#include "moe/moe_checks.h"
#include "moe/moe_layout.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <vector>

namespace glm52::moe {
namespace {

// Both layouts: contiguous (segments from segment_starts, m_indices written) or masked
// (segments at e * m_max with m_max = T, m_indices == nullptr, count is masked_m).
void permute_cpu(const at::Tensor& x, const std::optional<at::Tensor>& x_scale, const at::Tensor& ids,
                 int64_t num_experts, int64_t alignment, bool masked, at::Tensor& out, at::Tensor& out_scale,
                 int32_t* m_indices, int32_t* count, at::Tensor& row_map) {
  const int64_t routed = ids.numel(), top_k = ids.size(1), rows = masked ? num_experts * x.size(0) : out.size(0);
  const int64_t row_bytes = x.size(1) * x.element_size(), groups = x_scale ? x_scale->size(1) : 0;
  const int32_t* id = ids.const_data_ptr<int32_t>();
  // The CUDA kernels' phases, chunk by chunk: count, scan the chunk counts, lay out the
  // segments, then rank each chunk's entries in order from its chunk's prefix.
  const int64_t chunks = ceil_div(routed, kPermuteChunk);
  std::vector<int32_t> chunk_prefix(chunks * num_experts, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t begin, end;
    permute_chunk_range(c, routed, &begin, &end);
    for (int64_t i = begin; i < end; ++i)
      if (const int e = local_expert(id[i], num_experts); e >= 0) ++chunk_prefix[c * num_experts + e];
  }
  for (int64_t e = 0; e < num_experts; ++e) count[e] = chunk_column_scan(chunk_prefix.data(), chunks, num_experts, e);
  std::vector<int64_t> seg_start(num_experts + 1);
  if (masked) {
    for (int64_t e = 0; e < num_experts; ++e)
      GLM52_CHECK_ARG(count[e] <= x.size(0), kPermuteMaskedOp, "ids", "routes ", count[e], " entries to expert ", e,
                      ", more than the T = ", x.size(0), " rows of the masked layout (repeated experts in a token?)");
    masked_segment_starts(num_experts, x.size(0), seg_start.data());
  } else {
    segment_starts(count, num_experts, alignment, seg_start.data());
  }

  int32_t* map = row_map.mutable_data_ptr<int32_t>();
  std::vector<int64_t> cursor(num_experts);
  for (int64_t c = 0; c < chunks; ++c) {
    int64_t begin, end;
    permute_chunk_range(c, routed, &begin, &end);
    for (int64_t e = 0; e < num_experts; ++e) cursor[e] = seg_start[e] + chunk_prefix[c * num_experts + e];
    for (int64_t i = begin; i < end; ++i) {
      const int e = local_expert(id[i], num_experts);
      map[i] = e < 0 ? -1 : static_cast<int32_t>(cursor[e]++);
    }
  }
  const auto* src = static_cast<const char*>(x.const_data_ptr());
  auto* dst = static_cast<char*>(out.mutable_data_ptr());
  const float* src_scale = x_scale ? x_scale->const_data_ptr<float>() : nullptr;
  float* dst_scale = out_scale.mutable_data_ptr<float>();
  at::parallel_for(0, routed, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (map[i] < 0) continue;
      const int64_t t = i / top_k;
      std::memcpy(dst + map[i] * row_bytes, src + t * row_bytes, row_bytes);
      if (groups) std::memcpy(dst_scale + map[i] * groups, src_scale + t * groups, groups * sizeof(float));
    }
  });
  if (m_indices)
    for (int64_t r = 0; r < rows; ++r) m_indices[r] = segment_row_expert(r, seg_start.data(), count, num_experts);
}

void moe_permute_out_cpu(const at::Tensor& x, const std::optional<at::Tensor>& x_scale, const at::Tensor& ids,
                         int64_t num_experts, int64_t alignment, const std::optional<at::Tensor>& workspace,
                         at::Tensor& out, at::Tensor& out_scale, at::Tensor& m_indices, at::Tensor& row_map) {
  check_permute_out(x, x_scale, ids, num_experts, alignment, out, out_scale, m_indices, row_map);
  check_permute_workspace(kPermuteOp, workspace, x, ids, num_experts);
  std::vector<int32_t> count(num_experts);
  permute_cpu(x, x_scale, ids, num_experts, alignment, false, out, out_scale, m_indices.mutable_data_ptr<int32_t>(),
              count.data(), row_map);
}

void moe_permute_masked_out_cpu(const at::Tensor& x, const std::optional<at::Tensor>& x_scale, const at::Tensor& ids,
                                int64_t num_experts, const std::optional<at::Tensor>& workspace, at::Tensor& out,
                                at::Tensor& out_scale, at::Tensor& masked_m, at::Tensor& row_map) {
  check_permute_masked_out(x, x_scale, ids, num_experts, out, out_scale, masked_m, row_map);
  check_permute_workspace(kPermuteMaskedOp, workspace, x, ids, num_experts);
  permute_cpu(x, x_scale, ids, num_experts, 1, true, out, out_scale, nullptr, masked_m.mutable_data_ptr<int32_t>(),
              row_map);
}

template <typename T>
void unpermute_cpu(const T* y, const float* w, const int32_t* map, T* out, int64_t tokens, int64_t top_k, int64_t n) {
  at::parallel_for(0, tokens, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(n);
    for (int64_t t = begin; t < end; ++t) {
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t j = 0; j < top_k; ++j) {  // slot order: the sum is deterministic
        const int32_t r = map[t * top_k + j];
        if (r < 0) continue;
        const float wj = w[t * top_k + j];
        for (int64_t c = 0; c < n; ++c) acc[c] += wj * static_cast<float>(y[r * n + c]);
      }
      for (int64_t c = 0; c < n; ++c) out[t * n + c] = static_cast<T>(acc[c]);
    }
  });
}

void moe_unpermute_out_cpu(const at::Tensor& y, const at::Tensor& weights, const at::Tensor& row_map, at::Tensor& out) {
  check_unpermute(y, weights, row_map);
  check_unpermute_out(y, weights, out);
  const int32_t* map = row_map.const_data_ptr<int32_t>();
  for (int64_t i = 0; i < row_map.numel(); ++i)
    GLM52_CHECK_ARG(map[i] >= -1 && map[i] < y.size(0), kUnpermuteOp, "row_map", "must hold rows of 'y' in [0, ", y.size(0),
                    ") or -1 (dropped), got ", map[i], " at flat index ", i);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), kUnpermuteOp, [&] {
    unpermute_cpu<scalar_t>(y.const_data_ptr<scalar_t>(), weights.const_data_ptr<float>(), map,
                            out.mutable_data_ptr<scalar_t>(), weights.size(0), weights.size(1), y.size(1));
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("moe_permute_out", &moe_permute_out_cpu);
  m.impl("moe_permute_masked_out", &moe_permute_masked_out_cpu);
  m.impl("moe_unpermute_out", &moe_unpermute_out_cpu);
}

}  // namespace glm52::moe
