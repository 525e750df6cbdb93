// CPU twins of the speculative verification kernels. They share spec_verify.h with the CUDA
// kernels: the argmax order, the acceptance rules, the Philox draws and the inverse-CDF summation
// tree (replayed exactly), so both devices emit the same tokens for the same inputs and seed.
#include "spec/spec_checks.h"
#include "spec/spec_verify.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace glm52::spec {
namespace {

template <typename DraftT, typename T>
void verify_greedy_cpu(const DraftT* draft, const T* logits, int32_t* tokens, int32_t* num_emitted, int64_t batch,
                       int64_t n, int64_t vocab) {
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      int32_t* row_tokens = tokens + b * (n + 1);
      for (int64_t j = 0; j <= n; ++j) {
        const T* row = logits + (b * (n + 1) + j) * vocab;
        float best = -INFINITY;
        int64_t best_i = vocab;
        for (int64_t v = 0; v < vocab; ++v) {
          const float x = static_cast<float>(row[v]);
          if (argmax_better(x, v, best, best_i)) best = x, best_i = v;
        }
        row_tokens[j] = static_cast<int32_t>(best_i);
      }
      num_emitted[b] = greedy_accept(draft + b * n, row_tokens, n);
    }
  });
}

void spec_verify_greedy_out_cpu(const at::Tensor& draft, const at::Tensor& target_logits,
                                const std::optional<at::Tensor>& workspace, at::Tensor& tokens, at::Tensor& num_emitted) {
  check_greedy_inputs(draft, target_logits);
  check_verify_outputs(draft, tokens, num_emitted, kGreedyOp);
  const int64_t batch = draft.size(0), n = draft.size(1), vocab = target_logits.size(2);
  check_workspace(workspace, draft, vocab, false, kGreedyOp);
  AT_DISPATCH_INDEX_TYPES(draft.scalar_type(), kGreedyOp, [&] {
    using DraftT = index_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, target_logits.scalar_type(), kGreedyOp, [&] {
      verify_greedy_cpu(draft.const_data_ptr<DraftT>(), target_logits.const_data_ptr<scalar_t>(),
                        tokens.mutable_data_ptr<int32_t>(), num_emitted.mutable_data_ptr<int32_t>(), batch, n, vocab);
    });
  });
}

template <typename DraftT>
void verify_sampling_cpu(const DraftT* draft, const float* draft_probs, const float* target_probs, int32_t* tokens,
                         int32_t* num_emitted, int64_t batch, int64_t n, int64_t vocab, uint64_t seed,
                         uint64_t offset) {
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(2 * kScanTile + scan_tiles(vocab));
    for (int64_t b = begin; b < end; ++b) {
      const DraftT* d = draft + b * n;
      const float* p = target_probs + b * (n + 1) * vocab;
      const float* q = draft_probs ? draft_probs + b * n * vocab : nullptr;
      const int64_t k = accepted_prefix(d, q, p, n, vocab, seed, offset, static_cast<uint32_t>(b));
      const StopRow row = stop_row(d, q, p, k, n, vocab);
      const float u = philox_uniform(seed, offset, static_cast<uint32_t>(b), static_cast<uint32_t>(k), Draw::kSample);
      int64_t token = -1;
      for (WeightMode mode : {WeightMode::kResidual, WeightMode::kTarget}) {
        auto weight = [&](int64_t v) { return stop_weight(row, v, row.p[v], row.q ? row.q[v] : 0.0f, mode); };
        token = sample_inverse_cdf_host(weight, vocab, u, scratch.data());
        if (token >= 0) break;
      }
      int32_t* out = tokens + b * (n + 1);
      for (int64_t j = 0; j < k; ++j) out[j] = static_cast<int32_t>(d[j]);
      out[k] = static_cast<int32_t>(token < 0 ? 0 : token);
      for (int64_t j = k + 1; j <= n; ++j) out[j] = -1;
      num_emitted[b] = static_cast<int32_t>(k + 1);
    }
  });
}

void spec_verify_sampling_out_cpu(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                                  const at::Tensor& target_probs, int64_t seed, int64_t offset,
                                  const std::optional<at::Tensor>& workspace, at::Tensor& tokens,
                                  at::Tensor& num_emitted) {
  check_sampling_inputs(draft, draft_probs, target_probs);
  check_verify_outputs(draft, tokens, num_emitted, kSamplingOp);
  const int64_t batch = draft.size(0), n = draft.size(1), vocab = target_probs.size(2);
  check_workspace(workspace, draft, vocab, true, kSamplingOp);
  AT_DISPATCH_INDEX_TYPES(draft.scalar_type(), kSamplingOp, [&] {
    verify_sampling_cpu(draft.const_data_ptr<index_t>(),
                        draft_probs.has_value() ? draft_probs->const_data_ptr<float>() : nullptr,
                        target_probs.const_data_ptr<float>(), tokens.mutable_data_ptr<int32_t>(),
                        num_emitted.mutable_data_ptr<int32_t>(), batch, n, vocab, static_cast<uint64_t>(seed),
                        static_cast<uint64_t>(offset));
  });
}

// Seed and offset from one-element CPU tensors: read from memory here (the op's own read, not a
// dispatcher op), so the caller's step stays free of host reads.
void spec_verify_sampling_tensor_out_cpu(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                                         const at::Tensor& target_probs, const at::Tensor& seed,
                                         const at::Tensor& offset, const std::optional<at::Tensor>& workspace,
                                         at::Tensor& tokens, at::Tensor& num_emitted) {
  check_rng_tensors(draft, seed, offset);
  spec_verify_sampling_out_cpu(draft, draft_probs, target_probs, seed.const_data_ptr<int64_t>()[0],
                               offset.const_data_ptr<int64_t>()[0], workspace, tokens, num_emitted);
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) {
  m.impl("spec_verify_greedy_out", &spec_verify_greedy_out_cpu);
  m.impl("spec_verify_sampling_out", &spec_verify_sampling_out_cpu);
  m.impl("spec_verify_sampling_out.tensor", &spec_verify_sampling_tensor_out_cpu);
}

}  // namespace glm52::spec
