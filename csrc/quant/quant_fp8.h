// FP8 (e4m3) quantization math shared by the CPU twins and the CUDA kernels: scales, clamping,
// how a row splits into groups, and which 16-byte vectors of a group each lane of a team owns.
// Framework-free (host and device).
#pragma once

#include "common/host_device.h"

namespace glm52::quant {

constexpr float kE4m3Max = 448.0f;  // largest finite float8_e4m3fn
constexpr float kAmaxEps = 1e-10f;  // amax floor: an all-zero group gets zero codes, not NaN

// The smallest power of two >= s, for positive normal s: the UE8M0 scale format (exponent only).
GLM52_HD float round_up_to_pow2(float s) {
  uint32_t bits = float_to_bits(s);
  uint32_t exponent = (bits >> 23) & 0xffu;
  if (bits & 0x7fffffu) ++exponent;
  return bits_to_float(exponent << 23);
}

// Scale of a group from its amax: amax / 448, or its UE8M0 rounding (never smaller, so |x|/scale
// still fits in e4m3).
GLM52_HD float group_scale(float amax, bool ue8m0) {
  float scale = (amax > kAmaxEps ? amax : kAmaxEps) / kE4m3Max;
  return ue8m0 ? round_up_to_pow2(scale) : scale;
}

// x / scale clamped to the e4m3 range; the comparisons keep NaN as NaN.
GLM52_HD float scaled_for_e4m3(float x, float scale) {
  float v = div_rn(x, scale);
  return v > kE4m3Max ? kE4m3Max : (v < -kE4m3Max ? -kE4m3Max : v);
}

// Group g of a [rows, cols] matrix cut into ceil(cols / group_size) groups per row.
struct GroupSpan {
  int64_t row;
  int64_t group;  // index within the row (the scale's column)
  int64_t col0;   // first column
  int64_t len;    // group_size, or less for the last group of a row
};

GLM52_HD GroupSpan group_span(int64_t g, int64_t cols, int64_t group_size) {
  int64_t groups_per_row = ceil_div(cols, group_size);
  int64_t row = g / groups_per_row;
  int64_t group = g - row * groups_per_row;
  int64_t col0 = group * group_size;
  int64_t len = cols - col0 < group_size ? cols - col0 : group_size;
  return {row, group, col0, len};
}

// A team of `lanes` threads (a power of two <= 32) quantizes one group with 16-byte loads:
// lane l owns vectors l, l + lanes, l + 2*lanes, ... (at most vecs_per_lane of them), each of
// elems_per_vec elements. vectorized == false means the scalar fallback (any size/alignment).
struct QuantTeamPlan {
  bool vectorized;
  int lanes;
  int vecs_per_lane;
  int elems_per_vec;
};

constexpr int kMaxVecsPerLane = 8;

// Host-side choice of the team shape; every condition of the vector path is checked here.
inline QuantTeamPlan plan_quant_team(int elem_bytes, int64_t cols, int64_t group_size,
                                     int64_t row_stride, uint64_t x_addr, uint64_t q_addr) {
  const int elems = 16 / elem_bytes;
  const bool aligned = x_addr % 16 == 0 && q_addr % elems == 0 && cols % elems == 0 &&
                       group_size % elems == 0 && row_stride % elems == 0;
  const int64_t vecs = group_size / elems;
  int lanes = 1;
  while (lanes < 32 && lanes < vecs) lanes *= 2;
  int64_t per_lane = ceil_div(vecs, lanes);
  int vecs_per_lane = 1;
  while (vecs_per_lane < per_lane) vecs_per_lane *= 2;
  if (!aligned || vecs_per_lane > kMaxVecsPerLane) return {false, 32, 0, 1};
  return {true, lanes, vecs_per_lane, elems};
}

// First element (within the group) of the v-th vector owned by team lane `lane`.
GLM52_HD int64_t team_vector_start(const QuantTeamPlan& plan, int lane, int v) {
  return (static_cast<int64_t>(v) * plan.lanes + lane) * plan.elems_per_vec;
}

// Offset of the block scale covering element (b, r, c) of a [batch, rows, cols] weight cut into
// block_rows x block_cols tiles (edge tiles partial): scale_inv is [batch, ceil(rows/br), ceil(cols/bc)].
GLM52_HD int64_t block_scale_offset(int64_t b, int64_t r, int64_t c, int64_t rows, int64_t cols,
                                    int64_t block_rows, int64_t block_cols) {
  const int64_t nbr = ceil_div(rows, block_rows), nbc = ceil_div(cols, block_cols);
  return (b * nbr + r / block_rows) * nbc + c / block_cols;
}

}  // namespace glm52::quant
