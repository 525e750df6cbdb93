// CPU twin of the router: route_token() (moe_route.h, the CUDA kernel's selection logic) on a
// one-lane team per token.
#include "moe/moe_checks.h"
#include "moe/moe_route.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

namespace glm52::moe {
namespace {

void moe_route_out_cpu(const at::Tensor& logits, const at::Tensor& bias, int64_t top_k, int64_t n_group,
                       int64_t topk_group, double routed_scaling_factor, bool renormalize, at::Tensor& weights,
                       at::Tensor& ids) {
  const RouteParams p = check_route(logits, bias, top_k, n_group, topk_group, routed_scaling_factor, renormalize);
  check_route_out(logits, top_k, weights, ids);
  const float* l = logits.const_data_ptr<float>();
  const float* b = bias.const_data_ptr<float>();
  float* w = weights.mutable_data_ptr<float>();
  int32_t* id = ids.mutable_data_ptr<int32_t>();
  at::parallel_for(0, logits.size(0), 16, [&](int64_t begin, int64_t end) {
    std::vector<float> choice(p.num_experts), group_score(p.n_group);
    for (int64_t t = begin; t < end; ++t)
      route_token(SerialTeam{}, l + t * p.num_experts, b, p, choice.data(), group_score.data(), w + t * p.top_k,
                  id + t * p.top_k);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(glm52, CPU, m) { m.impl("moe_route_out", &moe_route_out_cpu); }

}  // namespace glm52::moe
