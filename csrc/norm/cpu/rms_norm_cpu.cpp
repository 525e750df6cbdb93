// CPU twin of the RMSNorm kernels: the same element ownership and fp32 summation order
// (norm/rms_norm.h), so both devices give the same bits.
#include "norm/norm_checks.h"
#include "norm/rms_norm.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <array>

namespace glm52::norm {
namespace {

// residual == nullptr: out = norm(x). Else sum = T(x + residual) (rounded as an unfused add would
// be) and out = norm(sum).
template <typename T>
void rms_norm_rows_cpu(const T* x, const T* residual, const T* weight, T* out, T* sum, int64_t rows, int64_t dim,
                       float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::array<float, kNormThreads> partials;
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * dim;
      const T* src = xr;
      if (residual != nullptr) {
        T* sr = sum + r * dim;
        for (int64_t i = 0; i < dim; ++i)
          sr[i] = static_cast<T>(static_cast<float>(xr[i]) + static_cast<float>(residual[r * dim + i]));
        src = sr;
      }
      for (int t = 0; t < kNormThreads; ++t) {
        float s = 0.0f;
        for (int64_t i = t; i < dim; i += kNormThreads) {
          const float v = static_cast<float>(src[i]);
          s += v * v;
        }
        partials[t] = s;
      }
      const float scale = rms_scale(block_tree_sum(partials.data()), dim, eps);
      T* o = out + r * dim;
      for (int64_t i = 0; i < dim; ++i)
        o[i] = static_cast<T>(static_cast<float>(src[i]) * scale * static_cast<float>(weight[i]));
    }
  });
}

void norm_rows(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, double eps,
               at::Tensor& out, at::Tensor* sum) {
  const int64_t dim = x.size(-1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    rms_norm_rows_cpu<scalar_t>(x.const_data_ptr<scalar_t>(), residual ? residual->const_data_ptr<scalar_t>() : nullptr,
                                weight.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                sum ? sum->mutable_data_ptr<scalar_t>() : nullptr, x.numel() / dim, dim,
                                static_cast<float>(eps));
  });
}

void rms_norm_out_cpu(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& out) {
  check_norm_input(x, weight, eps, kRmsNormOp);
  check_like_x(out, x, kRmsNormOp, "out");
  norm_rows(x, nullptr, weight, eps, out, nullptr);
}

void add_rms_norm_out_cpu(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps,
                          at::Tensor& out, at::Tensor& sum) {
  check_norm_input(x, weight, eps, kAddRmsNormOp);
  check_like_x(residual, x, kAddRmsNormOp, "residual");
  check_like_x(out, x, kAddRmsNormOp, "out");
  check_like_x(sum, x, kAddRmsNormOp, "sum");
  norm_rows(x, &residual, weight, eps, out, &sum);
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("rms_norm_out", &rms_norm_out_cpu);
  m.impl("add_rms_norm_out", &add_rms_norm_out_cpu);
}

}  // namespace glm52::norm
