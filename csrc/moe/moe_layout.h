// Index math of the expert-sorted layouts, shared by the CPU twins and the CUDA kernels:
// where moe_permute puts each (token, slot), which expert a permuted row belongs to, and which
// rows each expert's GEMM problem covers in the contiguous and masked layouts.
// Framework-free (host and device).
#pragma once

#include "common/host_device.h"

#include <cstdint>

namespace glm52::moe {

// The M tile of the CUDA grouped GEMM: each expert segment of the contiguous layout starts at a
// multiple of it (what grouped_gemm_m_alignment() reports).
constexpr int64_t kGroupedGemmMAlignment = 128;

// Routed entries per block of the permute kernels; the CPU twin walks the same chunks.
constexpr int kPermuteChunk = 256;

GLM52_HD int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// An expert id of ids/m_indices as a local expert, or -1 when it is not one of [0, num_experts)
// (padding, or another rank's expert under expert parallelism).
GLM52_HD int local_expert(int32_t id, int64_t num_experts) { return id >= 0 && id < num_experts ? id : -1; }

// Rows of moe_permute's output: a bound on sum_e round_up(count_e, alignment) that needs no
// counts (so no host sync): every used expert wastes at most alignment - 1 rows, and at most
// min(num_experts, routed) experts are used.
GLM52_HD int64_t permuted_rows_bound(int64_t routed, int64_t num_experts, int64_t alignment) {
  const int64_t used = routed < num_experts ? routed : num_experts;
  return round_up(routed + used * (alignment - 1), alignment);
}

// Permute chunks over `routed` entries (one block of the count and rank kernels each).
GLM52_HD int64_t permute_chunks(int64_t routed) { return ceil_div(routed, kPermuteChunk); }

// moe_permute's device workspace: int32 per-chunk counts [chunks, E] then the experts' counts [E]
// (the masked layout writes those to masked_m instead), then at a 16-byte boundary the int64
// segment starts [E + 1]. The CUDA entry point carves a caller's workspace with these offsets.
GLM52_HD int64_t permute_seg_start_offset(int64_t routed, int64_t num_experts) {
  return round_up(int64_t{4} * (permute_chunks(routed) * num_experts + num_experts), 16);
}

GLM52_HD int64_t permute_workspace_bytes(int64_t routed, int64_t num_experts) {
  return permute_seg_start_offset(routed, num_experts) + int64_t{8} * (num_experts + 1);
}

// Routed entries [begin, end) of permute chunk c (entries are flattened t * top_k + j).
GLM52_HD void permute_chunk_range(int64_t c, int64_t routed, int64_t* begin, int64_t* end) {
  *begin = c * kPermuteChunk;
  *end = routed < *begin + kPermuteChunk ? routed : *begin + kPermuteChunk;
}

// Turns column e of the per-chunk counts [chunks, num_experts] into exclusive prefixes over the
// chunks (in place) and returns expert e's total: where each chunk's rows of expert e start
// within the expert's segment.
GLM52_HD int32_t chunk_column_scan(int32_t* chunk_counts, int64_t chunks, int64_t num_experts, int64_t e) {
  int32_t running = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    int32_t* slot = chunk_counts + c * num_experts + e;
    const int32_t here = *slot;
    *slot = running;
    running += here;
  }
  return running;
}

// seg_start[num_experts + 1]: seg_start[e] is where expert e's segment begins,
// seg_start[e + 1] - seg_start[e] = round_up(count[e], alignment); seg_start[num_experts] is the
// first row of the tail padding. Sequential (integer sums: any order gives the same result).
GLM52_HD void segment_starts(const int32_t* count, int64_t num_experts, int64_t alignment, int64_t* seg_start) {
  int64_t row = 0;
  for (int64_t e = 0; e < num_experts; ++e) {
    seg_start[e] = row;
    row += round_up(count[e], alignment);
  }
  seg_start[num_experts] = row;
}

// The masked layout's segments: expert e's rows start at e * m_max (seg_start[num_experts] =
// num_experts * m_max). A rank at or past m_max has no row (bad routing: repeated experts).
GLM52_HD void masked_segment_starts(int64_t num_experts, int64_t m_max, int64_t* seg_start) {
  for (int64_t e = 0; e <= num_experts; ++e) seg_start[e] = e * m_max;
}

// The expert of permuted row `row`, or -1 for a padding row (a segment's tail or past the last
// segment): the last e with seg_start[e] <= row, found by binary search.
GLM52_HD int segment_row_expert(int64_t row, const int64_t* seg_start, const int32_t* count, int64_t num_experts) {
  int64_t lo = 0, hi = num_experts + 1;  // invariant: seg_start[lo] <= row < seg_start[hi] (hi: +inf)
  if (row < seg_start[0]) return -1;
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (seg_start[mid] <= row) lo = mid; else hi = mid;
  }
  if (lo == num_experts) return -1;
  return row - seg_start[lo] < count[lo] ? static_cast<int>(lo) : -1;
}

// The rows one expert's GEMM problem covers: [row0, row0 + rows).
struct GroupRows {
  int64_t row0;
  int64_t rows;
};

// Masked layout [E, m_max, K]: expert e owns rows [e * m_max, e * m_max + masked_m[e]), the count
// clamped to [0, m_max] so a bad count can never reach another expert's rows.
GLM52_HD GroupRows masked_group_rows(int64_t e, int32_t masked_m, int64_t m_max) {
  const int64_t rows = masked_m < 0 ? 0 : (masked_m > m_max ? m_max : masked_m);
  return {e * m_max, rows};
}

// Contiguous layout: expert e's first row and row count, gathered from m_indices (first = the
// smallest row with that expert, or 0 when it has none).
GLM52_HD GroupRows contiguous_group_rows(int64_t first, int32_t count) {
  return {count > 0 ? first : 0, count};
}

}  // namespace glm52::moe
