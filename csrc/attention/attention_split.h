// Split-KV sparse MLA decode: the tile scheduler plan (FlashMLA's get_mla_metadata layout) and the
// log-sum-exp merge of partial results. Framework-free: the CPU twins and the CUDA kernels call
// these same functions, so the CPU tests exercise the device's split and merge arithmetic.
//
// The plan. Batch row b is expected to hold its valid indices among its first row_topk[b]
// (blocks_b = ceil(row_topk[b] / 64) blocks of kSplitBlock entries). Row b costs blocks_b +
// kSplitOverheadBlocks units (the overhead stands for the row's combine); the rows' units lie end
// to end on one line of `total` units, cut into num_parts spans of span = ceil(total / num_parts)
// units (the last spans may be short or empty). Part p owns units [p * span, min((p + 1) * span,
// total)). Its metadata row, int32 [kSplitMetaInts]:
//   [0] begin_row    first batch row it touches (rows for an empty part)
//   [1] begin_block  first block of begin_row it runs
//   [2] end_row      last batch row it touches, inclusive (rows for an empty part)
//   [3] end_block    one past the last block of end_row it runs
//   [4] begin_split  which piece of begin_row it runs (0 unless the part starts strictly inside it)
//   [5..7] 0
// A part start strictly inside a row (after its first unit) cuts it, so row b runs in
// num_splits[b + 1] - num_splits[b] pieces (num_splits int32 [rows + 1], num_splits[0] = 0): piece
// s of row b is written to partial slot num_splits[b] + s, at most rows + num_parts - 1 slots in
// all. A row in one piece is written straight to the output; the others are merged by LSE. A piece
// may hold no block (a cut inside a row's overhead units, or a row of length 0): its partial is
// out = 0, lse = -inf, which the merge ignores.
#pragma once

#include "common/host_device.h"

