// CUDA entry points of the attention family: check, pick the device and stream, launch.
#include "common/launch_dtype.h"
#include "attention/attention_checks.h"
#include "attention/cuda/attention_launch.h"
#include "attention/cuda/kernel_choice.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace glm52::attention {
namespace {

cudaStream_t stream_of(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()); }

template <typename T>
const T* ptr(const at::Tensor& t) { return static_cast<const T*>(t.const_data_ptr()); }

void mla_cache_write_cuda(const at::Tensor& kv, const at::Tensor& slots, at::Tensor& cache,
                          const std::optional<at::Tensor>& rope) {
  const bool fp8 = check_mla_cache_write(kv, slots, cache, rope);
  const c10::cuda::CUDAGuard guard(kv.device());
  MlaCacheWriteArgs args{ptr<uint16_t>(kv), kv.stride(0), slots.const_data_ptr<int64_t>(), kv.size(0),
                         cache.mutable_data_ptr<uint8_t>(), cache.size(0), fp8,
                         rope ? rope->const_data_ptr<float>() : nullptr};
  C10_CUDA_CHECK(launch_mla_cache_write(args, stream_of(kv)));
}

void indexer_cache_write_cuda(const at::Tensor& k, const at::Tensor& slots, at::Tensor& cache, bool scale_ue8m0,
                              const std::optional<at::Tensor>& rope, bool hadamard) {
  const int64_t rope_pairs = check_indexer_cache_write(k, slots, cache, rope);
  const c10::cuda::CUDAGuard guard(k.device());
  IndexerCacheWriteArgs args{k.const_data_ptr(), k.stride(0), launch_dtype(k.scalar_type()),
                             slots.const_data_ptr<int64_t>(), k.size(0), cache.mutable_data_ptr<uint8_t>(),
                             cache.size(0), scale_ue8m0, rope ? rope->const_data_ptr<float>() : nullptr, rope_pairs,
                             hadamard};
  C10_CUDA_CHECK(launch_indexer_cache_write(args, stream_of(k)));
}

void hadamard_rotate_out_cuda(const at::Tensor& x, at::Tensor& out) {
  const int64_t rows = check_hadamard_rotate(x);
  check_hadamard_rotate_out(x, out);
  const c10::cuda::CUDAGuard guard(x.device());
  C10_CUDA_CHECK(launch_hadamard_rotate(x.const_data_ptr(), launch_dtype(x.scalar_type()),
                                        out.mutable_data_ptr<float>(), rows, static_cast<int>(x.size(-1)),
                                        stream_of(x)));
}

void indexer_logits_out_cuda(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                             const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke, at::Tensor& out) {
  check_indexer_logits(q8, weights, k8, k_scale, ks, ke);
  check_indexer_logits_out(q8, k8, out);
  const c10::cuda::CUDAGuard guard(q8.device());
  IndexerLogitsArgs args{};
  args.q8 = ptr<uint8_t>(q8);
  args.weights = weights.const_data_ptr<float>();
  args.rows = q8.size(0);
  args.heads = q8.size(1);
  args.out = out.mutable_data_ptr<float>();
  args.out_cols = k8.size(0);
  args.k8 = ptr<uint8_t>(k8);
  args.k_scale = k_scale.const_data_ptr<float>();
  args.ks = ks.const_data_ptr<int32_t>();
  args.ke = ke.const_data_ptr<int32_t>();
  args.queries_per_seq = args.rows;
  C10_CUDA_CHECK(launch_indexer_logits(args, !simt_requested("GLM52_INDEXER_KERNEL"), stream_of(q8)));
}

void indexer_logits_paged_out_cuda(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                                   const at::Tensor& block_table, const at::Tensor& lengths, at::Tensor& out) {
  check_indexer_logits_paged(q8, weights, cache, block_table, lengths);
  check_indexer_logits_paged_out(q8, out);
  const c10::cuda::CUDAGuard guard(q8.device());
  IndexerLogitsArgs args{};
  args.paged = true;
  args.q8 = ptr<uint8_t>(q8);
  args.weights = weights.const_data_ptr<float>();
  args.rows = q8.size(0) * q8.size(1);
  args.heads = q8.size(2);
  args.out = out.mutable_data_ptr<float>();
  args.out_cols = out.size(2);
  args.cache = cache.const_data_ptr<uint8_t>();
  args.num_blocks = cache.size(0);
  args.block_table = block_table.const_data_ptr<int32_t>();
  args.table_len = block_table.size(1);
  args.lengths = lengths.const_data_ptr<int32_t>();
  args.queries_per_seq = q8.size(1);
  C10_CUDA_CHECK(launch_indexer_logits(args, !simt_requested("GLM52_INDEXER_KERNEL"), stream_of(q8)));
}

void topk_indices_out_cuda(const at::Tensor& logits, int64_t k, const std::optional<at::Tensor>& lengths,
                           const std::optional<at::Tensor>& row_starts, at::Tensor& out) {
  check_topk(logits, k, lengths, row_starts);
  check_topk_out(logits, k, out);
  const c10::cuda::CUDAGuard guard(logits.device());
  TopkArgs args{logits.const_data_ptr<float>(), logits.size(0), logits.size(1), logits.stride(0),
                lengths ? lengths->const_data_ptr<int32_t>() : nullptr,
                row_starts ? row_starts->const_data_ptr<int32_t>() : nullptr, k, out.mutable_data_ptr<int32_t>()};
  C10_CUDA_CHECK(launch_topk_indices(args, stream_of(logits)));
}

