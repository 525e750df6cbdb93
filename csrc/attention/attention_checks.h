// Argument contracts of the attention op family, shared by the CPU and CUDA entry points.
#pragma once

#include "attention/attention_cache.h"
#include "attention/attention_hadamard.h"
#include "attention/attention_split.h"
#include "common/checks.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

namespace glm52::attention {

inline constexpr const char* kMlaCacheWriteOp = "mla_cache_write";
inline constexpr const char* kIndexerCacheWriteOp = "indexer_cache_write";
inline constexpr const char* kHadamardRotateOp = "hadamard_rotate";
inline constexpr const char* kIndexerLogitsOp = "indexer_logits";
inline constexpr const char* kIndexerLogitsPagedOp = "indexer_logits_paged";
inline constexpr const char* kTopkOp = "topk_indices";
inline constexpr const char* kSparsePrefillOp = "sparse_mla_prefill";
inline constexpr const char* kSparseDecodeOp = "sparse_mla_decode";
inline constexpr const char* kSparseDecodeMetadataOp = "sparse_mla_decode_metadata";
inline constexpr int64_t kMaxSmParts = 1 << 16;
inline constexpr int64_t kMaxHeads = 128;

inline void check_tensor(const at::Tensor& t, const char* op, const char* arg, at::ScalarType dtype,
                         at::IntArrayRef shape, const char* layout, const at::Tensor& ref, const char* ref_arg) {
  check_dtype(t, op, arg, {dtype});
  check_shape(t, op, arg, shape, layout);
  check_contiguous(t, op, arg);
  check_same_device(t, ref, op, arg, ref_arg);
}

// Kernels read key rows with 16-byte vector loads (cp.async), so their base must be aligned.
inline void check_aligned16(const at::Tensor& t, const char* op, const char* arg) {
  GLM52_CHECK_ARG(reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 == 0, op, arg,
                  "must start at a 16-byte aligned address (a view with an odd storage offset?)");
}

// MLA cache uint8 [num_blocks, 64, 1152 (BF16) or 656 (FP8)], contiguous, or FlashMLA's view of the
// same bytes [num_blocks, 64, 1, row] (one KV head). Returns true for FP8.
inline bool check_mla_cache(const at::Tensor& cache, const char* op, const char* arg) {
  GLM52_CHECK_ARG(cache.dim() == 3 || (cache.dim() == 4 && cache.size(2) == 1), op, arg,
                  "must be 3-D [num_blocks, 64, 1152 or 656] or 4-D [num_blocks, 64, 1, 1152 or 656], got shape ",
                  shape_str(cache.sizes()));
  check_dtype(cache, op, arg, {at::kByte});
  const int64_t row = cache.size(-1);
  GLM52_CHECK_ARG(cache.size(1) == kBlockTokens && (row == kMlaBf16TokenBytes || row == kMlaFp8TokenBytes), op,
                  arg, "must have shape [num_blocks, 64, (1,) 1152 (BF16 format) or 656 (FP8 format)], got ",
                  shape_str(cache.sizes()));
  check_contiguous(cache, op, arg);
  check_aligned16(cache, op, arg);
  return row == kMlaFp8TokenBytes;
}

// Slot mappings: int64 [T] contiguous beside `ref`.
inline void check_slots(const at::Tensor& slots, int64_t tokens, const char* op, const at::Tensor& ref,
                        const char* ref_arg) {
  check_tensor(slots, op, "slots", at::kLong, {tokens}, "[T]", ref, ref_arg);
}

// rope: float32 [T, pairs, 2] (cos, sin of each rotated pair), contiguous, beside `ref`; pairs is
// `exact_pairs` when > 0, else 1..max_pairs. Returns the pair count (0 without rope).
inline int64_t check_rope(const std::optional<at::Tensor>& rope, int64_t tokens, int64_t exact_pairs,
                          int64_t max_pairs, const char* op, const at::Tensor& ref, const char* ref_arg) {
  if (!rope) return 0;
  const at::Tensor& r = *rope;
  check_dim(r, op, "rope", 3, "[T, pairs, 2]");
  check_dtype(r, op, "rope", {at::kFloat});
  const int64_t pairs = r.size(1);
  GLM52_CHECK_ARG(r.size(0) == tokens && r.size(2) == 2 &&
                      (exact_pairs > 0 ? pairs == exact_pairs : pairs >= 1 && pairs <= max_pairs),
                  op, "rope", "must have shape [T = ", tokens, ", ",
                  exact_pairs > 0 ? std::to_string(exact_pairs) : "1.." + std::to_string(max_pairs),
                  ", 2] (cos, sin of each rotated pair), got ", shape_str(r.sizes()));
  check_contiguous(r, op, "rope");
  check_same_device(r, ref, op, "rope", ref_arg);
  return pairs;
}

// kv [T, 576] bf16 with unit stride along the latent dim (any row stride).
inline bool check_mla_cache_write(const at::Tensor& kv, const at::Tensor& slots, const at::Tensor& cache,
                                  const std::optional<at::Tensor>& rope) {
  const char* op = kMlaCacheWriteOp;
  check_dim(kv, op, "kv", 2, "[T, 576]");
  check_dtype(kv, op, "kv", {at::kBFloat16});
  GLM52_CHECK_ARG(kv.size(1) == kLatentDim, op, "kv", "must have shape [T, 576] ([c_kv 512 | k_pe 64]), got ",
                  shape_str(kv.sizes()));
  GLM52_CHECK_ARG(kv.stride(1) == 1, op, "kv", "must have unit stride along the latent dim, got strides ",
                  shape_str(kv.strides()));
  check_slots(slots, kv.size(0), op, kv, "kv");
  const bool fp8 = check_mla_cache(cache, op, "cache");
  check_same_device(cache, kv, op, "cache", "kv");
  check_rope(rope, kv.size(0), kRopeDim / 2, 0, op, kv, "kv");
  return fp8;
}

// k [T, 128] bf16/fp16/fp32 with unit inner stride; cache uint8 [num_blocks, 8448] contiguous.
inline void check_indexer_cache(const at::Tensor& cache, const char* op) {
  check_dim(cache, op, "cache", 2, "[num_blocks, 8448]");
  check_dtype(cache, op, "cache", {at::kByte});
  GLM52_CHECK_ARG(cache.size(1) == kIndexBlockBytes, op, "cache",
                  "must have shape [num_blocks, 8448] (64 tokens x (128 e4m3 + fp32 scale)), got ",
                  shape_str(cache.sizes()));
  check_contiguous(cache, op, "cache");
  check_aligned16(cache, op, "cache");
}

// Returns the number of leading pairs of k that rope rotates (0 without rope).
inline int64_t check_indexer_cache_write(const at::Tensor& k, const at::Tensor& slots, const at::Tensor& cache,
                                         const std::optional<at::Tensor>& rope) {
  const char* op = kIndexerCacheWriteOp;
  check_dim(k, op, "k", 2, "[T, 128]");
  check_dtype(k, op, "k", {at::kBFloat16, at::kHalf, at::kFloat});
  GLM52_CHECK_ARG(k.size(1) == kIndexDim, op, "k", "must have shape [T, 128], got ", shape_str(k.sizes()));
  GLM52_CHECK_ARG(k.stride(1) == 1, op, "k", "must have unit stride along the head dim, got strides ",
                  shape_str(k.strides()));
  check_slots(slots, k.size(0), op, k, "k");
  check_indexer_cache(cache, op);
  check_same_device(cache, k, op, "cache", "k");
  return check_rope(rope, k.size(0), 0, kIndexDim / 2, op, k, "k");
}

// x [..., n] bf16/fp16/fp32 contiguous, n 32, 64 or 128; returns the row count.
inline int64_t check_hadamard_rotate(const at::Tensor& x) {
  const char* op = kHadamardRotateOp;
  GLM52_CHECK_ARG(x.dim() >= 1 && hadamard_dim_supported(x.size(-1)), op, "x",
                  "must have shape [..., n] with n 32, 64 or 128, got ", shape_str(x.sizes()));
  check_dtype(x, op, "x", {at::kBFloat16, at::kHalf, at::kFloat});
  check_contiguous(x, op, "x");
  return x.numel() / x.size(-1);
}

inline void check_hadamard_rotate_out(const at::Tensor& x, const at::Tensor& out) {
  check_tensor(out, kHadamardRotateOp, "out", at::kFloat, x.sizes(), "(x's shape, float32)", x, "x");
}

// q8 [..., H, 128] e4m3 and weights [..., H] fp32 for `lead` leading dims; returns H.
inline int64_t check_indexer_query(const at::Tensor& q8, const at::Tensor& weights, const char* op, int64_t lead,
                                   const char* q_layout, const char* w_layout) {
  check_dim(q8, op, "q8", lead + 2, q_layout);
  check_dtype(q8, op, "q8", {at::kFloat8_e4m3fn});
  GLM52_CHECK_ARG(q8.size(-1) == kIndexDim, op, "q8", "must have head dim 128, got shape ", shape_str(q8.sizes()));
  GLM52_CHECK_ARG(q8.size(-2) >= 1 && q8.size(-2) <= kMaxHeads, op, "q8", "must have 1 to 128 heads, got shape ",
                  shape_str(q8.sizes()));
  check_contiguous(q8, op, "q8");
  check_aligned16(q8, op, "q8");
  check_tensor(weights, op, "weights", at::kFloat, q8.sizes().slice(0, lead + 1), w_layout, q8, "q8");
  return q8.size(-2);
}

inline void check_indexer_logits(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& k8,
                                 const at::Tensor& k_scale, const at::Tensor& ks, const at::Tensor& ke,
                                 const char* op = kIndexerLogitsOp) {
  check_indexer_query(q8, weights, op, 1, "[S, H, 128]", "[S, H]");
  const int64_t s = q8.size(0);
  check_dim(k8, op, "k8", 2, "[L, 128]");
  check_tensor(k8, op, "k8", at::kFloat8_e4m3fn, {k8.size(0), kIndexDim}, "[L, 128]", q8, "q8");
  check_aligned16(k8, op, "k8");
  check_tensor(k_scale, op, "k_scale", at::kFloat, {k8.size(0)}, "[L]", q8, "q8");
  check_tensor(ks, op, "ks", at::kInt, {s}, "[S]", q8, "q8");
  check_tensor(ke, op, "ke", at::kInt, {s}, "[S]", q8, "q8");
}

inline void check_indexer_logits_out(const at::Tensor& q8, const at::Tensor& k8, const at::Tensor& out) {
  check_tensor(out, kIndexerLogitsOp, "out", at::kFloat, {q8.size(0), k8.size(0)}, "[S, L]", q8, "q8");
}

inline void check_indexer_logits_paged(const at::Tensor& q8, const at::Tensor& weights, const at::Tensor& cache,
                                       const at::Tensor& block_table, const at::Tensor& lengths,
                                       const char* op = kIndexerLogitsPagedOp) {
  check_indexer_query(q8, weights, op, 2, "[B, n, H, 128]", "[B, n, H]");
  check_indexer_cache(cache, op);
  check_same_device(cache, q8, op, "cache", "q8");
  check_dim(block_table, op, "block_table", 2, "[B, max_blocks]");
  check_tensor(block_table, op, "block_table", at::kInt, {q8.size(0), block_table.size(1)}, "[B, max_blocks]", q8,
               "q8");
  check_tensor(lengths, op, "lengths", at::kInt, {q8.size(0), q8.size(1)}, "[B, n]", q8, "q8");
}

inline void check_indexer_logits_paged_out(const at::Tensor& q8, const at::Tensor& out) {
  const char* op = kIndexerLogitsPagedOp;
  check_dim(out, op, "out", 3, "[B, n, max_len]");
  check_tensor(out, op, "out", at::kFloat, {q8.size(0), q8.size(1), out.size(2)}, "[B, n, max_len]", q8, "q8");
}

// logits [R, L] fp32 with unit column stride and any row stride >= L (padded rows, e.g. DeepGEMM's
// aligned-stride logits); lengths and row_starts [R] int32.
inline void check_topk(const at::Tensor& logits, int64_t k, const std::optional<at::Tensor>& lengths,
                       const std::optional<at::Tensor>& row_starts) {
  const char* op = kTopkOp;
  check_dim(logits, op, "logits", 2, "[R, L]");
  check_dtype(logits, op, "logits", {at::kFloat});
  GLM52_CHECK_ARG(logits.size(1) <= 1 || logits.stride(1) == 1, op, "logits",
                  "must have unit stride along L, got strides ", shape_str(logits.strides()));
  GLM52_CHECK_ARG(logits.size(0) <= 1 || logits.stride(0) >= logits.size(1), op, "logits",
                  "must have a row stride >= L (rows must not overlap), got strides ", shape_str(logits.strides()),
                  " for shape ", shape_str(logits.sizes()));
  GLM52_CHECK_ARG(k >= 0, op, "k", "must be >= 0, got ", k);
  if (lengths) check_tensor(*lengths, op, "lengths", at::kInt, {logits.size(0)}, "[R]", logits, "logits");
  if (row_starts) check_tensor(*row_starts, op, "row_starts", at::kInt, {logits.size(0)}, "[R]", logits, "logits");
}

inline void check_topk_out(const at::Tensor& logits, int64_t k, const at::Tensor& out) {
  check_tensor(out, kTopkOp, "out", at::kInt, {logits.size(0), k}, "[R, k]", logits, "logits");
}

// q [..., H, 576] bf16 contiguous with H in 1..128; indices [..., k] int32 (same leading dims).
inline void check_sparse_query(const at::Tensor& q, const at::Tensor& indices, const char* op, int64_t lead,
                               const char* q_layout, const char* i_layout) {
  check_dim(q, op, "q", lead + 2, q_layout);
  check_dtype(q, op, "q", {at::kBFloat16});
  GLM52_CHECK_ARG(q.size(-1) == kLatentDim, op, "q", "must have latent width 576, got shape ", shape_str(q.sizes()));
  GLM52_CHECK_ARG(q.size(-2) >= 1 && q.size(-2) <= kMaxHeads, op, "q", "must have 1 to 128 heads, got shape ",
                  shape_str(q.sizes()));
  check_contiguous(q, op, "q");
  check_aligned16(q, op, "q");
  check_dim(indices, op, "indices", lead + 1, i_layout);
  std::vector<int64_t> want(q.sizes().begin(), q.sizes().begin() + lead);
  want.push_back(indices.size(-1));
  check_tensor(indices, op, "indices", at::kInt, want, i_layout, q, "q");
}

inline void check_sparse_outputs(const at::Tensor& q, const at::Tensor& out, const at::Tensor& lse, const char* op,
                                 const char* o_layout, const char* l_layout) {
  std::vector<int64_t> shape(q.sizes().begin(), q.sizes().end());
  shape.back() = kValueDim;
  check_tensor(out, op, "out", at::kBFloat16, shape, o_layout, q, "q");
  check_aligned16(out, op, "out");
  shape.pop_back();
  check_tensor(lse, op, "lse", at::kFloat, shape, l_layout, q, "q");
}

inline void check_sparse_prefill(const at::Tensor& q, const at::Tensor& kv, const at::Tensor& indices) {
  const char* op = kSparsePrefillOp;
  check_sparse_query(q, indices, op, 1, "[S, H, 576]", "[S, k]");
  check_dim(kv, op, "kv", 2, "[L, 576]");
  check_tensor(kv, op, "kv", at::kBFloat16, {kv.size(0), kLatentDim}, "[L, 576]", q, "q");
  check_aligned16(kv, op, "kv");
}

inline bool check_sparse_decode(const at::Tensor& q, const at::Tensor& cache, const at::Tensor& indices) {
  const char* op = kSparseDecodeOp;
  check_sparse_query(q, indices, op, 2, "[B, sq, H, 576]", "[B, sq, k]");
  const bool fp8 = check_mla_cache(cache, op, "cache");
  check_same_device(cache, q, op, "cache", "q");
  return fp8;
}

// row_topk int32 [B] contiguous; 1 <= num_sm_parts <= 65536.
inline void check_decode_metadata(const at::Tensor& row_topk, int64_t num_sm_parts) {
  const char* op = kSparseDecodeMetadataOp;
  check_dim(row_topk, op, "row_topk", 1, "[B]");
  check_dtype(row_topk, op, "row_topk", {at::kInt});
  check_contiguous(row_topk, op, "row_topk");
  GLM52_CHECK_ARG(row_topk.size(0) <= kSplitMaxRows, op, "row_topk", "must have at most ", kSplitMaxRows,
                  " rows, got ", row_topk.size(0));
  GLM52_CHECK_ARG(num_sm_parts >= 1 && num_sm_parts <= kMaxSmParts, op, "num_sm_parts", "must be in 1..", kMaxSmParts,
                  ", got ", num_sm_parts);
}

inline void check_decode_metadata_out(const at::Tensor& row_topk, int64_t num_sm_parts, const at::Tensor& meta,
                                      const at::Tensor& num_splits) {
  const char* op = kSparseDecodeMetadataOp;
  check_tensor(meta, op, "tile_scheduler_metadata", at::kInt, {num_sm_parts, kSplitMetaInts}, "[num_sm_parts, 8]",
               row_topk, "row_topk");
  check_tensor(num_splits, op, "num_splits", at::kInt, {row_topk.size(0) + 1}, "[B + 1]", row_topk, "row_topk");
}

// The optional split-KV plan of sparse_mla_decode (both tensors or neither) and its workspace.
// Returns the number of parts (0: no plan, the unsplit path).
inline int64_t check_decode_plan(const at::Tensor& q, const std::optional<at::Tensor>& meta,
                                 const std::optional<at::Tensor>& num_splits,
                                 const std::optional<at::Tensor>& workspace) {
  const char* op = kSparseDecodeOp;
  GLM52_CHECK_ARG(meta.has_value() == num_splits.has_value(), op, meta ? "num_splits" : "tile_scheduler_metadata",
                  "must be given with '", meta ? "tile_scheduler_metadata" : "num_splits",
                  "' (both from sparse_mla_decode_metadata, or neither)");
  if (!meta) {
    GLM52_CHECK_ARG(!workspace.has_value(), op, "workspace", "is only used with a split plan (tile_scheduler_metadata)");
    return 0;
  }
  check_dim(*meta, op, "tile_scheduler_metadata", 2, "[num_sm_parts, 8]");
  const int64_t parts = meta->size(0);
  GLM52_CHECK_ARG(parts >= 1 && parts <= kMaxSmParts, op, "tile_scheduler_metadata", "must have 1..", kMaxSmParts,
                  " parts, got shape ", shape_str(meta->sizes()));
  check_tensor(*meta, op, "tile_scheduler_metadata", at::kInt, {parts, kSplitMetaInts}, "[num_sm_parts, 8]", q, "q");
  check_tensor(*num_splits, op, "num_splits", at::kInt, {q.size(0) + 1}, "[B + 1]", q, "q");
  GLM52_CHECK_ARG(q.size(1) * ceil_div(q.size(2), 16) <= 65535, op, "q", "with a split plan must have sq * ceil(H / 16) <= 65535 "
                  "(the CUDA grid), got shape ", shape_str(q.sizes()));
  if (workspace) {
    const at::Tensor& w = *workspace;
    check_dim(w, op, "workspace", 1, "[bytes]");
    check_dtype(w, op, "workspace", {at::kByte});
    check_contiguous(w, op, "workspace");
    check_same_device(w, q, op, "workspace", "q");
    check_aligned16(w, op, "workspace");
    const int64_t need = split_workspace_bytes(q.size(0), q.size(1), q.size(2), parts);
    GLM52_CHECK_ARG(w.numel() >= need, op, "workspace", "must hold at least ", need,
                    " bytes (sparse_mla_decode_workspace_bytes), got ", w.numel());
  }
  return parts;
}

}  // namespace glm52::attention
