// Launchers of the quantization kernels (quant_fp8_kernels.cu). Framework-free: raw pointers,
// sizes and a stream; the torch-facing checks live in quant_checks.h.
#pragma once

#include "common/dtype.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace glm52::quant {

struct QuantFp8Args {
  const void* x;         // [rows, cols] x_dtype, unit column stride
  int64_t x_row_stride;  // elements between rows of x
  DType x_dtype;
  uint8_t* q;            // [rows, cols] e4m3 codes, contiguous
  float* scale;          // [rows, ceil(cols / group_size)], contiguous
  int64_t rows, cols, group_size;
  bool scale_ue8m0;
};

struct DequantFp8BlockArgs {
  const uint8_t* w;        // [batch, rows, cols] e4m3 codes, contiguous
  const float* scale_inv;  // [batch, ceil(rows / block_rows), ceil(cols / block_cols)]
  void* out;               // [batch, rows, cols] out_dtype, contiguous
  DType out_dtype;
  int64_t batch, rows, cols, block_rows, block_cols;
};

// Both return the launch error (cudaSuccess when queued); empty inputs launch nothing.
cudaError_t launch_quant_fp8_per_token_group(const QuantFp8Args& args, cudaStream_t stream);
cudaError_t launch_dequant_fp8_block(const DequantFp8BlockArgs& args, cudaStream_t stream);

}  // namespace glm52::quant
