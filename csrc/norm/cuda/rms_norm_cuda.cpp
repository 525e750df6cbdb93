// CUDA entry points of the RMSNorm family: check, pick the stream, launch. No host sync.
#include "common/launch_dtype.h"
#include "norm/cuda/rms_norm_launch.h"
#include "norm/norm_checks.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace glm52::norm {
namespace {

void launch(const at::Tensor& x, const at::Tensor* residual, const at::Tensor& weight, double eps, at::Tensor& out,
            at::Tensor* sum) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t dim = x.size(-1);
  RmsNormArgs args{x.const_data_ptr(), residual ? residual->const_data_ptr() : nullptr, weight.const_data_ptr(),
                   out.mutable_data_ptr(), sum ? sum->mutable_data_ptr() : nullptr, launch_dtype(x.scalar_type()),
                   x.numel() / dim, dim, static_cast<float>(eps)};
  C10_CUDA_CHECK(launch_rms_norm(args, c10::cuda::getCurrentCUDAStream()));
}

void rms_norm_out_cuda(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& out) {
  check_norm_input(x, weight, eps, kRmsNormOp);
  check_like_x(out, x, kRmsNormOp, "out");
  launch(x, nullptr, weight, eps, out, nullptr);
}

void add_rms_norm_out_cuda(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps,
                           at::Tensor& out, at::Tensor& sum) {
  check_norm_input(x, weight, eps, kAddRmsNormOp);
  check_like_x(residual, x, kAddRmsNormOp, "residual");
  check_like_x(out, x, kAddRmsNormOp, "out");
  check_like_x(sum, x, kAddRmsNormOp, "sum");
  launch(x, &residual, weight, eps, out, &sum);
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CUDA, m) {
  m.impl("rms_norm_out", &rms_norm_out_cuda);
  m.impl("add_rms_norm_out", &add_rms_norm_out_cuda);
}

}  // namespace glm52::norm
