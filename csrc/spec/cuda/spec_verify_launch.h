// Launchers of the speculative verification kernels (spec_verify_kernels.cu). Framework-free: raw
// pointers, sizes and a stream; the torch-facing checks live in spec_checks.h. Workspaces are
// allocated by the caller (sizes below), so the launches stay CUDA-graph safe.
#pragma once

#include "common/dtype.h"
#include "common/host_device.h"
#include "spec/spec_verify.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace glm52::spec {

struct GreedyVerifyArgs {
  const void* draft;       // [batch, n] int32 or int64 (draft_int64)
  bool draft_int64;
  const void* logits;      // [batch, n + 1, vocab] logits_dtype, contiguous
  DType logits_dtype;
  float* partial_value;    // [batch * (n + 1), splits] workspace: per-split maximum
  int32_t* partial_index;  // [batch * (n + 1), splits] workspace: its index
  int32_t* tokens;         // [batch, n + 1]
  int32_t* num_emitted;    // [batch]
  int64_t batch, n, vocab;
  int64_t splits;          // blocks per logits row (plan_greedy_splits)
};

struct SamplingVerifyArgs {
  const void* draft;          // [batch, n] int32 or int64 (draft_int64)
  bool draft_int64;
  const float* draft_probs;   // [batch, n, vocab] or nullptr (deterministic draft)
  const float* target_probs;  // [batch, n + 1, vocab]
  float* tile_totals;         // [batch, scan_tiles(vocab)] workspace
  int32_t* tokens;            // [batch, n + 1]
  int32_t* num_emitted;       // [batch]
  int64_t batch, n, vocab;
  uint64_t seed, offset;
  const int64_t* seed_ptr;    // [1] on the device, or nullptr: then seed above
  const int64_t* offset_ptr;  // [1] on the device, or nullptr: then offset above
};

// Splits of each logits row over blocks: enough blocks to fill the GPU (about 4 per SM) when there
// are few rows, never fewer than 2048 logits per block (and at most 65535 splits: the grid's y).
// The argmax order is total, so the split count never changes the result.
inline int64_t plan_greedy_splits(int64_t rows, int64_t vocab, int sm_count) {
  const int64_t want = rows > 0 ? ceil_div(4 * int64_t{sm_count}, rows) : 1;
  const int64_t most = greedy_max_splits(vocab);
  return want < 1 ? 1 : (want > most ? most : want);
}

// Both return the launch error (cudaSuccess when queued); an empty batch launches nothing.
cudaError_t launch_spec_verify_greedy(const GreedyVerifyArgs& args, cudaStream_t stream);
cudaError_t launch_spec_verify_sampling(const SamplingVerifyArgs& args, int sm_count, cudaStream_t stream);

}  // namespace glm52::spec
