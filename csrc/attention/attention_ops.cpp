// The attention op family (DESIGN §3): schemas, and the functional forms that allocate their
// outputs and call the out-variants (which each device registers: cpu/, cuda/). The cache writes
// only mutate their cache argument and have no functional form.
#include "attention/attention_checks.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace glm52::attention {
namespace {

at::Tensor hadamard_rotate(const at::Tensor& x) {
  check_hadamard_rotate(x);
  auto out = at::empty(x.sizes(), x.options().dtype(at::kFloat));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::hadamard_rotate_out", "")
                       .typed<void(const at::Tensor&, at::Tensor&)>();
  op.call(x, out);
  return out;
}

at::Tensor indexer_logits(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                          const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke) {
  check_indexer_logits(q8, weights, k8, k_scale, ks, ke);
  auto out = at::empty({q8.size(0), k8.size(0)}, q8.options().dtype(at::kFloat));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::indexer_logits_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, at::Tensor&)>();
  op.call(q8, weights, k8, k_scale, ks, ke, out);
  return out;
}

at::Tensor indexer_logits_paged(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                                const at::Tensor& block_table, const at::Tensor& lengths, int64_t max_len) {
  check_indexer_logits_paged(q8, weights, cache, block_table, lengths);
  GLM52_CHECK_ARG(max_len >= 0, kIndexerLogitsPagedOp, "max_len", "must be >= 0, got ", max_len);
  auto out = at::empty({q8.size(0), q8.size(1), max_len}, q8.options().dtype(at::kFloat));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::indexer_logits_paged_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, at::Tensor&)>();
  op.call(q8, weights, cache, block_table, lengths, out);
  return out;
}

