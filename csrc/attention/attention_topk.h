// Radix selection of the k largest finite entries of a row, shared by the CPU twin and the CUDA
// kernel (which runs the same passes with a block-wide histogram). No sort of the row:
//
//   1. keys: each finite float maps to a uint32 whose unsigned order is the float order;
//   2. four passes, one 8-bit digit each (most significant first): histogram the digit of the
//      candidates (keys that match the prefix chosen so far), walk the bins from the top to the
//      bin holding the k-th largest, fix that digit; after the last pass the prefix is the k-th
//      largest key itself (the threshold) and `ties` says how many keys equal to it are taken;
//   3. compaction in column order: a key is taken if it is above the threshold, or equal to it and
//      fewer than `ties` equal keys came before it (ties go to the lower column). Its output
//      position is (#greater before it) + min(#equal before it, ties), so the output lists the
//      selected columns in increasing order, -1 padded: identical on CPU and GPU.
//
// A row with at most k finite entries takes them all (take_all).
#pragma once

#include "common/host_device.h"

namespace glm52::attention {

constexpr int kTopkRadixBits = 8;
constexpr int kTopkBins = 1 << kTopkRadixBits;
constexpr int kTopkPasses = 32 / kTopkRadixBits;

GLM52_HD bool topk_is_finite(float v) { return (float_to_bits(v) & 0x7f800000u) != 0x7f800000u; }

// Order-preserving map of a float to an unsigned key (negative floats reversed below positives).
GLM52_HD uint32_t topk_key(float v) {
  const uint32_t u = float_to_bits(v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Bin of `key` in pass p, or -1 when it does not match the prefix fixed by the earlier passes.
GLM52_HD int topk_bin(uint32_t key, int pass, uint32_t prefix) {
  const int shift = 32 - kTopkRadixBits * (pass + 1);
  if (pass > 0 && (key >> (shift + kTopkRadixBits)) != (prefix >> (shift + kTopkRadixBits))) return -1;
  return static_cast<int>((key >> shift) & (kTopkBins - 1));
}

// The part of row `row` that counts: columns [start, start + len) with start = row_starts[row]
// (0 without row_starts) and len = lengths[row] (all remaining columns without lengths), both
// clamped into the row. Selected columns are reported relative to start.
struct TopkWindow {
  int64_t start, len;
};

GLM52_HD TopkWindow topk_window(const int32_t* row_starts, const int32_t* lengths, int64_t row, int64_t cols) {
  int64_t start = row_starts ? row_starts[row] : 0;
  start = start < 0 ? 0 : (start > cols ? cols : start);
  int64_t len = lengths ? lengths[row] : cols - start;
  len = len < 0 ? 0 : (len > cols - start ? cols - start : len);
  return {start, len};
}

struct TopkSelection {
  bool take_all;       // the row has at most k finite entries
  uint32_t threshold;  // after the last pass: the k-th largest key
  uint32_t remaining;  // how many keys >= the current prefix are still to be taken (ties at the end)
};

GLM52_HD TopkSelection topk_begin(int64_t finite_count, int64_t k) {
  return {finite_count <= k, 0u, static_cast<uint32_t>(finite_count <= k ? 0 : k)};
}

// One pass's decision from its histogram: the highest bin b such that the candidates in bins
// above b number fewer than `remaining`; those are all taken, the rest is looked for inside b.
GLM52_HD void topk_select_bin(TopkSelection& sel, const uint32_t* hist, int pass) {
  uint32_t above = 0;
  int bin = kTopkBins - 1;
  while (bin > 0 && above + hist[bin] < sel.remaining) above += hist[bin--];
  sel.remaining -= above;
  sel.threshold |= static_cast<uint32_t>(bin) << (32 - kTopkRadixBits * (pass + 1));
}

// Whether a finite key is above the threshold (taken regardless of ties), or equal to it.
GLM52_HD bool topk_greater(const TopkSelection& sel, uint32_t key) { return sel.take_all || key > sel.threshold; }
GLM52_HD bool topk_equal(const TopkSelection& sel, uint32_t key) { return !sel.take_all && key == sel.threshold; }

// Output position of a taken key from the counts of greater and equal keys before it in the row;
// -1 when an equal key is beyond the ties to take.
GLM52_HD int64_t topk_position(const TopkSelection& sel, bool greater, int64_t greater_before, int64_t equal_before) {
  const int64_t ties_before = equal_before < sel.remaining ? equal_before : sel.remaining;
  if (greater) return greater_before + ties_before;
  return equal_before < sel.remaining ? greater_before + ties_before : -1;
}

}  // namespace glm52::attention
