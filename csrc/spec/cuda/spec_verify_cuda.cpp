// CUDA entry points of the speculative verification family: check, allocate the workspace from
// the caching allocator (CUDA-graph safe), pick the stream, launch. No host synchronization.
#include "common/launch_dtype.h"
#include "spec/cuda/spec_verify_launch.h"
#include "spec/spec_checks.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

namespace glm52::spec {
namespace {

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

at::Tensor verify_workspace(const std::optional<at::Tensor>& workspace, const at::Tensor& draft, int64_t vocab,
                            bool sampling) {
  return workspace_or_new(workspace, spec_verify_workspace_bytes(draft.size(0), draft.size(1), vocab, sampling), draft);
}

void spec_verify_greedy_out_cuda(const at::Tensor& draft, const at::Tensor& target_logits,
                                 const std::optional<at::Tensor>& workspace, at::Tensor& tokens,
                                 at::Tensor& num_emitted) {
  check_greedy_inputs(draft, target_logits);
  check_verify_outputs(draft, tokens, num_emitted, kGreedyOp);
  const int64_t batch = draft.size(0), n = draft.size(1), vocab = target_logits.size(2);
  check_workspace(workspace, draft, vocab, false, kGreedyOp);
  const c10::cuda::CUDAGuard guard(draft.device());
  const int64_t splits = plan_greedy_splits(batch * (n + 1), vocab, sm_count());
  // [rows, splits] fp32 maxima, then (16-byte aligned) their int32 indices: within the bound, which
  // is computed for greedy_max_splits >= splits.
  auto scratch = verify_workspace(workspace, draft, vocab, false);
  char* base = static_cast<char*>(scratch.mutable_data_ptr());
  const int64_t part = spec_verify_workspace_bytes(batch, n, vocab, false) / 2;
  GreedyVerifyArgs args{draft.const_data_ptr(), draft.scalar_type() == at::kLong, target_logits.const_data_ptr(),
                        launch_dtype(target_logits.scalar_type()), reinterpret_cast<float*>(base),
                        reinterpret_cast<int32_t*>(base + part), tokens.mutable_data_ptr<int32_t>(),
                        num_emitted.mutable_data_ptr<int32_t>(), batch, n, vocab, splits};
  C10_CUDA_CHECK(launch_spec_verify_greedy(args, c10::cuda::getCurrentCUDAStream()));
}

// seed_ptr / offset_ptr: one-element int64 device tensors the kernels read (nullptr: use the values).
void launch_sampling(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                     const at::Tensor& target_probs, uint64_t seed, uint64_t offset, const int64_t* seed_ptr,
                     const int64_t* offset_ptr, const std::optional<at::Tensor>& workspace, at::Tensor& tokens,
                     at::Tensor& num_emitted) {
  check_sampling_inputs(draft, draft_probs, target_probs);
  check_verify_outputs(draft, tokens, num_emitted, kSamplingOp);
  const int64_t batch = draft.size(0), n = draft.size(1), vocab = target_probs.size(2);
  check_workspace(workspace, draft, vocab, true, kSamplingOp);
  const c10::cuda::CUDAGuard guard(draft.device());
  auto tile_totals = verify_workspace(workspace, draft, vocab, true);  // [batch, scan_tiles(vocab)] fp32
  SamplingVerifyArgs args{draft.const_data_ptr(),
                          draft.scalar_type() == at::kLong,
                          draft_probs.has_value() ? draft_probs->const_data_ptr<float>() : nullptr,
                          target_probs.const_data_ptr<float>(),
                          static_cast<float*>(tile_totals.mutable_data_ptr()),
                          tokens.mutable_data_ptr<int32_t>(),
                          num_emitted.mutable_data_ptr<int32_t>(),
                          batch,
                          n,
                          vocab,
                          seed,
                          offset,
                          seed_ptr,
                          offset_ptr};
  C10_CUDA_CHECK(launch_spec_verify_sampling(args, sm_count(), c10::cuda::getCurrentCUDAStream()));
}

void spec_verify_sampling_out_cuda(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                                   const at::Tensor& target_probs, int64_t seed, int64_t offset,
                                   const std::optional<at::Tensor>& workspace, at::Tensor& tokens,
                                   at::Tensor& num_emitted) {
  launch_sampling(draft, draft_probs, target_probs, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                  nullptr, nullptr, workspace, tokens, num_emitted);
}

void spec_verify_sampling_tensor_out_cuda(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                                          const at::Tensor& target_probs, const at::Tensor& seed,
                                          const at::Tensor& offset, const std::optional<at::Tensor>& workspace,
                                          at::Tensor& tokens, at::Tensor& num_emitted) {
  check_rng_tensors(draft, seed, offset);
  launch_sampling(draft, draft_probs, target_probs, 0, 0, seed.const_data_ptr<int64_t>(),
                  offset.const_data_ptr<int64_t>(), workspace, tokens, num_emitted);
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CUDA, m) {
  m.impl("spec_verify_greedy_out", &spec_verify_greedy_out_cuda);
  m.impl("spec_verify_sampling_out", &spec_verify_sampling_out_cuda);
  m.impl("spec_verify_sampling_out.tensor", &spec_verify_sampling_tensor_out_cuda);
}

}  // namespace glm52::spec
