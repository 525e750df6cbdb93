// Argument contracts of the speculative verification ops, shared by their CPU and CUDA entry points.
#pragma once

#include "common/checks.h"
#include "common/workspace.h"
#include "spec/spec_verify.h"

#include <ATen/core/Tensor.h>

#include <limits>
#include <optional>

namespace glm52::spec {

inline constexpr const char* kGreedyOp = "spec_verify_greedy";
inline constexpr const char* kSamplingOp = "spec_verify_sampling";

// draft [B, n] int32/int64 contiguous with n >= 1.
inline void check_draft(const at::Tensor& draft, const char* op) {
  check_dim(draft, op, "draft", 2, "[B, n]");
  check_dtype(draft, op, "draft", {at::kInt, at::kLong});
  check_contiguous(draft, op, "draft");
  GLM52_CHECK_ARG(draft.size(1) >= 1, op, "draft", "must hold at least one draft token per row (n >= 1), got shape ",
                  shape_str(draft.sizes()));
}

// A [B, rows, V] score tensor beside draft: V >= 1 and small enough for int32 tokens.
inline void check_scores(const at::Tensor& t, const at::Tensor& draft, const char* op, const char* arg,
                         int64_t rows, const char* layout) {
  check_dim(t, op, arg, 3, layout);
  check_shape(t, op, arg, {draft.size(0), rows, t.size(2)}, layout);
  GLM52_CHECK_ARG(t.size(2) >= 1 && t.size(2) <= std::numeric_limits<int32_t>::max(), op, arg,
                  "must have a vocabulary size V in [1, 2^31), got shape ", shape_str(t.sizes()));
  check_contiguous(t, op, arg);
  check_same_device(t, draft, op, arg, "draft");
}

inline void check_greedy_inputs(const at::Tensor& draft, const at::Tensor& target_logits) {
  check_draft(draft, kGreedyOp);
  check_dtype(target_logits, kGreedyOp, "target_logits", {at::kBFloat16, at::kHalf, at::kFloat});
  check_scores(target_logits, draft, kGreedyOp, "target_logits", draft.size(1) + 1, "[B, n + 1, V]");
}

inline void check_sampling_inputs(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                                  const at::Tensor& target_probs) {
  check_draft(draft, kSamplingOp);
  check_dtype(target_probs, kSamplingOp, "target_probs", {at::kFloat});
  check_scores(target_probs, draft, kSamplingOp, "target_probs", draft.size(1) + 1, "[B, n + 1, V]");
  if (draft_probs.has_value()) {
    check_dtype(*draft_probs, kSamplingOp, "draft_probs", {at::kFloat});
    check_scores(*draft_probs, draft, kSamplingOp, "draft_probs", draft.size(1), "[B, n, V]");
    check_shape(*draft_probs, kSamplingOp, "draft_probs", {draft.size(0), draft.size(1), target_probs.size(2)},
                "[B, n, V] (V of target_probs)");
  }
}

// seed and offset as tensors: int64, one element each, on draft's device.
inline void check_rng_tensors(const at::Tensor& draft, const at::Tensor& seed, const at::Tensor& offset) {
  for (const auto& [t, arg] : {std::pair<const at::Tensor&, const char*>{seed, "seed"}, {offset, "offset"}}) {
    check_dtype(t, kSamplingOp, arg, {at::kLong});
    GLM52_CHECK_ARG(t.numel() == 1, kSamplingOp, arg, "must hold exactly one int64 value, got shape ",
                    shape_str(t.sizes()));
    check_same_device(t, draft, kSamplingOp, arg, "draft");
  }
}

// tokens [B, n + 1] and num_emitted [B], int32, contiguous, beside draft.
inline void check_verify_outputs(const at::Tensor& draft, const at::Tensor& tokens, const at::Tensor& num_emitted,
                                 const char* op) {
  check_dtype(tokens, op, "tokens", {at::kInt});
  check_shape(tokens, op, "tokens", {draft.size(0), draft.size(1) + 1}, "[B, n + 1]");
  check_contiguous(tokens, op, "tokens");
  check_same_device(tokens, draft, op, "tokens", "draft");
  check_dtype(num_emitted, op, "num_emitted", {at::kInt});
  check_shape(num_emitted, op, "num_emitted", {draft.size(0)}, "[B]");
  check_contiguous(num_emitted, op, "num_emitted");
  check_same_device(num_emitted, draft, op, "num_emitted", "draft");
}

// An optional preallocated workspace (common/workspace.h) of at least
// spec_verify_workspace_bytes(...) bytes, beside draft.
inline void check_workspace(const std::optional<at::Tensor>& workspace, const at::Tensor& draft, int64_t vocab,
                            bool sampling, const char* op) {
  glm52::check_workspace(workspace, spec_verify_workspace_bytes(draft.size(0), draft.size(1), vocab, sampling),
                         "spec_verify_workspace_bytes", draft, "draft", op);
}

}  // namespace glm52::spec
