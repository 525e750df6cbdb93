// Launchers of the attention kernels. Framework-free: raw pointers, sizes and a stream; the
// torch-facing checks live in attention_checks.h. Each returns the launch error (cudaSuccess when
// queued); empty inputs launch nothing. None synchronizes with the host.
#pragma once

#include "common/dtype.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace glm52::attention {

struct MlaCacheWriteArgs {
  const uint16_t* kv;     // [tokens, 576] bf16 bits, unit column stride
  int64_t kv_row_stride;  // elements between rows of kv
  const int64_t* slots;   // [tokens]
  int64_t tokens;
  uint8_t* cache;         // [num_blocks, 64, 1152 or 656]
  int64_t num_blocks;
  bool fp8;
  const float* rope;      // [tokens, 32, 2] (cos, sin) rotating k_pe, or nullptr (k_pe stored as given)
};

struct IndexerCacheWriteArgs {
  const void* k;          // [tokens, 128] k_dtype, unit column stride
  int64_t k_row_stride;   // elements between rows of k
  DType k_dtype;
  const int64_t* slots;   // [tokens]
  int64_t tokens;
  uint8_t* cache;         // [num_blocks, 8448]
  int64_t num_blocks;
  bool scale_ue8m0;
  const float* rope;      // [tokens, rope_pairs, 2] (cos, sin) rotating k's leading dims, or nullptr
  int64_t rope_pairs;
  bool hadamard;          // rotate the key (after RoPE) by attention_hadamard.h before quantizing
};

// Flat keys (ragged prefill) or the paged indexer cache (decode).
struct IndexerLogitsArgs {
  bool paged;
  const uint8_t* q8;         // [rows, heads, 128] e4m3
  const float* weights;      // [rows, heads]
  int64_t rows, heads;
  float* out;                // [rows, out_cols]
  int64_t out_cols;          // L (flat) or max_len (paged)
  const uint8_t* k8;         // flat: [out_cols, 128] e4m3
  const float* k_scale;      // flat: [out_cols]
  const int32_t* ks;         // flat: [rows]
  const int32_t* ke;         // flat: [rows]
  const uint8_t* cache;      // paged: [num_blocks, 8448]
  int64_t num_blocks;
  const int32_t* block_table;  // paged: [rows / queries_per_seq, table_len]
  int64_t table_len;
  const int32_t* lengths;    // paged: [rows]
  int64_t queries_per_seq;   // rows per sequence: n (paged) or rows (flat: one sequence)
};

struct TopkArgs {
  const float* logits;        // [rows, cols], rows row_stride elements apart
  int64_t rows, cols, row_stride;
  const int32_t* lengths;     // [rows] or nullptr (all cols from the start)
  const int32_t* row_starts;  // [rows] or nullptr (0)
  int64_t k;
  int32_t* out;            // [rows, k]
};

// Sparse MLA over an array of token rows in the MLA cache layout (prefill: kv as BF16 rows).
struct SparseMlaArgs {
  const uint16_t* q;       // [rows, heads, 576] bf16 bits
  int64_t rows, heads;
  const uint8_t* tokens;   // [num_tokens, 1152 or 656], 16-byte aligned
  int64_t num_tokens;
  bool fp8;
  const int32_t* indices;  // [rows, topk]
  int64_t topk;
  float sm_scale;
  uint16_t* out;           // [rows, heads, 512] bf16 bits
  float* lse;              // [rows, heads]
};

// The split-KV plan of a decode (attention_split.h) and where the partial results go. The rows of
// SparseMlaArgs are batch * sq query rows, row = b * sq + s.
struct SparseSplitArgs {
  const int32_t* meta;        // [parts, 8] tile scheduler metadata
  int64_t parts;
  const int32_t* num_splits;  // [batch + 1]
  int64_t batch, sq;
  float* part_out;            // [split_max_slots(batch, parts), sq, heads, 512] workspace
  float* part_lse;            // [split_max_slots(batch, parts), sq, heads] workspace
};

cudaError_t launch_mla_cache_write(const MlaCacheWriteArgs& args, cudaStream_t stream);
cudaError_t launch_indexer_cache_write(const IndexerCacheWriteArgs& args, cudaStream_t stream);
// x [rows, dim] (dtype) -> out [rows, dim] fp32, dim 32, 64 or 128 (hadamard_kernels.cu).
cudaError_t launch_hadamard_rotate(const void* x, DType dtype, float* out, int64_t rows, int dim,
                                   cudaStream_t stream);
// QGMMA kernel for 32 or 64 heads when tensor_cores (indexer_qgmma_kernels.cu), else SIMT.
cudaError_t launch_indexer_logits(const IndexerLogitsArgs& args, bool tensor_cores, cudaStream_t stream);
bool indexer_logits_qgmma_supports(int64_t heads);
cudaError_t launch_indexer_logits_qgmma(const IndexerLogitsArgs& args, cudaStream_t stream);
cudaError_t launch_topk_indices(const TopkArgs& args, cudaStream_t stream);
// SIMT kernel (sparse_mla_kernels.cu) and tensor-core kernel (sparse_mla_hgmma_kernels.cu).
cudaError_t launch_sparse_mla(const SparseMlaArgs& args, cudaStream_t stream);
cudaError_t launch_sparse_mla_hgmma(const SparseMlaArgs& args, cudaStream_t stream);
// Split-KV decode: the pieces (grid parts x sq x head groups; same kernels' bodies over key ranges),
// then the LSE merge of the rows in several pieces (sparse_mla_combine_kernels.cu).
cudaError_t launch_sparse_mla_split(const SparseMlaArgs& args, const SparseSplitArgs& split, cudaStream_t stream);
cudaError_t launch_sparse_mla_hgmma_split(const SparseMlaArgs& args, const SparseSplitArgs& split, cudaStream_t stream);
cudaError_t launch_sparse_mla_combine(const SparseMlaArgs& args, const SparseSplitArgs& split, cudaStream_t stream);
// The plan itself (sparse_mla_metadata_kernels.cu): row_topk [rows] -> meta [parts, 8], num_splits [rows + 1].
cudaError_t launch_sparse_mla_metadata(const int32_t* row_topk, int64_t rows, int64_t parts, int32_t* meta,
                                       int32_t* num_splits, cudaStream_t stream);

}  // namespace glm52::attention
