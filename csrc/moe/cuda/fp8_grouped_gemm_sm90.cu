// The FP8 block-scaled GEMM of the MoE family on Hopper: a CUTLASS 3.x ptr-array grouped GEMM in
// two configurations (fp8_grouped_gemm_sm90_m128.cu, _m64.cu; moe_gemm_config.h picks one per
// launch) serves all three layouts: contiguous (experts' row segments), masked ([E, m_max, K]
// with counts on the device) and dense (one group). This file holds what both share: small setup
// kernels turn the layout into per-group problem sizes, pointers, strides and scale layouts on
// the device, so no layout needs a host sync, then the chosen configuration runs.
#include "moe/cuda/fp8_grouped_gemm_sm90.cuh"
#include "moe/cuda/moe_launch.h"
#include "moe/moe_layout.h"

#include <algorithm>
#include <climits>

namespace glm52::moe {
namespace {

using namespace cute;
using namespace sm90;

// Lays the arrays out from `base` (nullptr: only measures). Returns the bytes used, at most
// grouped_gemm_arrays_bytes(groups).
int64_t carve(char* base, int64_t groups, GroupArrays* arrays) {
  int64_t offset = 0;
  auto take = [&](auto*& ptr, int64_t elem_bytes) {
    offset = round_up(offset, 16);
    ptr = reinterpret_cast<std::remove_reference_t<decltype(ptr)>>(base ? base + offset : nullptr);
    offset += elem_bytes * groups;
  };
  GroupArrays g{};
  take(g.problems, sizeof(Problem));
  take(g.a, sizeof(void*));
  take(g.b, sizeof(void*));
  take(g.d, sizeof(void*));
  take(g.sfa, sizeof(void*));
  take(g.sfb, sizeof(void*));
  take(g.stride_a, sizeof(StrideA));
  take(g.stride_b, sizeof(StrideB));
  take(g.stride_d, sizeof(StrideD));
  take(g.layout_sfa, sizeof(LayoutSFA));
  take(g.layout_sfb, sizeof(LayoutSFB));
  take(g.first, sizeof(int32_t));
  take(g.count, sizeof(int32_t));
  if (arrays) *arrays = g;
  return round_up(offset, 16);
}

__global__ void grouped_gemm_reset_kernel(GroupArrays g, int64_t groups) {
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < groups; e += gridDim.x * int64_t{blockDim.x}) {
    g.first[e] = INT_MAX;
    g.count[e] = 0;
  }
}

// Contiguous layout: each group's first row and row count (integer atomics: order-independent),
// and zeros on padding rows (ids outside [0, groups) included), one block per row.
__global__ void __launch_bounds__(128) grouped_gemm_scan_rows_kernel(GroupedGemmArgs a, GroupArrays g) {
  for (int64_t r = blockIdx.x; r < a.m; r += gridDim.x) {
    const int e = local_expert(a.m_indices[r], a.groups);
    if (e >= 0) {
      if (threadIdx.x == 0) {
        atomicMin(g.first + e, static_cast<int32_t>(r));
        atomicAdd(g.count + e, 1);
      }
      continue;
    }
    uint4* row = reinterpret_cast<uint4*>(a.out + r * a.n);  // n % 128 == 0: whole 16-byte vectors
    for (int64_t v = threadIdx.x; v < a.n / 8; v += blockDim.x) row[v] = make_uint4(0, 0, 0, 0);
  }
}

__global__ void grouped_gemm_problems_kernel(GroupedGemmArgs a, GroupArrays g) {
  const int64_t kb = a.k / 128, nb = a.n / 128;
  for (int64_t e = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; e < a.groups; e += gridDim.x * int64_t{blockDim.x}) {
    GroupRows rows{0, a.m};
    if (a.layout == GroupedLayout::kContiguous) rows = contiguous_group_rows(g.first[e], g.count[e]);
    if (a.layout == GroupedLayout::kMasked) rows = masked_group_rows(e, a.masked_m[e], a.m);
    const int m = static_cast<int>(rows.rows), n = static_cast<int>(a.n), k = static_cast<int>(a.k);
    g.problems[e] = Problem(m, n, k);
    g.a[e] = reinterpret_cast<const ElementA*>(a.a) + rows.row0 * a.k;
    g.sfa[e] = a.a_scale + rows.row0 * kb;
    g.b[e] = reinterpret_cast<const ElementB*>(a.b) + e * a.n * a.k;
    g.sfb[e] = a.b_scale + e * nb * kb;
    g.d[e] = reinterpret_cast<ElementD*>(a.out) + rows.row0 * a.n;
    StrideA sa{};
    get<0>(sa) = a.k;
    g.stride_a[e] = sa;
    StrideB sb{};
    get<0>(sb) = a.k;
    g.stride_b[e] = sb;
    StrideD sd{};
    get<0>(sd) = a.n;
    g.stride_d[e] = sd;
    g.layout_sfa[e] = ScaleConfig::tile_atom_to_shape_SFA(make_shape(m, n, k, 1));
    g.layout_sfb[e] = ScaleConfig::tile_atom_to_shape_SFB(make_shape(m, n, k, 1));
  }
}

}  // namespace

int64_t grouped_gemm_cutlass_workspace_bytes(GroupedGemmTile tile, int64_t groups, int sm_count) {
  return tile == GroupedGemmTile::kM64 ? sm90::cutlass_workspace_bytes<GroupedGemmTile::kM64>(groups, sm_count)
                                       : sm90::cutlass_workspace_bytes<GroupedGemmTile::kM128>(groups, sm_count);
}

cudaError_t launch_fp8_grouped_gemm(const GroupedGemmArgs& a, cudaStream_t stream) {
  if (a.groups == 0 || a.m == 0 || a.n == 0) return cudaSuccess;
  if (a.k == 0) return cudaErrorInvalidValue;  // no K block: the caller writes the zeros itself
  sm90::GroupArrays g;
  carve(static_cast<char*>(a.workspace), a.groups, &g);
  const unsigned group_blocks = static_cast<unsigned>(ceil_div(a.groups, 128));
  if (a.layout == GroupedLayout::kContiguous) {
    grouped_gemm_reset_kernel<<<group_blocks, 128, 0, stream>>>(g, a.groups);
    grouped_gemm_scan_rows_kernel<<<static_cast<unsigned>(std::min<int64_t>(a.m, 65535)), 128, 0, stream>>>(a, g);
  }
  grouped_gemm_problems_kernel<<<group_blocks, 128, 0, stream>>>(a, g);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;

  // CUTLASS's part of the workspace: its TMA descriptors want an aligned start.
  const auto arrays_end = static_cast<int64_t>(reinterpret_cast<uintptr_t>(a.workspace)) + grouped_gemm_arrays_bytes(a.groups);
  void* cutlass_workspace = reinterpret_cast<void*>(static_cast<uintptr_t>(round_up(arrays_end, kCutlassAlignment)));
  return a.tile == GroupedGemmTile::kM64
             ? sm90::run_grouped_gemm<GroupedGemmTile::kM64>(g, a.groups, a.sm_count, cutlass_workspace, stream)
             : sm90::run_grouped_gemm<GroupedGemmTile::kM128>(g, a.groups, a.sm_count, cutlass_workspace, stream);
}

}  // namespace glm52::moe
