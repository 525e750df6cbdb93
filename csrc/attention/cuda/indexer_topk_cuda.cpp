// CUDA entry points of the fused indexer top-k: check, pick the device and stream, launch.
#include "attention/indexer_topk_checks.h"
#include "attention/cuda/indexer_topk_launch.h"
#include "attention/cuda/kernel_choice.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace glm52::attention {
namespace {

IndexerLogitsArgs query_args(const at::Tensor& q8, const at::Tensor& weights, int64_t rows, int64_t heads) {
  IndexerLogitsArgs s{};
  s.q8 = static_cast<const uint8_t*>(q8.const_data_ptr());
  s.weights = weights.const_data_ptr<float>();
  s.rows = rows;
  s.heads = heads;
  return s;
}

void launch(const IndexerLogitsArgs& scores, int64_t k, at::Tensor& out) {
  const c10::cuda::CUDAGuard guard(out.device());
  const IndexerTopkArgs args{scores, k, out.mutable_data_ptr<int32_t>()};
  // Scores on tensor cores like indexer_logits unless GLM52_INDEXER_KERNEL=simt, so the result stays
  // topk_indices of that op's logits (indexer_topk_plan.h).
  C10_CUDA_CHECK(launch_indexer_topk(args, !simt_requested("GLM52_INDEXER_KERNEL"),
                                     c10::cuda::getCurrentCUDAStream(out.device().index())));
}

void indexer_topk_out_cuda(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                           const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke, int64_t k,
                           at::Tensor& out) {
  check_indexer_topk(q8, weights, k8, k_scale, ks, ke, k);
  check_indexer_topk_out(q8, k, out);
  IndexerLogitsArgs s = query_args(q8, weights, q8.size(0), q8.size(1));
  s.out_cols = k8.size(0);
  s.k8 = static_cast<const uint8_t*>(k8.const_data_ptr());
  s.k_scale = k_scale.const_data_ptr<float>();
  s.ks = ks.const_data_ptr<int32_t>();
  s.ke = ke.const_data_ptr<int32_t>();
  s.queries_per_seq = s.rows;
  launch(s, k, out);
}

void indexer_topk_paged_out_cuda(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                                 const at::Tensor& block_table, const at::Tensor& lengths, int64_t k,
                                 at::Tensor& out) {
  check_indexer_topk_paged(q8, weights, cache, block_table, lengths, k);
  check_indexer_topk_paged_out(q8, k, out);
  IndexerLogitsArgs s = query_args(q8, weights, q8.size(0) * q8.size(1), q8.size(2));
  s.paged = true;
  s.out_cols = block_table.size(1) * kBlockTokens;  // positions past the table have no key
  s.cache = cache.const_data_ptr<uint8_t>();
  s.num_blocks = cache.size(0);
  s.block_table = block_table.const_data_ptr<int32_t>();
  s.table_len = block_table.size(1);
  s.lengths = lengths.const_data_ptr<int32_t>();
  s.queries_per_seq = q8.size(1);
  launch(s, k, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CUDA, m) {
  m.impl("indexer_topk_out", &indexer_topk_out_cuda);
  m.impl("indexer_topk_paged_out", &indexer_topk_paged_out_cuda);
}

}  // namespace glm52::attention
