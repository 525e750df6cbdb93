// Which CUTLASS configuration the FP8 grouped GEMM runs, and how much device workspace it needs.
// Kept apart from the kernel bodies (DeepGEMM style): pure host code without CUDA or torch types,
// so the CPU build registers the same queries and the tests exercise the choice without a GPU.
#pragma once

#include "common/host_device.h"

#include <cstdint>

namespace glm52::moe {

// Which rows each group covers, decided on the device from these (no host sync).
enum class GroupedLayout {
  kContiguous,  // a [m, k]; group e = the rows with m_indices == e (contiguous); -1 rows -> zeros
  kMasked,      // a [groups, m, k]; group e = rows [e*m, e*m + clamp(masked_m[e], 0, m))
  kDense,       // a [m, k]; one group, b [n, k]
};

// The CUTLASS configurations, one instantiation each in its own translation unit.
enum class GroupedGemmTile {
  kM128,  // 128x128x128 tile, cooperative: two consumer warpgroups split the tile's M
  kM64,   // 64x128x128 tile, ping-pong: each consumer warpgroup owns whole tiles in turn
};

// Up to this many rows per group the 64-row tile: a group of m <= 64 rows fills a 128-row tile at
// most half, so the 128 tile wastes half its tensor-core work and runs half as many CTAs.
constexpr int64_t kSmallTileMaxM = 64;

// The configuration for a launch. m_hint: the masked layout's expected_m (the typical rows per
// expert), the dense layout's M (known on the host). The contiguous layout always takes the
// 128-row tile: its segments are aligned to 128 rows (grouped_gemm_m_alignment(), the prefill
// path where segments are long) and it has no hint of the rows per expert.
inline GroupedGemmTile select_grouped_gemm_tile(GroupedLayout layout, int64_t m_hint) {
  if (layout == GroupedLayout::kContiguous) return GroupedGemmTile::kM128;
  return m_hint <= kSmallTileMaxM ? GroupedGemmTile::kM64 : GroupedGemmTile::kM128;
}

inline const char* grouped_gemm_tile_name(GroupedGemmTile tile) {
  return tile == GroupedGemmTile::kM64 ? "64x128x128_pingpong" : "128x128x128_cooperative";
}

// --- device workspace: the per-group argument arrays, then CUTLASS's own workspace ---
//
// Bounds, not exact sizes, so they need no CUTLASS types (the CPU build computes them too); the
// CUDA code static_asserts the per-group bound and checks CUTLASS's exact need against its part.

constexpr int64_t kGroupArrays = 13;                // problem, 5 pointers, 3 strides, 2 scale layouts, first, count
constexpr int64_t kGroupArrayBytesPerGroup = 256;   // >= the sum of the 13 element sizes
constexpr int kMaxGemmSmCount = 144;                // a full GH100; launches on more SMs use this many CTAs
constexpr int64_t kCutlassBytesPerSm = 4 * 128;     // TMA descriptors per SM: A, B and up to two for D
constexpr int64_t kCutlassAlignment = 128;          // where CUTLASS's part starts (TMA descriptors)

GLM52_HD int64_t grouped_gemm_arrays_bytes(int64_t groups) {
  return groups * kGroupArrayBytesPerGroup + 16 * kGroupArrays;  // 16: each array starts 16-byte aligned
}

GLM52_HD int64_t grouped_gemm_cutlass_bytes_bound() { return kMaxGemmSmCount * kCutlassBytesPerSm; }

// Bytes of workspace a grouped GEMM launch over `groups` groups uses at most, for either tile:
// the arrays, then CUTLASS's part at the next kCutlassAlignment boundary of the actual address.
GLM52_HD int64_t grouped_gemm_workspace_bytes(int64_t groups) {
  return grouped_gemm_arrays_bytes(groups) + kCutlassAlignment + grouped_gemm_cutlass_bytes_bound();
}

}  // namespace glm52::moe
