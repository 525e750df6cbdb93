// CUDA entry points of the quantization family: check, pick the stream, launch.
#include "common/launch_dtype.h"
#include "quant/cuda/quant_fp8_launch.h"
#include "quant/quant_checks.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace glm52::quant {
namespace {

void quant_fp8_per_token_group_out_cuda(const at::Tensor& x, int64_t group_size, bool scale_ue8m0,
                                        at::Tensor& out, at::Tensor& out_scale) {
  check_quant_outputs(x, group_size, out, out_scale);
  const c10::cuda::CUDAGuard guard(x.device());
  QuantFp8Args args{x.const_data_ptr(), x.stride(0), launch_dtype(x.scalar_type()),
                    static_cast<uint8_t*>(out.mutable_data_ptr()), out_scale.mutable_data_ptr<float>(),
                    x.size(0), x.size(1), group_size, scale_ue8m0};
  C10_CUDA_CHECK(launch_quant_fp8_per_token_group(args, c10::cuda::getCurrentCUDAStream()));
}

void dequant_fp8_block_out_cuda(const at::Tensor& w, const at::Tensor& scale_inv, at::IntArrayRef block,
                                at::Tensor& out) {
  check_dequant_inputs(w, scale_inv, block);
  check_dequant_output(w, out);
  const c10::cuda::CUDAGuard guard(w.device());
  const int64_t rows = w.size(-2), cols = w.size(-1);
  DequantFp8BlockArgs args{static_cast<const uint8_t*>(w.const_data_ptr()), scale_inv.const_data_ptr<float>(),
                           out.mutable_data_ptr(), launch_dtype(out.scalar_type()),
                           rows * cols == 0 ? 0 : w.numel() / (rows * cols), rows, cols, block[0], block[1]};
  C10_CUDA_CHECK(launch_dequant_fp8_block(args, c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CUDA, m) {
  m.impl("quant_fp8_per_token_group_out", &quant_fp8_per_token_group_out_cuda);
  m.impl("dequant_fp8_block_out", &dequant_fp8_block_out_cuda);
}

}  // namespace glm52::quant
