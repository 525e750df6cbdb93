// The CUTLASS 3.x ptr-array grouped GEMM behind both configurations: TMA loads, a warp-specialized
// pipeline, FP8 wgmma, scales applied per 128-wide K block with fp32 promotion (the blockwise
// mainloop of CUTLASS example 68). Included only by the per-configuration translation units, each
// of which instantiates one TileTraits (build time and memory: one CUTLASS kernel per file).
#pragma once

#include "moe/cuda/fp8_grouped_gemm_sm90.cuh"

#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

namespace glm52::moe::sm90 {

template <GroupedGemmTile Tile>
struct TileTraits;

// Prefill and large decode batches: two consumer warpgroups split the 128 rows (64 each), so the
// FP32 accumulator and the blockwise promotion's second one fit their registers.
template <>
struct TileTraits<GroupedGemmTile::kM128> {
  using TileShape = cute::Shape<cute::_128, cute::_128, cute::_128>;
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8BlockScaledAccum;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;
};

// Decode (a few rows per expert): a group of m <= 64 rows leaves at least half of a 128-row tile's
// wgmma work on empty rows. Here one consumer warpgroup owns a whole 64-row tile and alternates
// with the other (ping-pong: one's epilogue overlaps the other's mainloop).
template <>
struct TileTraits<GroupedGemmTile::kM64> {
  using TileShape = cute::Shape<cute::_64, cute::_128, cute::_128>;
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8BlockScaledAccum;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong;
};

template <GroupedGemmTile Tile>
struct GroupedGemm {
  using Traits = TileTraits<Tile>;
  using TileShape = typename Traits::TileShape;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;

  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      void, LayoutD*, kAlignD,  // no source operand C
      ElementD, LayoutD*, kAlignD, typename Traits::EpilogueSchedule,
      cutlass::epilogue::fusion::LinearCombination<ElementD, float, void, float>>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementA, cute::tuple<LayoutA*, LayoutSFA*>, kAlignAB,
      ElementB, cute::tuple<LayoutB*, LayoutSFB*>, kAlignAB, float, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename CollectiveEpilogue::SharedStorage))>,
      typename Traits::KernelSchedule>::CollectiveOp;

  using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static_assert(std::is_same_v<typename Kernel::InternalStrideA, StrideA>, "group arrays hold the kernel's strides");
  static_assert(std::is_same_v<typename Kernel::InternalStrideB, StrideB>, "group arrays hold the kernel's strides");
  static_assert(std::is_same_v<typename Kernel::InternalStrideD, StrideD>, "group arrays hold the kernel's strides");
  static_assert(cute::size<0>(TileShape{}) <= kGroupedGemmMAlignment, "contiguous segments start on a tile boundary");

  static typename Gemm::Arguments arguments(const GroupArrays& g, int64_t groups, int sm_count) {
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
};

template <GroupedGemmTile Tile>
int64_t cutlass_workspace_bytes(int64_t groups, int sm_count) {
  using G = GroupedGemm<Tile>;
  return static_cast<int64_t>(G::Gemm::get_workspace_size(G::arguments(GroupArrays{}, groups, sm_count)));
}

template <GroupedGemmTile Tile>
cudaError_t run_grouped_gemm(const GroupArrays& g, int64_t groups, int sm_count, void* cutlass_workspace,
                             cudaStream_t stream) {
  using G = GroupedGemm<Tile>;
  typename G::Gemm gemm;
  const auto args = G::arguments(g, groups, sm_count);
  if (gemm.can_implement(args) != cutlass::Status::kSuccess) return cudaErrorInvalidConfiguration;
  if (gemm.initialize(args, cutlass_workspace, stream) != cutlass::Status::kSuccess) return cudaErrorUnknown;
  if (gemm.run(stream) != cutlass::Status::kSuccess) return cudaErrorLaunchFailure;
  return cudaGetLastError();
}

}  // namespace glm52::moe::sm90
