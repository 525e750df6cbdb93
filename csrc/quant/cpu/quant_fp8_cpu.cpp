// CPU twins of the quantization kernels. They walk each group exactly as a CUDA team does
// (plan_quant_team / team_vector_start), so the CPU tests exercise the kernels' index math too.
#include "quant/quant_checks.h"
#include "quant/quant_fp8.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <c10/util/bit_cast.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace glm52::quant {
namespace {

template <typename T>
void quant_groups_cpu(const T* x, int64_t row_stride, at::Float8_e4m3fn* q, float* scale,
                      int64_t rows, int64_t cols, int64_t group_size, bool ue8m0) {
  const QuantTeamPlan plan =
      plan_quant_team(sizeof(T), cols, group_size, row_stride, reinterpret_cast<uint64_t>(x),
                      reinterpret_cast<uint64_t>(q));
  const int64_t groups = rows * ceil_div(cols, group_size);
  // Visits the [begin, end) element runs of one group in the order the team's lanes own them.
  auto for_each_run = [&](const GroupSpan& span, auto&& fn) {
    if (!plan.vectorized) return fn(int64_t{0}, span.len);
    for (int lane = 0; lane < plan.lanes; ++lane)
      for (int v = 0; v < plan.vecs_per_lane; ++v) {
        int64_t start = team_vector_start(plan, lane, v);
        if (start < span.len) fn(start, start + plan.elems_per_vec);
      }
  };
  at::parallel_for(0, groups, 256, [&](int64_t begin, int64_t end) {
    for (int64_t g = begin; g < end; ++g) {
      const GroupSpan span = group_span(g, cols, group_size);
      const T* xg = x + span.row * row_stride + span.col0;
      at::Float8_e4m3fn* qg = q + span.row * cols + span.col0;
      float amax = 0.0f;
      for_each_run(span, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) amax = std::fmax(amax, std::fabs(static_cast<float>(xg[i])));
      });
      const float s = group_scale(amax, ue8m0);
      scale[span.row * ceil_div(cols, group_size) + span.group] = s;
      for_each_run(span, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) qg[i] = at::Float8_e4m3fn(scaled_for_e4m3(static_cast<float>(xg[i]), s));
      });
    }
  });
}

void quant_fp8_per_token_group_out_cpu(const at::Tensor& x, int64_t group_size, bool scale_ue8m0,
                                       at::Tensor& out, at::Tensor& out_scale) {
  check_quant_outputs(x, group_size, out, out_scale);
  if (x.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), kQuantOp, [&] {
    quant_groups_cpu<scalar_t>(x.const_data_ptr<scalar_t>(), x.stride(0),
                               out.mutable_data_ptr<at::Float8_e4m3fn>(), out_scale.mutable_data_ptr<float>(),
                               x.size(0), x.size(1), group_size, scale_ue8m0);
  });
}

// All 256 e4m3 codes as floats (every code is exact in fp32): one load instead of bit surgery.
const std::array<float, 256>& e4m3_table() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> t{};
    for (int code = 0; code < 256; ++code) t[code] = static_cast<float>(c10::bit_cast<at::Float8_e4m3fn>(uint8_t(code)));
    return t;
  }();
  return table;
}

template <typename OutT>
void dequant_blocks_cpu(const uint8_t* w, const float* scale_inv, OutT* out, int64_t batch, int64_t rows,
                        int64_t cols, int64_t block_rows, int64_t block_cols) {
  const auto& table = e4m3_table();
  at::parallel_for(0, batch * rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / rows, r = br % rows;
      for (int64_t c0 = 0; c0 < cols; c0 += block_cols) {
        const float s = scale_inv[block_scale_offset(b, r, c0, rows, cols, block_rows, block_cols)];
        const int64_t c1 = std::min(cols, c0 + block_cols);
        for (int64_t c = c0; c < c1; ++c) out[br * cols + c] = static_cast<OutT>(table[w[br * cols + c]] * s);
      }
    }
  });
}

void dequant_fp8_block_out_cpu(const at::Tensor& w, const at::Tensor& scale_inv, at::IntArrayRef block,
                               at::Tensor& out) {
  check_dequant_inputs(w, scale_inv, block);
  check_dequant_output(w, out);
  if (w.numel() == 0) return;
  const int64_t rows = w.size(-2), cols = w.size(-1), batch = w.numel() / (rows * cols);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), kDequantOp, [&] {
    dequant_blocks_cpu<scalar_t>(static_cast<const uint8_t*>(w.const_data_ptr()), scale_inv.const_data_ptr<float>(),
                                 out.mutable_data_ptr<scalar_t>(), batch, rows, cols, block[0], block[1]);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("quant_fp8_per_token_group_out", &quant_fp8_per_token_group_out_cpu);
  m.impl("dequant_fp8_block_out", &dequant_fp8_block_out_cpu);
}

}  // namespace glm52::quant
