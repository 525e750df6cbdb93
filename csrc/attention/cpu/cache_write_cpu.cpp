// CPU twins of the paged cache writes: one token per slot, laid out as attention_cache.h says.
// Quantization uses quant_fp8.h's scale math, so codes match the CUDA kernels bit for bit.
#include "attention/attention_cache.h"
#include "attention/attention_checks.h"
#include "attention/attention_hadamard.h"
#include "attention/attention_rope.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

namespace glm52::attention {
namespace {

uint8_t e4m3_code(float v) { return at::Float8_e4m3fn(v).x; }

template <typename T>
void quantize_group(const T* x, int n, bool ue8m0, uint8_t* codes, float* scale) {
  float amax = 0.0f;
  for (int i = 0; i < n; ++i) amax = std::fmax(amax, std::fabs(static_cast<float>(x[i])));
  *scale = quant::group_scale(amax, ue8m0);
  for (int i = 0; i < n; ++i) codes[i] = e4m3_code(quant::scaled_for_e4m3(static_cast<float>(x[i]), *scale));
}

// k_pe [64] bf16 -> dst, rotated by turn [32, 2] when given (rounded back to bf16).
void write_rope(const at::BFloat16* k_pe, const float* turn, uint8_t* dst) {
  if (turn == nullptr) {
    std::memcpy(dst, k_pe, kRopeDim * 2);
    return;
  }
  at::BFloat16 rotated[kRopeDim];
  for (int i = 0; i < kRopeDim; i += 2) {
    float y0, y1;
    rope_rotate(static_cast<float>(k_pe[i]), static_cast<float>(k_pe[i + 1]), turn + i, y0, y1);
    rotated[i] = at::BFloat16(y0);
    rotated[i + 1] = at::BFloat16(y1);
  }
  std::memcpy(dst, rotated, kRopeDim * 2);
}

void mla_cache_write_cpu(const at::Tensor& kv, const at::Tensor& slots, at::Tensor& cache,
                         const std::optional<at::Tensor>& rope) {
  const bool fp8 = check_mla_cache_write(kv, slots, cache, rope);
  const int64_t num_blocks = cache.size(0), token_bytes = cache.size(-1);
  const auto* x = kv.const_data_ptr<at::BFloat16>();
  const float* turns = rope ? rope->const_data_ptr<float>() : nullptr;
  const int64_t* slot = slots.const_data_ptr<int64_t>();
  uint8_t* base = cache.mutable_data_ptr<uint8_t>();
  at::parallel_for(0, kv.size(0), 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const SlotRef s = resolve_slot(slot[t], num_blocks);
      if (!s.valid) continue;
      uint8_t* token = base + (s.block * kBlockTokens + s.offset) * token_bytes;
      const at::BFloat16* row = x + t * kv.stride(0);
      const float* turn = turns ? turns + t * kRopeDim : nullptr;
      if (!fp8) {
        std::memcpy(token, row, kValueDim * 2);
        write_rope(row + kValueDim, turn, token + kValueDim * 2);
        continue;
      }
      for (int g = 0; g < kFp8Groups; ++g) {
        float scale;
        quantize_group(row + g * kFp8GroupDim, kFp8GroupDim, false, token + g * kFp8GroupDim, &scale);
        std::memcpy(token + kMlaFp8ScaleOffset + 4 * g, &scale, 4);
      }
      write_rope(row + kValueDim, turn, token + kMlaFp8RopeOffset);
    }
  });
}

void indexer_cache_write_cpu(const at::Tensor& k, const at::Tensor& slots, at::Tensor& cache, bool scale_ue8m0,
                             const std::optional<at::Tensor>& rope, bool hadamard) {
  const int64_t rope_pairs = check_indexer_cache_write(k, slots, cache, rope);
  const float* turns = rope ? rope->const_data_ptr<float>() : nullptr;
  const int64_t num_blocks = cache.size(0);
  const int64_t* slot = slots.const_data_ptr<int64_t>();
  uint8_t* base = cache.mutable_data_ptr<uint8_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, k.scalar_type(), kIndexerCacheWriteOp, [&] {
    const scalar_t* x = k.const_data_ptr<scalar_t>();
    at::parallel_for(0, k.size(0), 64, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const SlotRef s = resolve_slot(slot[t], num_blocks);
        if (!s.valid) continue;
        // The key with its leading pairs rotated (and rounded to k's dtype, as the model stores it).
        scalar_t key[kIndexDim];
        std::memcpy(key, x + t * k.stride(0), sizeof(key));
        for (int64_t p = 0; p < rope_pairs; ++p) {
          float y0, y1;
          rope_rotate(static_cast<float>(key[2 * p]), static_cast<float>(key[2 * p + 1]),
                      turns + (t * rope_pairs + p) * 2, y0, y1);
          key[2 * p] = static_cast<scalar_t>(y0);
          key[2 * p + 1] = static_cast<scalar_t>(y1);
        }
        float scale;
        if (hadamard) {
          float rotated[kIndexDim];
          for (int i = 0; i < kIndexDim; ++i) rotated[i] = static_cast<float>(key[i]);
          hadamard_rotate_inplace(rotated, kIndexDim);
          quantize_group(rotated, kIndexDim, scale_ue8m0, base + index_code_offset(s), &scale);
        } else {
          quantize_group(key, kIndexDim, scale_ue8m0, base + index_code_offset(s), &scale);
        }
        std::memcpy(base + index_scale_offset(s), &scale, 4);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("mla_cache_write", &mla_cache_write_cpu);
  m.impl("indexer_cache_write", &indexer_cache_write_cpu);
}

}  // namespace glm52::attention
