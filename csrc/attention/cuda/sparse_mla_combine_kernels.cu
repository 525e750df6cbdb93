// LSE merge of split-KV sparse MLA decode (attention_split.h, attention_softmax.h): one CTA per
// (query row, head); a row whose batch row ran in one piece was written by the split kernel and
// is skipped. Thread t merges output columns [4t, 4t + 4) of every piece (16-byte loads).
#include "attention/attention_cache.h"
#include "attention/attention_softmax.h"
#include "attention/attention_split.h"
#include "attention/cuda/attention_launch.h"

#include <cuda_bf16.h>

namespace glm52::attention {
namespace {

constexpr int kCombineThreads = kValueDim / 4;  // 128

__global__ void __launch_bounds__(kCombineThreads) sparse_mla_combine_kernel(SparseMlaArgs a, SparseSplitArgs s) {
  const int64_t row = blockIdx.x, h = blockIdx.y, b = row / s.sq, token = row % s.sq;
  const SplitSlots slots = split_row_slots(s.num_splits, b, split_max_slots(s.batch, s.parts));
  if (slots.count <= 1) return;
  auto entry = [&](int64_t i) { return ((slots.first + i) * s.sq + token) * a.heads + h; };
  float lse_max = neg_inf();
  for (int64_t i = 0; i < slots.count; ++i) lse_max = fmaxf(lse_max, s.part_lse[entry(i)]);
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  float weight_sum = 0.0f;
  for (int64_t i = 0; i < slots.count; ++i) {
    const float w = lse_merge_weight(s.part_lse[entry(i)], lse_max);
    if (w == 0.0f) continue;
    weight_sum += w;
    const float4 o = reinterpret_cast<const float4*>(s.part_out + entry(i) * kValueDim)[threadIdx.x];
    acc.x = fmaf(w, o.x, acc.x);
    acc.y = fmaf(w, o.y, acc.y);
    acc.z = fmaf(w, o.z, acc.z);
    acc.w = fmaf(w, o.w, acc.w);
  }
  const float inv = weight_sum > 0.0f ? 1.0f / weight_sum : 0.0f;
  __nv_bfloat162* out = reinterpret_cast<__nv_bfloat162*>(a.out + (row * a.heads + h) * kValueDim) + 2 * threadIdx.x;
  out[0] = __floats2bfloat162_rn(acc.x * inv, acc.y * inv);
  out[1] = __floats2bfloat162_rn(acc.z * inv, acc.w * inv);
  if (threadIdx.x == 0) a.lse[row * a.heads + h] = lse_merge_total(lse_max, weight_sum);
}

}  // namespace

cudaError_t launch_sparse_mla_combine(const SparseMlaArgs& a, const SparseSplitArgs& s, cudaStream_t stream) {
  if (a.rows == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(a.rows), static_cast<unsigned>(a.heads));
  sparse_mla_combine_kernel<<<grid, kCombineThreads, 0, stream>>>(a, s);
  return cudaGetLastError();
}

}  // namespace glm52::attention
