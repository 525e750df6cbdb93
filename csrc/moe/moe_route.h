// Expert selection of the MoE router (DESIGN §2.1), shared by the CPU twin and the CUDA kernel.
//
// route_token() runs on a *team*: the CUDA kernel passes a warp (32 lanes, shuffle reductions),
// the CPU twin a team of one lane whose reductions are the identity. Lane l owns experts
// l, l + size, l + 2 * size, ... and groups likewise; everything else (scores, the order of
// candidates, tie breaking, the weight sum) is this one function, so the CPU tests run the
// kernel's selection logic. Framework-free (host and device).
#pragma once

#include "common/host_device.h"

#include <cmath>
#include <cstdint>

namespace glm52::moe {

constexpr int kRouteMaxExperts = 1024;  // scratch of one token: kRouteMaxExperts floats
constexpr int kRouteMaxGroups = 32;     // kept groups are a 32-bit mask
constexpr int kRouteMaxTopK = 32;

struct RouteParams {
  int num_experts;
  int top_k;
  int n_group;     // experts split into n_group equal groups (1: no group limit)
  int topk_group;  // groups kept
  float scaling;   // routed_scaling_factor
  bool renormalize;
};

GLM52_HD float route_sigmoid(float logit) { return 1.0f / (1.0f + expf(-logit)); }

// Total order of candidates as one integer: higher value first, then the lower id (ties to the
// lower expert or group id). 0 is below every candidate: "nothing left".
GLM52_HD uint64_t route_key(float value, int id) {
  uint32_t bits = float_to_bits(value + 0.0f);  // + 0.0f folds -0 into +0
  bits = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);  // IEEE order as unsigned order
  return (static_cast<uint64_t>(bits) << 32) | (0xffffffffu - static_cast<uint32_t>(id));
}

GLM52_HD int route_key_id(uint64_t key) { return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key)); }

GLM52_HD uint64_t max_key(uint64_t a, uint64_t b) { return a > b ? a : b; }

// Group score: the sum of the two largest biased scores of group g (a group of one: that score).
GLM52_HD float group_top2_sum(const float* choice, int g, int group_size) {
  uint64_t first = 0, second = 0;
  for (int i = 0; i < group_size; ++i) {
    const int e = g * group_size + i;
    const uint64_t key = route_key(choice[e], e);
    if (key > first) {
      second = first;
      first = key;
    } else if (key > second) {
      second = key;
    }
  }
  const float top = choice[route_key_id(first)];
  return group_size > 1 ? top + choice[route_key_id(second)] : top;
}

// Selects one token's experts. logits/bias [num_experts] fp32; choice and group_score are the
// team's scratch ([num_experts], [n_group]); writes weights/ids [top_k] (slot j = j-th best).
// Preconditions (checked by the caller): top_k <= topk_group * num_experts / n_group and the
// limits above. NaN logits give unspecified ids in [0, num_experts), never out of range.
#if defined(__CUDACC__)
#pragma nv_exec_check_disable  // Team's reductions are __device__ for the warp, host for SerialTeam
#endif
template <typename Team>
GLM52_HD void route_token(const Team& team, const float* logits, const float* bias, const RouteParams& p,
                          float* choice, float* group_score, float* weights, int32_t* ids) {
  team.sync();  // the scratch may still be read by the previous token's lanes
  for (int e = team.lane; e < p.num_experts; e += team.size) choice[e] = route_sigmoid(logits[e]) + bias[e];
  team.sync();

  // Group limit: keep the topk_group groups with the best top-2 sums; the rest drop out.
  uint32_t kept = 0xffffffffu;
  const int group_size = p.num_experts / p.n_group;
  if (p.n_group > 1) {
    for (int g = team.lane; g < p.n_group; g += team.size) group_score[g] = group_top2_sum(choice, g, group_size);
    team.sync();
    kept = 0;
    uint64_t last = ~uint64_t{0};
    for (int r = 0; r < p.topk_group; ++r) {
      uint64_t best = 0;
      for (int g = team.lane; g < p.n_group; g += team.size) {
        const uint64_t key = route_key(group_score[g], g);
        if (key < last) best = max_key(best, key);
      }
      last = team.max(best);
      kept |= 1u << route_key_id(last);
    }
  }

  // Top-k over the kept experts: round j takes the best candidate strictly below round j-1's
  // winner, so no per-expert state is needed and every lane knows each winner.
  uint64_t last = ~uint64_t{0};
  float sum = 0.0f;
  for (int j = 0; j < p.top_k; ++j) {
    uint64_t best = 0;
    for (int e = team.lane; e < p.num_experts; e += team.size) {
      if (!((kept >> (e / group_size)) & 1u)) continue;
      const uint64_t key = route_key(choice[e], e);
      if (key < last) best = max_key(best, key);
    }
    last = team.max(best);
    const int id = route_key_id(last);
    const float w = route_sigmoid(logits[id]);  // the unbiased score
    sum += w;                                   // in slot order, on every lane alike
    if (j % team.size == team.lane) {
      ids[j] = id;
      weights[j] = w;
    }
  }
  // Each lane rescales the slots it wrote: w / (sum + 1e-20) * scaling, as the reference does.
  for (int j = team.lane; j < p.top_k; j += team.size)
    weights[j] = (p.renormalize ? div_rn(weights[j], sum + 1e-20f) : weights[j]) * p.scaling;
}

// The CPU twin's team: one lane that owns every expert.
struct SerialTeam {
  static constexpr int size = 1;
  static constexpr int lane = 0;
  uint64_t max(uint64_t v) const { return v; }
  void sync() const {}
};

}  // namespace glm52::moe