namespace glm52::attention {

constexpr int kSplitMetaInts = 8;       // ints per part (FlashMLA's TileSchedulerMetaDataSize)
constexpr int kSplitBlock = 64;         // top-k entries per planned block (= the HGMMA key tile)
constexpr int kSplitOverheadBlocks = 5; // a piece's fixed cost in blocks (FlashMLA's fixed overhead)

constexpr int64_t kSplitMaxRowTopk = int64_t{1} << 20;  // longer rows are planned as this long

GLM52_HD int64_t split_row_blocks(int64_t row_topk) {
  return row_topk > 0 ? ceil_div(row_topk < kSplitMaxRowTopk ? row_topk : kSplitMaxRowTopk, kSplitBlock) : 0;
}
GLM52_HD int64_t split_row_cost(int64_t row_topk) { return split_row_blocks(row_topk) + kSplitOverheadBlocks; }

// Most rows a plan takes: their units must fit int32 (the metadata's type).
constexpr int64_t kSplitMaxRows = 2147483647 / (kSplitMaxRowTopk / kSplitBlock + kSplitOverheadBlocks);

// Units per part; 0 when there are no rows (every part empty).
GLM52_HD int64_t split_span(int64_t total, int64_t num_parts) { return total > 0 ? ceil_div(total, num_parts) : 0; }

// The row holding unit `position` (< total): the first r with row_end[r] > position, by binary
// search over the inclusive prefix sums row_end[0..rows) of the row costs (`stride` ints apart).
GLM52_HD int64_t split_locate(const int32_t* row_end, int64_t stride, int64_t rows, int64_t position) {
  int64_t lo = 0, hi = rows - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (row_end[mid * stride] > position) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

// Metadata row of part p (layout above). row_end: inclusive prefix sums of the row costs;
// row_topk: the rows' lengths.
GLM52_HD void split_plan_part(int64_t p, int64_t num_parts, const int32_t* row_end, int64_t row_end_stride,
                              const int32_t* row_topk, int64_t rows, int32_t* meta) {
  for (int i = 0; i < kSplitMetaInts; ++i) meta[i] = 0;
  const int64_t total = rows > 0 ? row_end[(rows - 1) * row_end_stride] : 0;
  const int64_t span = split_span(total, num_parts);
  const int64_t begin = p * span;
  if (begin >= total) {
    meta[0] = meta[2] = static_cast<int32_t>(rows);
    return;
  }
  const int64_t end = begin + span < total ? begin + span : total;
  const int64_t br = split_locate(row_end, row_end_stride, rows, begin);
  const int64_t er = split_locate(row_end, row_end_stride, rows, end - 1);
  const int64_t b_start = row_end[br * row_end_stride] - split_row_cost(row_topk[br]);
  const int64_t e_start = row_end[er * row_end_stride] - split_row_cost(row_topk[er]);
  const int64_t b_blocks = split_row_blocks(row_topk[br]), e_blocks = split_row_blocks(row_topk[er]);
  meta[0] = static_cast<int32_t>(br);
  meta[1] = static_cast<int32_t>(begin - b_start < b_blocks ? begin - b_start : b_blocks);
  meta[2] = static_cast<int32_t>(er);
  meta[3] = static_cast<int32_t>(end - e_start < e_blocks ? end - e_start : e_blocks);
  // Parts q with q * span in (b_start, begin] start inside row br: the first is b_start / span + 1.
  meta[4] = static_cast<int32_t>(begin > b_start ? p - (b_start / span + 1) + 1 : 0);
}

// Pieces of a row whose units are [row_start, row_end): one plus the part starts strictly inside.
GLM52_HD int64_t split_row_pieces(int64_t row_start, int64_t row_end, int64_t span, int64_t num_parts) {
  if (span == 0) return 1;
  const int64_t first = row_start / span + 1;           // first part starting after row_start
  int64_t last = (row_end - 1) / span;                  // last part starting before row_end
  if (last > num_parts - 1) last = num_parts - 1;
  return 1 + (last >= first ? last - first + 1 : 0);
}

// Slots of partial results a plan can use at most (the workspace bound).
GLM52_HD int64_t split_max_slots(int64_t rows, int64_t num_parts) { return rows + num_parts; }

// Device workspace of a split decode of q [batch, sq, heads, 576] with a plan of num_parts parts:
// the partial outputs fp32 [slots, sq, heads, 512] at byte 0, then the partial lse fp32
// [slots, sq, heads] at split_workspace_lse_offset (16-byte aligned), slots = split_max_slots.
GLM52_HD int64_t split_workspace_lse_offset(int64_t batch, int64_t sq, int64_t heads, int64_t num_parts) {
  return ceil_div(split_max_slots(batch, num_parts) * sq * heads * 512 * 4, 16) * 16;
}
GLM52_HD int64_t split_workspace_bytes(int64_t batch, int64_t sq, int64_t heads, int64_t num_parts) {
  return split_workspace_lse_offset(batch, sq, heads, num_parts) +
         ceil_div(split_max_slots(batch, num_parts) * sq * heads * 4, 16) * 16;
}

// The rows part `meta` touches, clamped into [0, rows) (a corrupt plan runs less, never out of
// bounds); first > last for an empty part.
struct SplitRows {
  int64_t first, last;
};
GLM52_HD SplitRows split_part_rows(const int32_t* meta, int64_t rows) {
  const int64_t first = meta[0] < 0 ? 0 : meta[0];
  const int64_t last = meta[2] < rows - 1 ? meta[2] : rows - 1;
  return {first, last};
}

// The piece of `row` that part `meta` runs: its key range [key_begin, key_end) among the row's
// topk indices, and where its result goes (slot < 0: the row has one piece, so straight to the
// output). The plan only places the cuts: a row's first piece starts at key 0 and its last piece
// runs to key topk whatever row_topk said, so a plan never changes which indices are read (a row
// planned shorter than topk just puts its tail, typically the -1 padding, in its last piece).
// Everything is clamped: key ranges to [0, topk], slots to [0, max_slots).
struct SplitPiece {
  int64_t key_begin, key_end;
  int64_t slot;
};
GLM52_HD SplitPiece split_piece(const int32_t* meta, const int32_t* num_splits, int64_t row, int64_t topk,
                                int64_t max_slots) {
  const int64_t first = num_splits[row], count = num_splits[row + 1] - first;
  const bool begins_here = row == meta[0];
  const int64_t index = begins_here ? meta[4] : 0;
  const int64_t b0 = begins_here && index > 0 ? meta[1] : 0;
  const bool last = index >= count - 1;
  const int64_t end = !last && row == meta[2] ? int64_t{meta[3]} * kSplitBlock : topk;
  auto clamp_key = [topk](int64_t k) { return k < 0 ? 0 : (k > topk ? topk : k); };
  SplitPiece piece{clamp_key(b0 * kSplitBlock), clamp_key(end), -1};
  if (piece.key_end < piece.key_begin) piece.key_end = piece.key_begin;
  if (count > 1) {
    const int64_t slot = first + index;
    piece.slot = slot < 0 ? 0 : (slot >= max_slots ? max_slots - 1 : slot);
  }
  return piece;
}

// The slots [first, first + count) of a row's pieces, clamped into [0, max_slots); count <= 1
// means the row was written straight to the output.
struct SplitSlots {
  int64_t first, count;
};
GLM52_HD SplitSlots split_row_slots(const int32_t* num_splits, int64_t row, int64_t max_slots) {
  int64_t first = num_splits[row], count = num_splits[row + 1] - first;
  if (first < 0) first = 0;
  if (first > max_slots) first = max_slots;
  if (count > max_slots - first) count = max_slots - first;
  return {first, count};
}

}  // namespace glm52::attention
