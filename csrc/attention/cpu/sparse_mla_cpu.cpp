// CPU twin of sparse MLA (prefill and decode share it: both attend over an array of token rows in
// the MLA cache byte layout; prefill's kv [L, 576] bf16 is that array in the BF16 format). Keys
// are visited in tiles of kSparseTile selected indices with the online softmax of
// attention_softmax.h, as the CUDA kernel does. Split-KV decode (attention_split.h) runs the same
// per-row code over each piece's key range and merges the pieces by LSE.
#include "attention/attention_cache.h"
#include "attention/attention_checks.h"
#include "attention/attention_softmax.h"
#include "attention/attention_split.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace glm52::attention {
namespace {

constexpr int kSparseTile = 64;
static_assert(kSplitBlock % kSparseTile == 0, "a split piece starts on a tile boundary, as in the CUDA kernels");

// Buffers of one task; after attend_range, acc holds each head's unnormalized output and state
// its softmax state.
struct SparseScratch {
  explicit SparseScratch(int64_t heads)
      : keys(kSparseTile * kLatentDim), qf(heads * kLatentDim), acc(heads * kValueDim), x(kSparseTile),
        state(heads) {}
  std::vector<float> keys, qf, acc, x;
  std::vector<SoftmaxState> state;
};

// One query row (all heads) over its selected indices [key_begin, key_end) of `num_tokens` token rows.
void attend_range(const at::BFloat16* q, const uint8_t* tokens, int64_t num_tokens, bool fp8, const int32_t* indices,
                  int64_t key_begin, int64_t key_end, int64_t heads, float x_scale, SparseScratch& sc) {
  const int64_t token_bytes = mla_token_bytes(fp8);
  for (int64_t i = 0; i < heads * kLatentDim; ++i) sc.qf[i] = static_cast<float>(q[i]);
  std::fill(sc.acc.begin(), sc.acc.end(), 0.0f);
  std::fill(sc.state.begin(), sc.state.end(), softmax_init());
  for (int64_t j0 = key_begin; j0 < key_end; j0 += kSparseTile) {
    const int64_t n = std::min<int64_t>(kSparseTile, key_end - j0);
    bool valid[kSparseTile];
    for (int64_t j = 0; j < n; ++j) {
      const int64_t idx = indices[j0 + j];
      valid[j] = idx >= 0 && idx < num_tokens;
      if (!valid[j]) continue;
      const uint8_t* token = tokens + idx * token_bytes;
      for (int i = 0; i < kLatentDim; ++i) sc.keys[j * kLatentDim + i] = mla_token_elem(token, i, fp8);
    }
    for (int64_t h = 0; h < heads; ++h) {
      float tile_max = neg_inf();
      for (int64_t j = 0; j < n; ++j) {
        sc.x[j] = neg_inf();
        if (!valid[j]) continue;
        float dot = 0.0f;
        for (int i = 0; i < kLatentDim; ++i) dot += sc.qf[h * kLatentDim + i] * sc.keys[j * kLatentDim + i];
        sc.x[j] = dot * x_scale;
        tile_max = std::max(tile_max, sc.x[j]);
      }
      SoftmaxState& st = sc.state[h];
      const float m_new = softmax_next_max(st, tile_max);
      const float alpha = softmax_rescale(st.m, m_new);
      float* a = sc.acc.data() + h * kValueDim;
      for (int c = 0; c < kValueDim; ++c) a[c] *= alpha;
      st.l *= alpha;
      for (int64_t j = 0; j < n; ++j) {
        const float p = softmax_weight(sc.x[j], m_new);
        if (p == 0.0f) continue;
        st.l += p;
        for (int c = 0; c < kValueDim; ++c) a[c] += p * sc.keys[j * kLatentDim + c];
      }
      st.m = m_new;
    }
  }
}

// The normalized outputs [heads, 512] (bf16: the op's output; fp32: a split's partial) and lse [heads].
template <typename Out>
void write_row(const SparseScratch& sc, int64_t heads, Out* out, float* lse) {
  for (int64_t h = 0; h < heads; ++h) {
    const float inv = softmax_out_scale(sc.state[h]);
    for (int c = 0; c < kValueDim; ++c) out[h * kValueDim + c] = static_cast<Out>(sc.acc[h * kValueDim + c] * inv);
    lse[h] = softmax_lse(sc.state[h]);
  }
}

// rows x heads queries; query r attends to indices[r, :topk] of `num_tokens` token rows.
void sparse_mla_cpu(const at::BFloat16* q, const uint8_t* tokens, int64_t num_tokens, bool fp8,
                    const int32_t* indices, int64_t rows, int64_t heads, int64_t topk, float sm_scale,
                    at::BFloat16* out, float* lse) {
  at::parallel_for(0, rows, 1, [&](int64_t r0, int64_t r1) {
    SparseScratch sc(heads);
    for (int64_t r = r0; r < r1; ++r) {
      attend_range(q + r * heads * kLatentDim, tokens, num_tokens, fp8, indices + r * topk, 0, topk, heads,
                   sm_scale * kLog2e, sc);
      write_row(sc, heads, out + r * heads * kValueDim, lse + r * heads);
    }
  });
}

// Split-KV decode (attention_split.h), the CUDA kernels' schedule: task (part p, query token s) runs
// the pieces of part p for token s of each of its batch rows, writing a row in one piece straight
// to out/lse and the others to the workspace's partial slots; then each row with several pieces
// is merged by LSE.
void sparse_mla_split_cpu(const at::BFloat16* q, const uint8_t* tokens, int64_t num_tokens, bool fp8,
                          const int32_t* indices, int64_t batch, int64_t sq, int64_t heads, int64_t topk,
                          float sm_scale, const int32_t* meta, int64_t parts, const int32_t* num_splits,
                          uint8_t* workspace, at::BFloat16* out, float* lse) {
  const int64_t max_slots = split_max_slots(batch, parts);
  float* part_out = reinterpret_cast<float*>(workspace);  // [max_slots, sq, heads, 512]
  float* part_lse = reinterpret_cast<float*>(workspace + split_workspace_lse_offset(batch, sq, heads, parts));
  at::parallel_for(0, parts * sq, 1, [&](int64_t t0, int64_t t1) {
    SparseScratch sc(heads);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t p = t / sq, s = t % sq;
      const int32_t* m = meta + p * kSplitMetaInts;
      const SplitRows part = split_part_rows(m, batch);
      for (int64_t b = part.first; b <= part.last; ++b) {
        const SplitPiece piece = split_piece(m, num_splits, b, topk, max_slots);
        const int64_t r = b * sq + s;
        attend_range(q + r * heads * kLatentDim, tokens, num_tokens, fp8, indices + r * topk, piece.key_begin,
                     piece.key_end, heads, sm_scale * kLog2e, sc);
        if (piece.slot < 0) {
          write_row(sc, heads, out + r * heads * kValueDim, lse + r * heads);
        } else {
          const int64_t pr = piece.slot * sq + s;
          write_row(sc, heads, part_out + pr * heads * kValueDim, part_lse + pr * heads);
        }
      }
    }
  });
  at::parallel_for(0, batch * sq, 1, [&](int64_t r0, int64_t r1) {
    std::vector<float> merged(kValueDim);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / sq, s = r % sq;
      const SplitSlots slots = split_row_slots(num_splits, b, max_slots);
      if (slots.count <= 1) continue;
      for (int64_t h = 0; h < heads; ++h) {
        auto entry = [&](int64_t i) { return (slots.first + i) * sq * heads + s * heads + h; };
        float lse_max = neg_inf();
        for (int64_t i = 0; i < slots.count; ++i) lse_max = std::max(lse_max, part_lse[entry(i)]);
        std::fill(merged.begin(), merged.end(), 0.0f);
        float weight_sum = 0.0f;
        for (int64_t i = 0; i < slots.count; ++i) {
          const float w = lse_merge_weight(part_lse[entry(i)], lse_max);
          if (w == 0.0f) continue;
          weight_sum += w;
          const float* o = part_out + entry(i) * kValueDim;
          for (int c = 0; c < kValueDim; ++c) merged[c] += w * o[c];
        }
        const float inv = weight_sum > 0.0f ? 1.0f / weight_sum : 0.0f;
        for (int c = 0; c < kValueDim; ++c)
          out[(r * heads + h) * kValueDim + c] = static_cast<at::BFloat16>(merged[c] * inv);
        lse[r * heads + h] = lse_merge_total(lse_max, weight_sum);
      }
    }
  });
}

