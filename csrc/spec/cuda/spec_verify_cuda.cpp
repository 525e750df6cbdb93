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

namespace glm52::spec {
namespace {

int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

void spec_verify_greedy_out_cuda(const at::Tensor& draft, const at::Tensor& target_logits, at::Tensor& tokens,
                                 at::Tensor& num_emitted) {
  check_greedy_inputs(draft, target_logits);
  check_verify_outputs(draft, tokens, num_emitted, kGreedyOp);
  const c10::cuda::CUDAGuard guard(draft.device());
  const int64_t batch = draft.size(0), n = draft.size(1), vocab = target_logits.size(2);
  const int64_t splits = plan_greedy_splits(batch * (n + 1), vocab, sm_count());
  auto partial_value = at::empty({batch * (n + 1), splits}, target_logits.options().dtype(at::kFloat));
  auto partial_index = at::empty({batch * (n + 1), splits}, target_logits.options().dtype(at::kInt));
  GreedyVerifyArgs args{draft.const_data_ptr(), draft.scalar_type() == at::kLong, target_logits.const_data_ptr(),
                        launch_dtype(target_logits.scalar_type()), partial_value.mutable_data_ptr<float>(),
                        partial_index.mutable_data_ptr<int32_t>(), tokens.mutable_data_ptr<int32_t>(),
                        num_emitted.mutable_data_ptr<int32_t>(), batch, n, vocab, splits};
  C10_CUDA_CHECK(launch_spec_verify_greedy(args, c10::cuda::getCurrentCUDAStream()));
}

// seed_ptr / offset_ptr: one-element int64 device tensors the kernels read (nullptr: use the values).
void launch_sampling(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                     const at::Tensor& target_probs, uint64_t seed, uint64_t offset, const int64_t* seed_ptr,
                     const int64_t* offset_ptr, at::Tensor& tokens, at::Tensor& num_emitted) {
  check_sampling_inputs(draft, draft_probs, target_probs);
  check_verify_outputs(draft, tokens, num_emitted, kSamplingOp);
  const c10::cuda::CUDAGuard guard(draft.device());
  const int64_t batch = draft.size(0), n = draft.size(1), vocab = target_probs.size(2);
  auto tile_totals = at::empty({batch, scan_tiles(vocab)}, target_probs.options());
  SamplingVerifyArgs args{draft.const_data_ptr(),
                          draft.scalar_type() == at::kLong,
                          draft_probs.has_value() ? draft_probs->const_data_ptr<float>() : nullptr,
                          target_probs.const_data_ptr<float>(),
                          tile_totals.mutable_data_ptr<float>(),
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
                                   const at::Tensor& target_probs, int64_t seed, int64_t offset, at::Tensor& tokens,
                                   at::Tensor& num_emitted) {
  launch_sampling(draft, draft_probs, target_probs, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                  nullptr, nullptr, tokens, num_emitted);
}

void spec_verify_sampling_tensor_out_cuda(const at::Tensor& draft, const std::optional<at::Tensor>& draft_probs,
                                          const at::Tensor& target_probs, const at::Tensor& seed,
                                          const at::Tensor& offset, at::Tensor& tokens, at::Tensor& num_emitted) {
  check_rng_tensors(draft, seed, offset);
  launch_sampling(draft, draft_probs, target_probs, 0, 0, seed.const_data_ptr<int64_t>(),
                  offset.const_data_ptr<int64_t>(), tokens, num_emitted);
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CUDA, m) {
  m.impl("spec_verify_greedy_out", &spec_verify_greedy_out_cuda);
  m.impl("spec_verify_sampling_out", &spec_verify_sampling_out_cuda);
  m.impl("spec_verify_sampling_out.tensor", &spec_verify_sampling_tensor_out_cuda);
}

}  // namespace glm52::spec