at::Tensor topk_indices(const at::Tensor& logits, int64_t k, const std::optional<at::Tensor>& lengths,
                        const std::optional<at::Tensor>& row_starts) {
  check_topk(logits, k, lengths, row_starts);
  auto out = at::empty({logits.size(0), k}, logits.options().dtype(at::kInt));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::topk_indices_out", "")
                       .typed<void(const at::Tensor&, int64_t, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, at::Tensor&)>();
  op.call(logits, k, lengths, row_starts, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor> sparse_outputs(const at::Tensor& q) {
  std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end());
  shape.back() = kValueDim;
  auto out = at::empty(shape, q.options());
  shape.pop_back();
  return {out, at::empty(shape, q.options().dtype(at::kFloat))};
}

std::tuple<at::Tensor, at::Tensor> sparse_mla_prefill(const at::Tensor& q, const at::Tensor& kv,
                                                      const at::Tensor& indices, double sm_scale) {
  check_sparse_prefill(q, kv, indices);
  auto [out, lse] = sparse_outputs(q);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::sparse_mla_prefill_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, double, at::Tensor&,
                                   at::Tensor&)>();
  op.call(q, kv, indices, sm_scale, out, lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> sparse_mla_decode(const at::Tensor& q, const at::Tensor& cache,
                                                     const at::Tensor& indices, double sm_scale,
                                                     const std::optional<at::Tensor>& tile_scheduler_metadata,
                                                     const std::optional<at::Tensor>& num_splits,
                                                     const std::optional<at::Tensor>& workspace) {
  check_sparse_decode(q, cache, indices);
  check_decode_plan(q, tile_scheduler_metadata, num_splits, workspace);
  auto [out, lse] = sparse_outputs(q);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::sparse_mla_decode_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                                   const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, at::Tensor&, at::Tensor&)>();
  op.call(q, cache, indices, sm_scale, tile_scheduler_metadata, num_splits, workspace, out, lse);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> sparse_mla_decode_metadata(const at::Tensor& row_topk, int64_t num_sm_parts) {
  check_decode_metadata(row_topk, num_sm_parts);
  auto options = row_topk.options();
  auto meta = at::empty({num_sm_parts, kSplitMetaInts}, options);
  auto num_splits = at::empty({row_topk.size(0) + 1}, options);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::sparse_mla_decode_metadata_out", "")
                       .typed<void(const at::Tensor&, int64_t, at::Tensor&, at::Tensor&)>();
  op.call(row_topk, num_sm_parts, meta, num_splits);
  return {meta, num_splits};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(glm52, m) {
  m.def("mla_cache_write(Tensor kv, Tensor slots, Tensor(a!) cache, *, Tensor? rope=None) -> ()");
  m.def("indexer_cache_write(Tensor k, Tensor slots, Tensor(a!) cache, bool scale_ue8m0=False, *, "
        "Tensor? rope=None, bool hadamard=False) -> ()");
  m.def("hadamard_rotate(Tensor x) -> Tensor");
  m.def("hadamard_rotate_out(Tensor x, *, Tensor(a!) out) -> ()");
  m.def("indexer_logits(Tensor q8, Tensor weights, Tensor k8, Tensor k_scale, Tensor ks, Tensor ke) -> Tensor");
  m.def("indexer_logits_out(Tensor q8, Tensor weights, Tensor k8, Tensor k_scale, Tensor ks, Tensor ke, *, "
        "Tensor(a!) out) -> ()");
  m.def("indexer_logits_paged(Tensor q8, Tensor weights, Tensor cache, Tensor block_table, Tensor lengths, "
        "int max_len) -> Tensor");
  m.def("indexer_logits_paged_out(Tensor q8, Tensor weights, Tensor cache, Tensor block_table, Tensor lengths, *, "
        "Tensor(a!) out) -> ()");
  m.def("topk_indices(Tensor logits, int k, Tensor? lengths=None, Tensor? row_starts=None) -> Tensor");
  m.def("topk_indices_out(Tensor logits, int k, Tensor? lengths, Tensor? row_starts=None, *, Tensor(a!) out) -> ()");
  m.def("sparse_mla_prefill(Tensor q, Tensor kv, Tensor indices, float sm_scale) -> (Tensor, Tensor)");
  m.def("sparse_mla_prefill_out(Tensor q, Tensor kv, Tensor indices, float sm_scale, *, Tensor(a!) out, "
        "Tensor(b!) lse) -> ()");
  // Split-KV decode (attention_split.h): the plan of sparse_mla_decode_metadata, and an optional
  // preallocated workspace (sparse_mla_decode_workspace_bytes) for the partial results.
  m.def("sparse_mla_decode(Tensor q, Tensor cache, Tensor indices, float sm_scale, Tensor? tile_scheduler_metadata=None, "
        "Tensor? num_splits=None, Tensor(c!)? workspace=None) -> (Tensor, Tensor)");
  m.def("sparse_mla_decode_out(Tensor q, Tensor cache, Tensor indices, float sm_scale, "
        "Tensor? tile_scheduler_metadata=None, Tensor? num_splits=None, Tensor(c!)? workspace=None, *, Tensor(a!) out, "
        "Tensor(b!) lse) -> ()");
  m.def("sparse_mla_decode_metadata(Tensor row_topk, int num_sm_parts) -> (Tensor, Tensor)");
  m.def("sparse_mla_decode_metadata_out(Tensor row_topk, int num_sm_parts, *, Tensor(a!) tile_scheduler_metadata, "
        "Tensor(b!) num_splits) -> ()");
  m.def("sparse_mla_decode_workspace_bytes(int batch, int sq, int heads, int num_sm_parts) -> int",
        [](int64_t batch, int64_t sq, int64_t heads, int64_t num_sm_parts) {
          return split_workspace_bytes(batch, sq, heads, num_sm_parts);
        });
}

TORCH_LIBRARY_IMPL(glm52, CompositeExplicitAutograd, m) {
  m.impl("hadamard_rotate", &hadamard_rotate);
  m.impl("indexer_logits", &indexer_logits);
  m.impl("indexer_logits_paged", &indexer_logits_paged);
  m.impl("topk_indices", &topk_indices);
  m.impl("sparse_mla_prefill", &sparse_mla_prefill);
  m.impl("sparse_mla_decode", &sparse_mla_decode);
  m.impl("sparse_mla_decode_metadata", &sparse_mla_decode_metadata);
}

}  // namespace glm52::attention
