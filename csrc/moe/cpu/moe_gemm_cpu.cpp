// CPU twins of the FP8 block-scaled GEMMs (contiguous grouped, masked grouped, dense). One
// routine computes one expert's problem with the CUDA kernels' recipe: per 128-wide K block an
// fp32 dot of the e4m3 values, multiplied by a_scale * b_scale and added to an fp32 accumulator
// (promotion per K block, not one final rescale), BF16 out. Which rows form each expert's problem
// comes from moe_layout.h, as on the GPU.
#include "moe/moe_checks.h"
#include "moe/moe_layout.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>
#include <vector>

namespace glm52::moe {
namespace {

// e4m3 code -> float, for all 256 codes (decoding once per element, not per multiply).
const std::array<float, 256>& e4m3_values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int c = 0; c < 256; ++c) t[c] = static_cast<float>(c10::Float8_e4m3fn(static_cast<uint8_t>(c), c10::Float8_e4m3fn::from_bits()));
    return t;
  }();
  return table;
}

struct GemmOperands {
  const uint8_t* a;        // [rows of the whole a, k] e4m3 codes
  const float* a_scale;    // [rows of the whole a, ceil(k / 128)]
  const uint8_t* b;        // [n, k] e4m3 codes of this problem's expert
  const float* b_scale;    // [ceil(n / 128), ceil(k / 128)]
  at::BFloat16* out;       // [rows of the whole a, n]
  int64_t n, k;
};

// out[r, :] for r in [g.row0, g.row0 + g.rows): one problem of the grouped GEMM.
void gemm_problem_cpu(const GemmOperands& op, GroupRows g) {
  if (g.rows == 0 || op.n == 0) return;
  const auto& lut = e4m3_values();
  const int64_t n = op.n, k = op.k, kb = ceil_div(k, kScaleBlock);
  std::vector<float> b(n * k);
  for (int64_t i = 0; i < n * k; ++i) b[i] = lut[op.b[i]];
  at::parallel_for(g.row0, g.row0 + g.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> a(k);
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t i = 0; i < k; ++i) a[i] = lut[op.a[r * k + i]];
      const float* sa = op.a_scale + r * kb;
      for (int64_t c = 0; c < n; ++c) {
        const float* bc = b.data() + c * k;
        const float* sb = op.b_scale + (c / kScaleBlock) * kb;
        float acc = 0.0f;
        for (int64_t blk = 0; blk < kb; ++blk) {
          const int64_t k0 = blk * kScaleBlock, k1 = std::min(k, k0 + kScaleBlock);
          float partial = 0.0f;
          for (int64_t i = k0; i < k1; ++i) partial += a[i] * bc[i];
          acc += partial * (sa[blk] * sb[blk]);
        }
        op.out[r * n + c] = static_cast<at::BFloat16>(acc);
      }
    }
  });
}

GemmOperands operands(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b, const at::Tensor& b_scale,
                      int64_t expert, at::Tensor& out) {
  const int64_t n = b.size(-2), k = b.size(-1);
  return {static_cast<const uint8_t*>(a.const_data_ptr()), a_scale.const_data_ptr<float>(),
          static_cast<const uint8_t*>(b.const_data_ptr()) + expert * n * k,
          b_scale.const_data_ptr<float>() + expert * ceil_div(n, kScaleBlock) * ceil_div(k, kScaleBlock),
          out.mutable_data_ptr<at::BFloat16>(), n, k};
}

