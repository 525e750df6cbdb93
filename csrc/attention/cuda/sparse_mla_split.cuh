// Device side of split-KV sparse MLA decode shared by the SIMT and HGMMA kernels: where a CTA's
// result goes, and the walk over the pieces of one part of the plan (attention_split.h).
#pragma once

#include "attention/attention_split.h"
#include "attention/cuda/attention_launch.h"

namespace glm52::attention {

// Where a kernel body writes one query row's result: the op's bf16 out / lse at `row` when
// part_out is null, else the fp32 partial slot row `part_row` of the workspace.
struct SparseDest {
  float* part_out;   // [.., heads, 512] or nullptr
  float* part_lse;   // [.., heads]
  int64_t part_row;
};

// CTA (blockIdx.x = part, blockIdx.y = query token * head_groups + head group) runs the pieces of
// its part for that token: body(row, h0, key_begin, key_end, dest) once per batch row it touches.
// A __syncthreads separates pieces (the body reuses shared memory).
template <typename Body>
__device__ __forceinline__ void for_each_piece(const SparseMlaArgs& a, const SparseSplitArgs& s, int head_group_size,
                                               Body&& body) {
  const int64_t head_groups = ceil_div(a.heads, head_group_size);
  const int64_t token = blockIdx.y / head_groups, h0 = (blockIdx.y % head_groups) * head_group_size;
  const int32_t* meta = s.meta + int64_t{blockIdx.x} * kSplitMetaInts;
  const int64_t max_slots = split_max_slots(s.batch, s.parts);
  const SplitRows rows = split_part_rows(meta, s.batch);
  for (int64_t b = rows.first; b <= rows.last; ++b) {
    const SplitPiece piece = split_piece(meta, s.num_splits, b, a.topk, max_slots);
    const SparseDest dest = piece.slot < 0 ? SparseDest{nullptr, nullptr, 0}
                                           : SparseDest{s.part_out, s.part_lse, piece.slot * s.sq + token};
    __syncthreads();
    body(b * s.sq + token, h0, piece.key_begin, piece.key_end, dest);
  }
}

inline dim3 split_grid(const SparseMlaArgs& a, const SparseSplitArgs& s, int head_group_size) {
  return dim3(static_cast<unsigned>(s.parts), static_cast<unsigned>(s.sq * ceil_div(a.heads, head_group_size)));
}

}  // namespace glm52::attention
