// Online softmax over key tiles, shared by the sparse MLA CPU twins and CUDA kernels.
//
// Scores are kept in the log2 domain (x = q.k * sm_scale * log2(e)) so both sides use exp2. Per
// (query, head) the state is the running max m of the x seen so far and l = sum 2^(x - m); after
// each tile the output accumulator is rescaled by 2^(m_old - m_new). A (query, head) that saw no
// valid key keeps m = -inf, l = 0: its output is 0 and its lse -inf.
//
// lse convention (the op's second output): the natural log of sum_t exp(q.k_t * sm_scale) over the
// valid selected keys t, i.e. lse = (m + log2(l)) * ln(2); -inf when no key is valid.
#pragma once

#include "common/host_device.h"

#include <cmath>

namespace glm52::attention {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

GLM52_HD float neg_inf() { return -INFINITY; }

GLM52_HD float fast_exp2(float x) {
#if defined(__CUDA_ARCH__)
  return exp2f(x);
#else
  return std::exp2(x);
#endif
}

struct SoftmaxState {
  float m;  // running max of the log2-domain scores (-inf before the first valid key)
  float l;  // sum of 2^(x - m)
};

GLM52_HD SoftmaxState softmax_init() { return {neg_inf(), 0.0f}; }

// New running max after a tile whose largest score is tile_max (-inf for an all-invalid tile).
GLM52_HD float softmax_next_max(const SoftmaxState& s, float tile_max) { return s.m > tile_max ? s.m : tile_max; }

// Factor that rescales the accumulator (and l) from max m_old to m_new; 0 when nothing was seen
// (m_old = -inf), and 1 while both are -inf (avoids -inf - -inf = NaN).
GLM52_HD float softmax_rescale(float m_old, float m_new) {
  return m_old == m_new ? 1.0f : fast_exp2(m_old - m_new);
}

// Weight of one score under max m (0 for an invalid key, whose score is -inf).
GLM52_HD float softmax_weight(float x, float m) { return x == neg_inf() ? 0.0f : fast_exp2(x - m); }

// Final output scale 1/l (0 when nothing was seen, so the output is exactly 0).
GLM52_HD float softmax_out_scale(const SoftmaxState& s) { return s.l > 0.0f ? 1.0f / s.l : 0.0f; }

GLM52_HD float softmax_lse(const SoftmaxState& s) {
#if defined(__CUDA_ARCH__)
  return s.l > 0.0f ? (s.m + log2f(s.l)) * kLn2 : neg_inf();
#else
  return s.l > 0.0f ? (s.m + std::log2(s.l)) * kLn2 : neg_inf();
#endif
}

// Merging partial results by log-sum-exp (split-KV decode): partial i is a normalized output o_i
// with its lse_i (natural log, -inf when it saw no valid key). The whole has lse = ln sum_i
// exp(lse_i) and o = sum_i w_i o_i / sum_i w_i with w_i = exp(lse_i - max_i lse_i): the weight
// below, 0 for an empty partial (and every weight 0 when all are empty: o = 0, lse = -inf).
GLM52_HD float lse_merge_weight(float lse_i, float lse_max) {
  return lse_i == neg_inf() ? 0.0f : fast_exp2((lse_i - lse_max) * kLog2e);
}

GLM52_HD float lse_merge_total(float lse_max, float weight_sum) {
#if defined(__CUDA_ARCH__)
  return weight_sum > 0.0f ? lse_max + log2f(weight_sum) * kLn2 : neg_inf();
#else
  return weight_sum > 0.0f ? lse_max + std::log2(weight_sum) * kLn2 : neg_inf();
#endif
}

}  // namespace glm52::attention
