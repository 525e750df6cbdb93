// The speculative verification op family: schemas, and the functional forms that allocate their
// outputs and call the out-variants (which each device registers: cpu/, cuda/).
#include "spec/spec_checks.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace glm52::spec {
namespace {

std::tuple<at::Tensor, at::Tensor> empty_verify_outputs(const at::Tensor& draft) {
  auto options = draft.options().dtype(at::kInt);
  return {at::empty({draft.size(0), draft.size(1) + 1}, options), at::empty({draft.size(0)}, options)};
}

std::tuple<at::Tensor, at::Tensor> spec_verify_greedy(const at::Tensor& draft, const at::Tensor& target_logits,
                                                      const std::optional<at::Tensor>& workspace) {
  check_greedy_inputs(draft, target_logits);
  auto [tokens, num_emitted] = empty_verify_outputs(draft);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::spec_verify_greedy_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::Tensor&,
                                   at::Tensor&)>();
  op.call(draft, target_logits, workspace, tokens, num_emitted);
  return {tokens, num_emitted};
}

std::tuple<at::Tensor, at::Tensor> spec_verify_sampling(const at::Tensor& draft,
                                                        const std::optional<at::Tensor>& draft_probs,
                                                        const at::Tensor& target_probs, int64_t seed, int64_t offset,
                                                        const std::optional<at::Tensor>& workspace) {
  check_sampling_inputs(draft, draft_probs, target_probs);
  auto [tokens, num_emitted] = empty_verify_outputs(draft);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::spec_verify_sampling_out", "")
                       .typed<void(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&, int64_t,
                                   int64_t, const std::optional<at::Tensor>&, at::Tensor&, at::Tensor&)>();
  op.call(draft, draft_probs, target_probs, seed, offset, workspace, tokens, num_emitted);
  return {tokens, num_emitted};
}

// The same with seed and offset read from device tensors (CUDA graphs: the offset advances on the
// device between replays).
std::tuple<at::Tensor, at::Tensor> spec_verify_sampling_tensor(const at::Tensor& draft,
                                                               const std::optional<at::Tensor>& draft_probs,
                                                               const at::Tensor& target_probs, const at::Tensor& seed,
                                                               const at::Tensor& offset,
                                                               const std::optional<at::Tensor>& workspace) {
  check_sampling_inputs(draft, draft_probs, target_probs);
  check_rng_tensors(draft, seed, offset);
  auto [tokens, num_emitted] = empty_verify_outputs(draft);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::spec_verify_sampling_out", "tensor")
                       .typed<void(const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::Tensor&,
                                   at::Tensor&)>();
  op.call(draft, draft_probs, target_probs, seed, offset, workspace, tokens, num_emitted);
  return {tokens, num_emitted};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(glm52, m) {
  // workspace: optional preallocated device scratch (spec_verify_workspace_bytes), written by the CUDA kernels.
  m.def("spec_verify_greedy(Tensor draft, Tensor target_logits, Tensor(c!)? workspace=None) -> (Tensor, Tensor)");
  m.def("spec_verify_greedy_out(Tensor draft, Tensor target_logits, Tensor(c!)? workspace=None, *, Tensor(a!) tokens, "
        "Tensor(b!) num_emitted) -> ()");
  m.def("spec_verify_sampling(Tensor draft, Tensor? draft_probs, Tensor target_probs, int seed, int offset, "
        "Tensor(c!)? workspace=None) -> (Tensor, Tensor)");
  m.def("spec_verify_sampling_out(Tensor draft, Tensor? draft_probs, Tensor target_probs, int seed, int offset, "
        "Tensor(c!)? workspace=None, *, Tensor(a!) tokens, Tensor(b!) num_emitted) -> ()");
  m.def("spec_verify_workspace_bytes(int batch, int n, int vocab, bool sampling) -> int",
        [](int64_t batch, int64_t n, int64_t vocab, bool sampling) {
          return spec_verify_workspace_bytes(batch, n, vocab, sampling);
        });
  // seed, offset: int64 tensors of one element on draft's device, read by the kernel itself (CUDA graphs:
  // the offset advances on the device between replays).
  m.def("spec_verify_sampling.tensor(Tensor draft, Tensor? draft_probs, Tensor target_probs, Tensor seed, "
        "Tensor offset, Tensor(c!)? workspace=None) -> (Tensor, Tensor)");
  m.def("spec_verify_sampling_out.tensor(Tensor draft, Tensor? draft_probs, Tensor target_probs, Tensor seed, "
        "Tensor offset, Tensor(c!)? workspace=None, *, Tensor(a!) tokens, Tensor(b!) num_emitted) -> ()");
}

TORCH_LIBRARY_IMPL(glm52, CompositeExplicitAutograd, m) {
  m.impl("spec_verify_greedy", &spec_verify_greedy);
  m.impl("spec_verify_sampling", &spec_verify_sampling);
  m.impl("spec_verify_sampling.tensor", &spec_verify_sampling_tensor);
}

}  // namespace glm52::spec
