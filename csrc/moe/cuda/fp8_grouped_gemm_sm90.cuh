// What the FP8 grouped GEMM's setup (fp8_grouped_gemm_sm90.cu) and its CUTLASS configurations
// (fp8_grouped_gemm_sm90_m*.cu, one instantiation per translation unit) share: the element and
// layout types, the per-group argument arrays, and the entry point of each configuration. Only
// CuTe/CUTLASS type headers here; the kernel templates live in fp8_grouped_gemm_sm90_kernel.cuh.
//
// Scale layouts match the op contract directly, no transposes: a_scale [rows, K/128] is the
// K-major SFA of granularity (1, 128) and b_scale [N/128, K/128] the K-major SFB of (128, 128).
// Both stay K-major for every tile: the SM90 grouped mainloop rebuilds each group's scale layout
// from that group's M, which an MN-major SFA (its K-block stride is M) would break.
#pragma once

#include "moe/moe_gemm_config.h"
#include "moe/moe_layout.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/detail/blockwise_scale_layout.hpp>
#include <cutlass/detail/layout.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>

#include <cuda_runtime_api.h>

#include <cstdint>

namespace glm52::moe::sm90 {

using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M, N, K) per group
using Problem = typename ProblemShape::UnderlyingProblemShape;
using ElementA = cutlass::float_e4m3_t;
using ElementB = cutlass::float_e4m3_t;
using ElementD = cutlass::bfloat16_t;
using LayoutA = cutlass::layout::RowMajor;     // a [rows, K], K contiguous
using LayoutB = cutlass::layout::ColumnMajor;  // b [N, K], K contiguous (the checkpoint layout)
using LayoutD = cutlass::layout::RowMajor;     // out [rows, N]
constexpr int kAlignAB = 16;                   // elements per 16-byte access
constexpr int kAlignD = 8;

// One scale per row per 128 columns of a (ScaleGranularityM = 1: every M tile, 64 or 128 rows,
// holds whole granules), one per 128 x 128 block of b.
using ScaleConfig = cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128, cute::GMMA::Major::K, cute::GMMA::Major::K>;
using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

// The ptr-array kernels' per-group strides (the configurations static_assert they match).
using StrideA = cute::remove_pointer_t<cutlass::detail::TagToStrideA_t<LayoutA*>>;
using StrideB = cute::remove_pointer_t<cutlass::detail::TagToStrideB_t<LayoutB*>>;
using StrideD = cute::remove_pointer_t<cutlass::detail::TagToStrideC_t<LayoutD*>>;

// The per-group argument arrays the kernel reads, carved from the device workspace.
struct GroupArrays {
  Problem* problems;
  const ElementA** a;
  const ElementB** b;
  ElementD** d;
  const float** sfa;
  const float** sfb;
  StrideA* stride_a;
  StrideB* stride_b;
  StrideD* stride_d;
  LayoutSFA* layout_sfa;
  LayoutSFB* layout_sfb;
  int32_t* first;  // contiguous layout: smallest row of each group
  int32_t* count;  // contiguous layout: rows of each group
};

static_assert(sizeof(Problem) + 5 * sizeof(void*) + sizeof(StrideA) + sizeof(StrideB) + sizeof(StrideD) +
                      sizeof(LayoutSFA) + sizeof(LayoutSFB) + 2 * sizeof(int32_t) <=
                  kGroupArrayBytesPerGroup,
              "moe_gemm_config.h's workspace bound must cover the per-group arrays");

// One CUTLASS configuration: the group arrays already hold every group's problem on the device.
template <GroupedGemmTile Tile>
cudaError_t run_grouped_gemm(const GroupArrays& g, int64_t groups, int sm_count, void* cutlass_workspace,
                             cudaStream_t stream);

// Bytes of CUTLASS workspace one configuration needs (host arithmetic; no launch).
template <GroupedGemmTile Tile>
int64_t cutlass_workspace_bytes(int64_t groups, int sm_count);

// Each configuration is instantiated in its own translation unit only.
extern template cudaError_t run_grouped_gemm<GroupedGemmTile::kM128>(const GroupArrays&, int64_t, int, void*, cudaStream_t);
extern template cudaError_t run_grouped_gemm<GroupedGemmTile::kM64>(const GroupArrays&, int64_t, int, void*, cudaStream_t);
extern template int64_t cutlass_workspace_bytes<GroupedGemmTile::kM128>(int64_t, int);
extern template int64_t cutlass_workspace_bytes<GroupedGemmTile::kM64>(int64_t, int);

}  // namespace glm52::moe::sm90
