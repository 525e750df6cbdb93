// CPU twin of sparse MLA (prefill and decode share it: both attend over an array of token rows in
// the MLA cache byte layout; prefill's kv [L, 576] bf16 is that array in the BF16 format). Keys
// are visited in tiles of kSparseTile selected indices with the online softmax of
// attention_softmax.h, as the CUDA kernel does.
#include "attention/attention_cache.h"
#include "attention/attention_checks.h"
#include "attention/attention_softmax.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace glm52::attention {
namespace {

constexpr int kSparseTile = 64;

// rows x heads queries; query r attends to indices[r, :topk] of `num_tokens` token rows.
void sparse_mla_cpu(const at::BFloat16* q, const uint8_t* tokens, int64_t num_tokens, bool fp8,
                    const int32_t* indices, int64_t rows, int64_t heads, int64_t topk, float sm_scale,
                    at::BFloat16* out, float* lse) {
  const int64_t token_bytes = mla_token_bytes(fp8);
  const float x_scale = sm_scale * kLog2e;
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> keys(kSparseTile * kLatentDim), qf(heads * kLatentDim), acc(heads * kValueDim);
    std::vector<float> x(kSparseTile);
    std::vector<SoftmaxState> state(heads);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t i = 0; i < heads * kLatentDim; ++i) qf[i] = static_cast<float>(q[r * heads * kLatentDim + i]);
      std::fill(acc.begin(), acc.end(), 0.0f);
      std::fill(state.begin(), state.end(), softmax_init());
      for (int64_t j0 = 0; j0 < topk; j0 += kSparseTile) {
        const int64_t n = std::min<int64_t>(kSparseTile, topk - j0);
        bool valid[kSparseTile];
        for (int64_t j = 0; j < n; ++j) {
          const int64_t idx = indices[r * topk + j0 + j];
          valid[j] = idx >= 0 && idx < num_tokens;
          if (!valid[j]) continue;
          const uint8_t* token = tokens + idx * token_bytes;
          for (int i = 0; i < kLatentDim; ++i) keys[j * kLatentDim + i] = mla_token_elem(token, i, fp8);
        }
        for (int64_t h = 0; h < heads; ++h) {
          float tile_max = neg_inf();
          for (int64_t j = 0; j < n; ++j) {
            x[j] = neg_inf();
            if (!valid[j]) continue;
            float dot = 0.0f;
            for (int i = 0; i < kLatentDim; ++i) dot += qf[h * kLatentDim + i] * keys[j * kLatentDim + i];
            x[j] = dot * x_scale;
            tile_max = std::max(tile_max, x[j]);
          }
          SoftmaxState& s = state[h];
          const float m_new = softmax_next_max(s, tile_max);
          const float alpha = softmax_rescale(s.m, m_new);
          float* a = acc.data() + h * kValueDim;
          for (int c = 0; c < kValueDim; ++c) a[c] *= alpha;
          s.l *= alpha;
          for (int64_t j = 0; j < n; ++j) {
            const float p = softmax_weight(x[j], m_new);
            if (p == 0.0f) continue;
            s.l += p;
            for (int c = 0; c < kValueDim; ++c) a[c] += p * keys[j * kLatentDim + c];
          }
          s.m = m_new;
        }
      }
      for (int64_t h = 0; h < heads; ++h) {
        const float inv = softmax_out_scale(state[h]);
        for (int c = 0; c < kValueDim; ++c)
          out[(r * heads + h) * kValueDim + c] = static_cast<at::BFloat16>(acc[h * kValueDim + c] * inv);
        lse[r * heads + h] = softmax_lse(state[h]);
      }
    }
  });
}

void sparse_mla_prefill_out_cpu(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& indices,
                                double sm_scale, at::Tensor& out, at::Tensor& lse) {
  check_sparse_prefill(q, kv, indices);
  check_sparse_outputs(q, out, lse, kSparsePrefillOp, "[S, H, 512]", "[S, H]");
  sparse_mla_cpu(q.const_data_ptr<at::BFloat16>(), static_cast<const uint8_t*>(kv.const_data_ptr()), kv.size(0),
                 false, indices.const_data_ptr<int32_t>(), q.size(0), q.size(1), indices.size(1),
                 static_cast<float>(sm_scale), out.mutable_data_ptr<at::BFloat16>(), lse.mutable_data_ptr<float>());
}

void sparse_mla_decode_out_cpu(const at::Tensor& q, const at::Tensor& cache, const at::Tensor& indices,
                               double sm_scale, at::Tensor& out, at::Tensor& lse) {
  const bool fp8 = check_sparse_decode(q, cache, indices);
  check_sparse_outputs(q, out, lse, kSparseDecodeOp, "[B, sq, H, 512]", "[B, sq, H]");
  sparse_mla_cpu(q.const_data_ptr<at::BFloat16>(), cache.const_data_ptr<uint8_t>(), cache.size(0) * kBlockTokens,
                 fp8, indices.const_data_ptr<int32_t>(), q.size(0) * q.size(1), q.size(2), indices.size(2),
                 static_cast<float>(sm_scale), out.mutable_data_ptr<at::BFloat16>(), lse.mutable_data_ptr<float>());
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("sparse_mla_prefill_out", &sparse_mla_prefill_out_cpu);
  m.impl("sparse_mla_decode_out", &sparse_mla_decode_out_cpu);
}

}  // namespace glm52::attention