void fp8_grouped_gemm_contiguous_out_cpu(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                         const at::Tensor& b_scale, const at::Tensor& m_indices,
                                         const std::optional<at::Tensor>& workspace, at::Tensor& out) {
  check_contiguous_gemm(a, a_scale, b, b_scale, m_indices);
  check_gemm_out(kContiguousOp, out, {a.size(0), b.size(1)}, "[M, N]", a);
  check_gemm_workspace(kContiguousOp, workspace, a, b);
  const int64_t m = a.size(0), e_count = b.size(0), n = b.size(1);
  const int32_t* idx = m_indices.const_data_ptr<int32_t>();
  // Each expert's first row and row count, as the CUDA kernel gathers them from m_indices.
  std::vector<int64_t> first(e_count, m);
  std::vector<int32_t> count(e_count, 0);
  for (int64_t r = 0; r < m; ++r) {
    GLM52_CHECK_ARG(idx[r] >= -1 && idx[r] < e_count, kContiguousOp, "m_indices",
                    "must hold experts in [0, E = ", e_count, ") or -1 (padding), got ", idx[r], " at row ", r);
    if (idx[r] < 0) continue;
    first[idx[r]] = std::min(first[idx[r]], r);
    ++count[idx[r]];
  }
  for (int64_t e = 0; e < e_count; ++e) {
    if (!count[e]) continue;
    GLM52_CHECK_ARG(first[e] % kGroupedGemmMAlignment == 0, kContiguousOp, "m_indices", "must start each expert's rows at a multiple of ",
                    kGroupedGemmMAlignment, " (grouped_gemm_m_alignment()), expert ", e, " starts at row ", first[e]);
    for (int64_t r = first[e]; r < first[e] + count[e]; ++r)
      GLM52_CHECK_ARG(idx[r] == e, kContiguousOp, "m_indices", "must keep each expert's rows contiguous, expert ", e,
                      " has rows from ", first[e], " with row ", r, " holding ", idx[r]);
  }
  auto* o = out.mutable_data_ptr<at::BFloat16>();
  for (int64_t r = 0; r < m; ++r)
    if (idx[r] < 0) std::fill(o + r * n, o + (r + 1) * n, at::BFloat16(0.0f));
  for (int64_t e = 0; e < e_count; ++e)
    gemm_problem_cpu(operands(a, a_scale, b, b_scale, e, out), contiguous_group_rows(first[e], count[e]));
}

void fp8_grouped_gemm_masked_out_cpu(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b,
                                     const at::Tensor& b_scale, const at::Tensor& masked_m, int64_t expected_m,
                                     const std::optional<at::Tensor>& workspace, at::Tensor& out) {
  check_masked_gemm(a, a_scale, b, b_scale, masked_m, expected_m);
  check_gemm_out(kMaskedOp, out, {a.size(0), a.size(1), b.size(1)}, "[E, m_max, N]", a);
  check_gemm_workspace(kMaskedOp, workspace, a, b);
  const int64_t e_count = a.size(0), m_max = a.size(1);
  const int32_t* counts = masked_m.const_data_ptr<int32_t>();
  for (int64_t e = 0; e < e_count; ++e)
    GLM52_CHECK_ARG(counts[e] >= 0 && counts[e] <= m_max, kMaskedOp, "masked_m", "must hold counts in [0, m_max = ", m_max,
                    "], got ", counts[e], " for expert ", e);
  for (int64_t e = 0; e < e_count; ++e)
    gemm_problem_cpu(operands(a, a_scale, b, b_scale, e, out), masked_group_rows(e, counts[e], m_max));
}

void fp8_gemm_out_cpu(const at::Tensor& a, const at::Tensor& a_scale, const at::Tensor& b, const at::Tensor& b_scale,
                      const std::optional<at::Tensor>& workspace, at::Tensor& out) {
  check_dense_gemm(a, a_scale, b, b_scale);
  check_gemm_out(kDenseOp, out, {a.size(0), b.size(0)}, "[M, N]", a);
  check_gemm_workspace(kDenseOp, workspace, a, b);
  gemm_problem_cpu(operands(a, a_scale, b, b_scale, 0, out), GroupRows{0, a.size(0)});
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("fp8_grouped_gemm_contiguous_out", &fp8_grouped_gemm_contiguous_out_cpu);
  m.impl("fp8_grouped_gemm_masked_out", &fp8_grouped_gemm_masked_out_cpu);
  m.impl("fp8_gemm_out", &fp8_gemm_out_cpu);
}

}  // namespace glm52::moe
