// CPU twin of silu_and_mul_quant_fp8: silu_and_mul (moe_activation.h) per element in fp32, then
// the quantization op's own group scale and clamping (quant/quant_fp8.h).
#include "moe/moe_activation.h"
#include "moe/moe_checks.h"
#include "quant/quant_fp8.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace glm52::moe {
namespace {

template <typename T>
void silu_quant_cpu(const T* x, int64_t row_stride, at::Float8_e4m3fn* q, float* scale, int64_t rows, int64_t n,
                    int64_t group_size, bool ue8m0) {
  const int64_t groups = rows * ceil_div(n, group_size);
  at::parallel_for(0, groups, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> h(group_size);
    for (int64_t g = begin; g < end; ++g) {
      const quant::GroupSpan span = quant::group_span(g, n, group_size);
      const T* gate = x + span.row * row_stride + span.col0;
      float amax = 0.0f;
      for (int64_t i = 0; i < span.len; ++i) {
        h[i] = silu_and_mul(static_cast<float>(gate[i]), static_cast<float>(gate[i + n]));
        amax = std::fmax(amax, std::fabs(h[i]));
      }
      const float s = quant::group_scale(amax, ue8m0);
      scale[span.row * ceil_div(n, group_size) + span.group] = s;
      for (int64_t i = 0; i < span.len; ++i)
        q[span.row * n + span.col0 + i] = at::Float8_e4m3fn(quant::scaled_for_e4m3(h[i], s));
    }
  });
}

void silu_and_mul_quant_fp8_out_cpu(const at::Tensor& x, int64_t group_size, bool scale_ue8m0, at::Tensor& out,
                                    at::Tensor& out_scale) {
  check_silu_quant_out(x, group_size, out, out_scale);
  if (out.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), kSiluQuantOp, [&] {
    silu_quant_cpu<scalar_t>(x.const_data_ptr<scalar_t>(), x.stride(0), out.mutable_data_ptr<at::Float8_e4m3fn>(),
                             out_scale.mutable_data_ptr<float>(), x.size(0), x.size(1) / 2, group_size, scale_ue8m0);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) { m.impl("silu_and_mul_quant_fp8_out", &silu_and_mul_quant_fp8_out_cpu); }

}  // namespace glm52::moe
