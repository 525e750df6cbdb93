// Optional preallocated device workspaces (CUDA graphs, memory planning): the contract every op
// with internal buffers shares. A workspace is uint8 [bytes], contiguous, 16-byte aligned, on the
// device of a reference argument and at least the bytes its op's *_workspace_bytes query reports.
// The CPU twins check it too and need none.
#pragma once

#include "common/checks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <optional>

namespace glm52 {

// need: the bytes the op uses at most; bytes_fn: the query that reports them (named in the error).
inline void check_workspace(const std::optional<at::Tensor>& workspace, int64_t need, const char* bytes_fn,
                            const at::Tensor& ref, const char* ref_arg, const char* op) {
  if (!workspace.has_value()) return;
  const at::Tensor& w = *workspace;
  check_dim(w, op, "workspace", 1, "[bytes]");
  check_dtype(w, op, "workspace", {at::kByte});
  check_contiguous(w, op, "workspace");
  check_same_device(w, ref, op, "workspace", ref_arg);
  GLM52_CHECK_ARG(w.numel() >= need, op, "workspace", "must hold at least ", need, " bytes (", bytes_fn, "), got ",
                  w.numel());
  GLM52_CHECK_ARG(reinterpret_cast<uintptr_t>(w.const_data_ptr()) % 16 == 0, op, "workspace",
                  "must start at a 16-byte aligned address");
}

// The caller's (checked) workspace, or `bytes` from the caching allocator on ref's device
// (stream-ordered, CUDA-graph safe).
inline at::Tensor workspace_or_new(const std::optional<at::Tensor>& workspace, int64_t bytes, const at::Tensor& ref) {
  if (workspace.has_value()) return *workspace;
  return at::empty({std::max<int64_t>(bytes, 1)}, ref.options().dtype(at::kByte));
}

}  // namespace glm52
