// The FP8 block-scaled GEMM of the MoE family on Hopper: one CUTLASS 3.x ptr-array grouped GEMM
// (TMA loads, warp-specialized cooperative pipeline, FP8 wgmma, scales applied per 128-wide K block
// with fp32 promotion: KernelPtrArrayTmaWarpSpecializedCooperativeFP8BlockScaledAccum, as in
// CUTLASS example 68) serves all three layouts: contiguous (experts' row segments), masked
// ([E, m_max, K] with counts on the device) and dense (one group). Small setup kernels turn the
// layout into per-group problem sizes, pointers, strides and scale layouts on the device, so no
// layout needs a host sync. One CUTLASS instantiation in this translation unit (build time).
//
// Scale layouts match the op contract directly, no transposes: a_scale [rows, K/128] is the
// K-major SFA of granularity (1, 128) and b_scale [N/128, K/128] the K-major SFB of (128, 128).
#include "moe/cuda/moe_launch.h"
#include "moe/moe_layout.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/detail/blockwise_scale_layout.hpp>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include <algorithm>
#include <climits>

namespace glm52::moe {
namespace {

using namespace cute;

using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K) per group
using ElementA = cutlass::float_e4m3_t;
using ElementB = cutlass::float_e4m3_t;
using ElementD = cutlass::bfloat16_t;
using LayoutA = cutlass::layout::RowMajor;     // a [rows, K], K contiguous
using LayoutB = cutlass::layout::ColumnMajor;  // b [N, K], K contiguous (the checkpoint layout)
using LayoutD = cutlass::layout::RowMajor;     // out [rows, N]
constexpr int kAlignAB = 16;                   // elements per 16-byte access
constexpr int kAlignD = 8;

using TileShape = Shape<_128, _128, _128>;  // M tile = kGroupedGemmMAlignment
using ClusterShape = Shape<_1, _1, _1>;
using ScaleConfig = cutlass::detail::Sm90BlockwiseScaleConfig<1, 128, 128, cute::GMMA::Major::K, cute::GMMA::Major::K>;
using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());
static_assert(size<0>(TileShape{}) == kGroupedGemmMAlignment, "the M tile is what grouped_gemm_m_alignment() reports");

using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float,
    void, LayoutD*, kAlignD,  // no source operand C
    ElementD, LayoutD*, kAlignD, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
    cutlass::epilogue::fusion::LinearCombination<ElementD, float, void, float>>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cute::tuple<LayoutA*, LayoutSFA*>, kAlignAB,
    ElementB, cute::tuple<LayoutB*, LayoutSFB*>, kAlignAB, float, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8BlockScaledAccum>::CollectiveOp;

using GemmKernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

using StrideA = typename GemmKernel::InternalStrideA;
using StrideB = typename GemmKernel::InternalStrideB;
using StrideD = typename GemmKernel::InternalStrideD;
using Problem = typename ProblemShape::UnderlyingProblemShape;

// The per-group argument arrays the kernel reads, carved from one device workspace.
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

// Lays the arrays out from `base` (nullptr: only measures). Returns the bytes used.
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

typename Gemm::Arguments gemm_arguments(const GroupArrays& g, int64_t groups, int sm_count) {
  cutlass::KernelHardwareInfo hw;
  cudaGetDevice(&hw.device_id);
  hw.sm_count = sm_count;
  typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGrouped,
                                {static_cast<int>(groups), g.problems, nullptr},  // sizes on the device only
                                {g.a, g.stride_a, g.b, g.stride_b, g.sfa, g.layout_sfa, g.sfb, g.layout_sfb},
                                {{}, nullptr, g.stride_d, g.d, g.stride_d},
                                hw};
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = 0.0f;
  return args;
}

}  // namespace

int64_t grouped_gemm_workspace_bytes(int64_t groups) { return carve(nullptr, groups, nullptr); }

int64_t grouped_gemm_cutlass_workspace_bytes(int64_t groups, int sm_count) {
  GroupArrays none{};
  return static_cast<int64_t>(Gemm::get_workspace_size(gemm_arguments(none, groups, sm_count)));
}

cudaError_t launch_fp8_grouped_gemm(const GroupedGemmArgs& a, cudaStream_t stream) {
  if (a.groups == 0 || a.m == 0 || a.n == 0) return cudaSuccess;
  if (a.k == 0) return cudaErrorInvalidValue;  // no K block: the caller writes the zeros itself
  GroupArrays g;
  carve(static_cast<char*>(a.workspace), a.groups, &g);
  const unsigned group_blocks = static_cast<unsigned>(ceil_div(a.groups, 128));
  if (a.layout == GroupedLayout::kContiguous) {
    grouped_gemm_reset_kernel<<<group_blocks, 128, 0, stream>>>(g, a.groups);
    grouped_gemm_scan_rows_kernel<<<static_cast<unsigned>(std::min<int64_t>(a.m, 65535)), 128, 0, stream>>>(a, g);
  }
  grouped_gemm_problems_kernel<<<group_blocks, 128, 0, stream>>>(a, g);
  if (cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;

  Gemm gemm;
  const auto args = gemm_arguments(g, a.groups, a.sm_count);
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidConfiguration;
  if (gemm.initialize(args, a.cutlass_workspace, stream) != cutlass::Status::kSuccess) return cudaErrorUnknown;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

}  // namespace glm52::moe
