// CUDA kernel of moe_route: one warp per token runs route_token() (moe_route.h, the CPU twin's
// selection logic) with shuffle reductions; the token's biased scores sit in shared memory so a
// lane can read a whole group for the group score.
#include "moe/cuda/moe_launch.h"
#include "moe/moe_route.h"

#include <algorithm>

namespace glm52::moe {
namespace {

constexpr int kWarps = 4;  // tokens per block

struct WarpTeam {
  static constexpr int size = 32;
  int lane;
  __device__ __forceinline__ uint64_t max(uint64_t v) const {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) v = max_key(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
  }
  __device__ __forceinline__ void sync() const { __syncwarp(); }
};

__global__ void __launch_bounds__(kWarps * 32) moe_route_kernel(RouteArgs a) {
  extern __shared__ float smem[];  // per warp: choice [num_experts], group score [kRouteMaxGroups]
  const int warp = threadIdx.x / 32;
  float* choice = smem + warp * (a.params.num_experts + kRouteMaxGroups);
  float* group_score = choice + a.params.num_experts;
  const WarpTeam team{static_cast<int>(threadIdx.x & 31)};
  const int64_t e = a.params.num_experts, k = a.params.top_k;
  for (int64_t t = blockIdx.x * int64_t{kWarps} + warp; t < a.tokens; t += gridDim.x * int64_t{kWarps})
    route_token(team, a.logits + t * e, a.bias, a.params, choice, group_score, a.weights + t * k, a.ids + t * k);
}

}  // namespace

cudaError_t launch_moe_route(const RouteArgs& a, cudaStream_t stream) {
  if (a.tokens == 0) return cudaSuccess;
  const size_t smem = sizeof(float) * kWarps * (a.params.num_experts + kRouteMaxGroups);
  const int64_t blocks = std::min<int64_t>(ceil_div(a.tokens, kWarps), 65535);
  moe_route_kernel<<<static_cast<unsigned>(blocks), kWarps * 32, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace glm52::moe
