// Argument contracts of the fused indexer top-k ops (indexer_topk, indexer_topk_paged), shared by
// the CPU and CUDA entry points: the inputs of the matching indexer_logits op, plus k and out.
#pragma once

#include "attention/attention_checks.h"
#include "attention/attention_topk_stream.h"

namespace glm52::attention {

inline constexpr const char* kIndexerTopkOp = "indexer_topk";
inline constexpr const char* kIndexerTopkPagedOp = "indexer_topk_paged";

inline void check_stream_k(int64_t k, const char* op) {
  GLM52_CHECK_ARG(k >= 0 && k <= kStreamTopkMaxK, op, "k", "must be in [0, ", kStreamTopkMaxK, "], got ", k);
}

inline void check_indexer_topk(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                               const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke, int64_t k) {
  check_indexer_logits(q8, weights, k8, k_scale, ks, ke, kIndexerTopkOp);
  check_stream_k(k, kIndexerTopkOp);
  // Columns are int32 in the output.
  GLM52_CHECK_ARG(k8.size(0) <= INT32_MAX, kIndexerTopkOp, "k8", "must have at most 2^31 - 1 keys, got ", k8.size(0));
}

inline void check_indexer_topk_out(const at::Tensor& q8, int64_t k, const at::Tensor& out) {
  check_tensor(out, kIndexerTopkOp, "out", at::kInt, {q8.size(0), k}, "[S, k]", q8, "q8");
}

inline void check_indexer_topk_paged(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                                     const at::Tensor& block_table, const at::Tensor& lengths, int64_t k) {
  check_indexer_logits_paged(q8, weights, cache, block_table, lengths, kIndexerTopkPagedOp);
  check_stream_k(k, kIndexerTopkPagedOp);
}

inline void check_indexer_topk_paged_out(const at::Tensor& q8, int64_t k, const at::Tensor& out) {
  check_tensor(out, kIndexerTopkPagedOp, "out", at::kInt, {q8.size(0), q8.size(1), k}, "[B, n, k]", q8, "q8");
}

}  // namespace glm52::attention