void sparse_mla_decode_metadata_out_cpu(const at::Tensor& row_topk, int64_t num_sm_parts, at::Tensor& meta,
                                        at::Tensor& num_splits) {
  check_decode_metadata(row_topk, num_sm_parts);
  check_decode_metadata_out(row_topk, num_sm_parts, meta, num_splits);
  const int64_t rows = row_topk.size(0);
  const int32_t* topk = row_topk.const_data_ptr<int32_t>();
  int32_t* splits = num_splits.mutable_data_ptr<int32_t>();
  // num_splits[1..rows] first holds the inclusive prefix sums of the row costs (the device kernel
  // does the same in place), then the prefix sums of the pieces.
  splits[0] = 0;
  int64_t total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    total += split_row_cost(topk[r]);
    splits[r + 1] = static_cast<int32_t>(total);
  }
  int32_t* m = meta.mutable_data_ptr<int32_t>();
  for (int64_t p = 0; p < num_sm_parts; ++p) split_plan_part(p, num_sm_parts, splits + 1, 1, topk, rows, m + p * kSplitMetaInts);
  const int64_t span = split_span(total, num_sm_parts);
  int64_t pieces = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t row_end = splits[r + 1];
    pieces += split_row_pieces(row_end - split_row_cost(topk[r]), row_end, span, num_sm_parts);
    splits[r + 1] = static_cast<int32_t>(pieces);
  }
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
                               double sm_scale, const std::optional<at::Tensor>& tile_scheduler_metadata,
                               const std::optional<at::Tensor>& num_splits, const std::optional<at::Tensor>& workspace,
                               at::Tensor& out, at::Tensor& lse) {
  const bool fp8 = check_sparse_decode(q, cache, indices);
  const int64_t parts = check_decode_plan(q, tile_scheduler_metadata, num_splits, workspace);
  check_sparse_outputs(q, out, lse, kSparseDecodeOp, "[B, sq, H, 512]", "[B, sq, H]");
  const auto* qp = q.const_data_ptr<at::BFloat16>();
  const uint8_t* tokens = cache.const_data_ptr<uint8_t>();
  const int64_t num_tokens = cache.size(0) * kBlockTokens;
  if (parts == 0) {
    sparse_mla_cpu(qp, tokens, num_tokens, fp8, indices.const_data_ptr<int32_t>(), q.size(0) * q.size(1), q.size(2),
                   indices.size(2), static_cast<float>(sm_scale), out.mutable_data_ptr<at::BFloat16>(),
                   lse.mutable_data_ptr<float>());
    return;
  }
  const at::Tensor scratch = workspace ? *workspace
                                       : at::empty({split_workspace_bytes(q.size(0), q.size(1), q.size(2), parts)},
                                                   q.options().dtype(at::kByte));
  sparse_mla_split_cpu(qp, tokens, num_tokens, fp8, indices.const_data_ptr<int32_t>(), q.size(0), q.size(1), q.size(2),
                       indices.size(2), static_cast<float>(sm_scale), tile_scheduler_metadata->const_data_ptr<int32_t>(),
                       parts, num_splits->const_data_ptr<int32_t>(), static_cast<uint8_t*>(scratch.data_ptr()),
                       out.mutable_data_ptr<at::BFloat16>(), lse.mutable_data_ptr<float>());
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("sparse_mla_prefill_out", &sparse_mla_prefill_out_cpu);
  m.impl("sparse_mla_decode_out", &sparse_mla_decode_out_cpu);
  m.impl("sparse_mla_decode_metadata_out", &sparse_mla_decode_metadata_out_cpu);
}

}  // namespace glm52::attention
