// CPU twin of hadamard_rotate: attention_hadamard.h's butterfly, one row at a time, so the bits
// equal the CUDA kernel's.
#include "attention/attention_checks.h"
#include "attention/attention_hadamard.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

namespace glm52::attention {
namespace {

void hadamard_rotate_out_cpu(const at::Tensor& x, at::Tensor& out) {
  const int64_t rows = check_hadamard_rotate(x);
  check_hadamard_rotate_out(x, out);
  const int dim = static_cast<int>(x.size(-1));
  float* y = out.mutable_data_ptr<float>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), kHadamardRotateOp, [&] {
    const scalar_t* src = x.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* row = y + r * dim;
        for (int i = 0; i < dim; ++i) row[i] = static_cast<float>(src[r * dim + i]);
        hadamard_rotate_inplace(row, dim);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) { m.impl("hadamard_rotate_out", &hadamard_rotate_out_cpu); }

}  // namespace glm52::attention