SparseMlaArgs sparse_mla_args(const at::Tensor& q, const uint8_t* tokens, int64_t num_tokens, bool fp8,
                              const at::Tensor& indices, double sm_scale, at::Tensor& out, at::Tensor& lse) {
  const int64_t heads = q.size(-2), rows = q.numel() / (heads * kLatentDim);
  return SparseMlaArgs{ptr<uint16_t>(q), rows, heads, tokens, num_tokens, fp8, indices.const_data_ptr<int32_t>(),
                       indices.size(-1), static_cast<float>(sm_scale), static_cast<uint16_t*>(out.mutable_data_ptr()),
                       lse.mutable_data_ptr<float>()};
}

void sparse_mla_out_cuda(const at::Tensor& q, const uint8_t* tokens, int64_t num_tokens, bool fp8,
                         const at::Tensor& indices, double sm_scale, at::Tensor& out, at::Tensor& lse) {
  const c10::cuda::CUDAGuard guard(q.device());
  const SparseMlaArgs args = sparse_mla_args(q, tokens, num_tokens, fp8, indices, sm_scale, out, lse);
  const cudaStream_t stream = stream_of(q);
  C10_CUDA_CHECK(simt_requested("GLM52_SPARSE_MLA_KERNEL") ? launch_sparse_mla(args, stream)
                                                            : launch_sparse_mla_hgmma(args, stream));
}

void sparse_mla_prefill_out_cuda(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& indices,
                                 double sm_scale, at::Tensor& out, at::Tensor& lse) {
  check_sparse_prefill(q, kv, indices);
  check_sparse_outputs(q, out, lse, kSparsePrefillOp, "[S, H, 512]", "[S, H]");
  sparse_mla_out_cuda(q, ptr<uint8_t>(kv), kv.size(0), false, indices, sm_scale, out, lse);
}

void sparse_mla_decode_out_cuda(const at::Tensor& q, const at::Tensor& cache, const at::Tensor& indices,
                                double sm_scale, const std::optional<at::Tensor>& tile_scheduler_metadata,
                                const std::optional<at::Tensor>& num_splits,
                                const std::optional<at::Tensor>& workspace, at::Tensor& out, at::Tensor& lse) {
  const bool fp8 = check_sparse_decode(q, cache, indices);
  const int64_t parts = check_decode_plan(q, tile_scheduler_metadata, num_splits, workspace);
  check_sparse_outputs(q, out, lse, kSparseDecodeOp, "[B, sq, H, 512]", "[B, sq, H]");
  const uint8_t* tokens = cache.const_data_ptr<uint8_t>();
  const int64_t num_tokens = cache.size(0) * kBlockTokens;
  if (parts == 0) {
    sparse_mla_out_cuda(q, tokens, num_tokens, fp8, indices, sm_scale, out, lse);
    return;
  }
  const c10::cuda::CUDAGuard guard(q.device());
  const int64_t batch = q.size(0), sq = q.size(1), heads = q.size(2);
  // The caller's workspace, or one from the caching allocator (CUDA-graph safe).
  const at::Tensor scratch = workspace ? *workspace
                                       : at::empty({split_workspace_bytes(batch, sq, heads, parts)},
                                                   q.options().dtype(at::kByte));
  uint8_t* base = static_cast<uint8_t*>(scratch.data_ptr());
  const SparseSplitArgs split{tile_scheduler_metadata->const_data_ptr<int32_t>(), parts,
                              num_splits->const_data_ptr<int32_t>(), batch, sq, reinterpret_cast<float*>(base),
                              reinterpret_cast<float*>(base + split_workspace_lse_offset(batch, sq, heads, parts))};
  const SparseMlaArgs args = sparse_mla_args(q, tokens, num_tokens, fp8, indices, sm_scale, out, lse);
  const cudaStream_t stream = stream_of(q);
  C10_CUDA_CHECK(simt_requested("GLM52_SPARSE_MLA_KERNEL") ? launch_sparse_mla_split(args, split, stream)
                                                            : launch_sparse_mla_hgmma_split(args, split, stream));
}

void sparse_mla_decode_metadata_out_cuda(const at::Tensor& row_topk, int64_t num_sm_parts, at::Tensor& meta,
                                         at::Tensor& num_splits) {
  check_decode_metadata(row_topk, num_sm_parts);
  check_decode_metadata_out(row_topk, num_sm_parts, meta, num_splits);
  const c10::cuda::CUDAGuard guard(row_topk.device());
  C10_CUDA_CHECK(launch_sparse_mla_metadata(row_topk.const_data_ptr<int32_t>(), row_topk.size(0), num_sm_parts,
                                            meta.mutable_data_ptr<int32_t>(), num_splits.mutable_data_ptr<int32_t>(),
                                            stream_of(row_topk)));
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CUDA, m) {
  m.impl("mla_cache_write", &mla_cache_write_cuda);
  m.impl("indexer_cache_write", &indexer_cache_write_cuda);
  m.impl("hadamard_rotate_out", &hadamard_rotate_out_cuda);
  m.impl("indexer_logits_out", &indexer_logits_out_cuda);
  m.impl("indexer_logits_paged_out", &indexer_logits_paged_out_cuda);
  m.impl("topk_indices_out", &topk_indices_out_cuda);
  m.impl("sparse_mla_prefill_out", &sparse_mla_prefill_out_cuda);
  m.impl("sparse_mla_decode_out", &sparse_mla_decode_out_cuda);
  m.impl("sparse_mla_decode_metadata_out", &sparse_mla_decode_metadata_out_cuda);
}

}  // namespace glm52::attention
