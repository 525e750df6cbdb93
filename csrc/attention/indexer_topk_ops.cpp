// The fused indexer top-k ops (DESIGN §3): schemas and functional forms that allocate the output and
// call the out-variants (each device registers those: cpu/indexer_topk_cpu.cpp,
// cuda/indexer_topk_cuda.cpp), and indexer_topk_kernel, the CUDA launcher's kernel choice
// (indexer_topk_plan.h) answered on any build.
#include "attention/indexer_topk_checks.h"
#include "attention/indexer_topk_plan.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace glm52::attention {
namespace {

at::Tensor indexer_topk(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                        const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke, int64_t k) {
  check_indexer_topk(q8, weights, k8, k_scale, ks, ke, k);
  auto out = at::empty({q8.size(0), k}, q8.options().dtype(at::kInt));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::indexer_topk_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, int64_t, at::Tensor&)>();
  op.call(q8, weights, k8, k_scale, ks, ke, k, out);
  return out;
}

at::Tensor indexer_topk_paged(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                              const at::Tensor& block_table, const at::Tensor& lengths, int64_t k) {
  check_indexer_topk_paged(q8, weights, cache, block_table, lengths, k);
  auto out = at::empty({q8.size(0), q8.size(1), k}, q8.options().dtype(at::kInt));
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("glm52::indexer_topk_paged_out", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, int64_t, at::Tensor&)>();
  op.call(q8, weights, cache, block_table, lengths, k, out);
  return out;
}

// (kernel, query rows one CTA selects for, dynamic shared bytes per CTA).
std::tuple<std::string, int64_t, int64_t> indexer_topk_kernel(int64_t heads, int64_t k, bool tensor_cores) {
  constexpr const char* op = "indexer_topk_kernel";
  GLM52_CHECK_ARG(heads >= 1 && heads <= kMaxHeads, op, "heads", "must be in [1, ", kMaxHeads, "], got ", heads);
  check_stream_k(k, op);
  const IndexerTopkKernel kernel = indexer_topk_kernel_for(heads, tensor_cores);
  const bool qgmma = kernel == IndexerTopkKernel::kQgmma;
  return {qgmma ? "qgmma" : "simt", qgmma ? indexer_topk_qgmma_selected(heads, k) : 1,
          indexer_topk_smem_bytes(kernel, heads, k)};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(glm52, m) {
  m.def("indexer_topk(Tensor q8, Tensor weights, Tensor k8, Tensor k_scale, Tensor ks, Tensor ke, int k) -> Tensor");
  m.def("indexer_topk_out(Tensor q8, Tensor weights, Tensor k8, Tensor k_scale, Tensor ks, Tensor ke, int k, *, "
        "Tensor(a!) out) -> ()");
  m.def("indexer_topk_paged(Tensor q8, Tensor weights, Tensor cache, Tensor block_table, Tensor lengths, int k) "
        "-> Tensor");
  m.def("indexer_topk_paged_out(Tensor q8, Tensor weights, Tensor cache, Tensor block_table, Tensor lengths, "
        "int k, *, Tensor(a!) out) -> ()");
  // The CUDA launcher's choice for these heads and k: (kernel, rows per CTA, shared bytes per CTA).
  m.def("indexer_topk_kernel(int heads, int k, bool tensor_cores=True) -> (str, int, int)", &indexer_topk_kernel);
}

TORCH_LIBRARY_IMPL(glm52, CompositeExplicitAutograd, m) {
  m.impl("indexer_topk", &indexer_topk);
  m.impl("indexer_topk_paged", &indexer_topk_paged);
}

}  // namespace glm52::attention
