// CUDA kernels of speculative verification. Memory-bound; the math (argmax order, acceptance,
// Philox draws, the inverse-CDF summation tree) is spec_verify.h's, shared with the CPU twins.
//
// Greedy: one read of the logits. Kernel 1 splits every [V] row over `splits` blocks, each
// writing its (max, index); kernel 2 (one warp per batch row) merges the splits and runs the
// acceptance. Sampling reads only the stop row of each batch row (the accept tests touch one
// probability per draft position): kernel 1 recomputes the stop position k with one warp ballot
// and writes the sums of the stop row's 1024-wide tiles; kernel 2 (one block per batch row)
// scans the tile sums, finds the tile holding the target and scans that tile again.
#include "spec/cuda/spec_verify_launch.h"
#include "spec/spec_verify.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>

namespace glm52::spec {
namespace {

constexpr int kThreads = kScanThreads;  // every block: the summation tree is defined for 256 threads
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ void argmax_merge(float& best, int32_t& best_i, float v, int32_t i) {
  if (argmax_better(v, i, best, best_i)) best = v, best_i = i;
}

// ---- greedy ------------------------------------------------------------------------------------

// Block (row, split): the argmax of logits[row, span of split]; VEC elements per 16-byte load
// (VEC = 1: any size and alignment).
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) spec_greedy_split_argmax_kernel(GreedyVerifyArgs a) {
  const int64_t row = blockIdx.x;
  const int64_t span = ceil_div(ceil_div(a.vocab, a.splits), VEC) * VEC;
  const T* x = static_cast<const T*>(a.logits) + row * a.vocab;
  float best = -INFINITY;
  int32_t best_i = static_cast<int32_t>(a.vocab);  // loses to every real element
  for (int64_t split = blockIdx.y; split < a.splits; split += gridDim.y) {
    const int64_t end = a.vocab < (split + 1) * span ? a.vocab : (split + 1) * span;
    for (int64_t i = split * span + int64_t{threadIdx.x} * VEC; i < end; i += int64_t{kThreads} * VEC) {
      if constexpr (VEC > 1) {
        static_assert(VEC * sizeof(T) == 16, "one 16-byte load per step");
        const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(x + i));  // read once: stream past L2
        const T* v = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < VEC; ++j) argmax_merge(best, best_i, static_cast<float>(v[j]), static_cast<int32_t>(i + j));
      } else {
        argmax_merge(best, best_i, static_cast<float>(x[i]), static_cast<int32_t>(i));
      }
    }
    // The order is total, so the butterfly (any tree) gives the same pair in every lane.
#pragma unroll
    for (int off = 16; off > 0; off /= 2) {
      const float v = __shfl_xor_sync(kFullMask, best, off);
      const int32_t i = __shfl_xor_sync(kFullMask, best_i, off);
      argmax_merge(best, best_i, v, i);
    }
    __shared__ float warp_best[kThreads / 32];
    __shared__ int32_t warp_index[kThreads / 32];
    if ((threadIdx.x & 31) == 0) warp_best[threadIdx.x / 32] = best, warp_index[threadIdx.x / 32] = best_i;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kThreads / 32; ++w) argmax_merge(best, best_i, warp_best[w], warp_index[w]);
      a.partial_value[row * a.splits + split] = best;
      a.partial_index[row * a.splits + split] = best_i;
    }
    __syncthreads();
    best = -INFINITY;
    best_i = static_cast<int32_t>(a.vocab);
  }
}

// One warp per batch row: lane j merges the splits of position j, then lane 0 accepts.
template <typename DraftT>
__global__ void __launch_bounds__(32) spec_greedy_accept_kernel(GreedyVerifyArgs a) {
  const int64_t b = blockIdx.x;
  int32_t* tokens = a.tokens + b * (a.n + 1);
  for (int64_t j = threadIdx.x; j <= a.n; j += 32) {
    const int64_t row = b * (a.n + 1) + j;
    float best = -INFINITY;
    int32_t best_i = static_cast<int32_t>(a.vocab);
    for (int64_t s = 0; s < a.splits; ++s)
      argmax_merge(best, best_i, a.partial_value[row * a.splits + s], a.partial_index[row * a.splits + s]);
    tokens[j] = best_i;
  }
  __syncwarp();  // orders the token writes before lane 0 reads them
  if (threadIdx.x == 0) a.num_emitted[b] = greedy_accept(static_cast<const DraftT*>(a.draft) + b * a.n, tokens, a.n);
}

// ---- sampling ----------------------------------------------------------------------------------

struct ScanShared {
  float warp_total[kScanWarps];
  float warp_last[kScanWarps];
  int32_t reduce[kScanWarps];
};

struct BlockScan {
  float inclusive;  // I_t
  float exclusive;  // E_t (with kExclusive)
  float total;      // W_7: the tile total
};

// The block scan of spec_verify.h (replayed by scan_block_partials_host): thread t's partial P_t.
template <bool kExclusive>
__device__ BlockScan block_scan(float partial, ScanShared& sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  float x = partial;
#pragma unroll
  for (int off = 1; off < 32; off *= 2) {
    const float up = __shfl_up_sync(kFullMask, x, off);
    if (lane >= off) x = up + x;
  }
  if (lane == 31) sh.warp_total[warp] = x;
  __syncthreads();
  if (warp == 0) {
    float t = lane < kScanWarps ? sh.warp_total[lane] : 0.0f;
#pragma unroll
    for (int off = 1; off < kScanWarps; off *= 2) {
      const float up = __shfl_up_sync(kFullMask, t, off);
      if (lane >= off) t = up + t;
    }
    if (lane < kScanWarps) sh.warp_total[lane] = t;
  }
  __syncthreads();
  BlockScan s{warp > 0 ? sh.warp_total[warp - 1] + x : x, 0.0f, sh.warp_total[kScanWarps - 1]};
  if constexpr (kExclusive) {
    const float up = __shfl_up_sync(kFullMask, s.inclusive, 1);
    if (lane == 31) sh.warp_last[warp] = s.inclusive;
    __syncthreads();
    s.exclusive = lane > 0 ? up : (warp > 0 ? sh.warp_last[warp - 1] : 0.0f);
  }
  __syncthreads();  // the shared slots may be reused by the next scan
  return s;
}

__device__ int32_t block_min(int32_t v, ScanShared& sh) {
  v = __reduce_min_sync(kFullMask, v);
  if ((threadIdx.x & 31) == 0) sh.reduce[threadIdx.x / 32] = v;
  __syncthreads();
  int32_t r = sh.reduce[0];
  for (int w = 1; w < kScanWarps; ++w) r = min(r, sh.reduce[w]);
  __syncthreads();
  return r;
}

__device__ int32_t block_max(int32_t v, ScanShared& sh) {
  v = __reduce_max_sync(kFullMask, v);
  if ((threadIdx.x & 31) == 0) sh.reduce[threadIdx.x / 32] = v;
  __syncthreads();
  int32_t r = sh.reduce[0];
  for (int w = 1; w < kScanWarps; ++w) r = max(r, sh.reduce[w]);
  __syncthreads();
  return r;
}

// The Philox key and stream of a launch: read from the device when given as tensors, so a replayed
// CUDA graph uses the offset the graph itself advanced. (Kept apart from the kernel parameter:
// writing to it would copy the whole argument struct to local memory.)
struct Rng {
  uint64_t seed, offset;
};

__device__ __forceinline__ Rng launch_rng(const SamplingVerifyArgs& a) {
  return {a.seed_ptr ? static_cast<uint64_t>(*a.seed_ptr) : a.seed,
          a.offset_ptr ? static_cast<uint64_t>(*a.offset_ptr) : a.offset};
}

// The stop position k of batch row b: warp 0 runs 32 accept tests at a time, the first failure
// (ballot) stops. Every thread of the block gets k.
template <typename DraftT>
__device__ int64_t stop_position(const SamplingVerifyArgs& a, Rng rng, int64_t b, int64_t& shared_k) {
  if (threadIdx.x < 32) {
    const DraftT* d = static_cast<const DraftT*>(a.draft) + b * a.n;
    const float* q = a.draft_probs ? a.draft_probs + b * a.n * a.vocab : nullptr;
    const float* p = a.target_probs + b * (a.n + 1) * a.vocab;
    int64_t k = a.n;
    for (int64_t j0 = 0; j0 < a.n; j0 += 32) {
      const int64_t j = j0 + threadIdx.x;
      const bool rejected = j < a.n && !draft_accepted(d, q, p, j, a.vocab, rng.seed, rng.offset, static_cast<uint32_t>(b));
      const unsigned mask = __ballot_sync(kFullMask, rejected);
      if (mask) {
        k = j0 + __ffs(mask) - 1;
        break;
      }
    }
    if (threadIdx.x == 0) shared_k = k;
  }
  __syncthreads();
  return shared_k;
}

template <typename DraftT>
__device__ StopRow block_stop_row(const SamplingVerifyArgs& a, int64_t b, int64_t k) {
  return stop_row(static_cast<const DraftT*>(a.draft) + b * a.n,
                  a.draft_probs ? a.draft_probs + b * a.n * a.vocab : nullptr,
                  a.target_probs + b * (a.n + 1) * a.vocab, k, a.n, a.vocab);
}

// This thread's 4 weights of a tile (zeros past the vocabulary). kVec: V % 4 == 0 and 16-byte
// aligned rows, so a thread's 4 elements are all in range or all out.
template <bool kVec>
__device__ __forceinline__ void load_tile_weights(const StopRow& r, int64_t vocab, int64_t tile, WeightMode mode,
                                                  float (&w)[kScanPerThread]) {
  const int64_t v0 = tile * kScanTile + kScanPerThread * int64_t{threadIdx.x};
  float p[kScanPerThread] = {}, q[kScanPerThread] = {};
  if constexpr (kVec) {
    if (v0 < vocab) {
      const float4 pv = __ldg(reinterpret_cast<const float4*>(r.p + v0));
      p[0] = pv.x, p[1] = pv.y, p[2] = pv.z, p[3] = pv.w;
      if (r.q) {
        const float4 qv = __ldg(reinterpret_cast<const float4*>(r.q + v0));
        q[0] = qv.x, q[1] = qv.y, q[2] = qv.z, q[3] = qv.w;
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kScanPerThread; ++i)
      if (v0 + i < vocab) {
        p[i] = __ldg(r.p + v0 + i);
        if (r.q) q[i] = __ldg(r.q + v0 + i);
      }
  }
#pragma unroll
  for (int i = 0; i < kScanPerThread; ++i) w[i] = v0 + i < vocab ? stop_weight(r, v0 + i, p[i], q[i], mode) : 0.0f;
}

// The running partials q_{t,i} of a thread's 4 values (left to right).
__device__ __forceinline__ void running_partials(const float (&x)[kScanPerThread], float (&q)[kScanPerThread]) {
  q[0] = x[0];
#pragma unroll
  for (int i = 1; i < kScanPerThread; ++i) q[i] = q[i - 1] + x[i];
}

// Block (b, tile group): the residual-weight sums of the stop row's tiles, kTiles tiles per step
// with all their loads issued first.
template <typename DraftT, bool kVec, int kTiles>
__global__ void __launch_bounds__(kThreads) spec_sampling_tile_totals_kernel(SamplingVerifyArgs a) {
  __shared__ ScanShared sh;
  __shared__ int64_t shared_k;
  const int64_t b = blockIdx.x;
  const StopRow r = block_stop_row<DraftT>(a, b, stop_position<DraftT>(a, launch_rng(a), b, shared_k));
  const int64_t tiles = scan_tiles(a.vocab);
  for (int64_t first = int64_t{blockIdx.y} * kTiles; first < tiles; first += int64_t{gridDim.y} * kTiles) {
    float w[kTiles][kScanPerThread];
#pragma unroll
    for (int g = 0; g < kTiles; ++g) load_tile_weights<kVec>(r, a.vocab, first + g, WeightMode::kResidual, w[g]);
#pragma unroll
    for (int g = 0; g < kTiles; ++g) {
      if (first + g >= tiles) break;  // block-uniform
      float q[kScanPerThread];
      running_partials(w[g], q);
      const BlockScan s = block_scan<false>(q[kScanPerThread - 1], sh);
      if (threadIdx.x == 0) a.tile_totals[b * tiles + first + g] = s.total;
    }
  }
}

// The sampler of spec_verify.h over the tile sums in `totals` (see sample_inverse_cdf_host).
// Returns -1 when the weights have no usable mass. Block-uniform result.
template <bool kVec>
__device__ int64_t sample_from_tile_totals(const StopRow& r, const float* totals, int64_t tiles, int64_t vocab,
                                           float u, WeightMode mode, ScanShared& sh, float* cum) {
  auto load_totals = [&](int64_t first, float (&x)[kScanPerThread]) {
#pragma unroll
    for (int i = 0; i < kScanPerThread; ++i) {
      const int64_t c = first + kScanPerThread * threadIdx.x + i;
      x[i] = c < tiles ? totals[c] : 0.0f;
    }
  };
  float carry = 0.0f;
  for (int64_t first = 0; first < tiles; first += kScanTile) {
    float x[kScanPerThread], q[kScanPerThread];
    load_totals(first, x);
    running_partials(x, q);
    carry = carry + block_scan<false>(q[kScanPerThread - 1], sh).total;
  }
  if (!usable_mass(carry)) return -1;
  const float target = mul_rn(u, carry);

  // The tile: the first positive tile whose cumulative value passes the target.
  int64_t chosen = -1, last_positive = -1;
  float base = 0.0f, prev_cum = 0.0f;
  carry = 0.0f;
  for (int64_t first = 0; first < tiles && chosen < 0; first += kScanTile) {
    float x[kScanPerThread], q[kScanPerThread];
    load_totals(first, x);
    running_partials(x, q);
    const BlockScan s = block_scan<true>(q[kScanPerThread - 1], sh);
    int32_t candidate = INT_MAX, positive = -1;
#pragma unroll
    for (int i = 0; i < kScanPerThread; ++i) {
      const int32_t c = kScanPerThread * threadIdx.x + i;
      const float value = carry + (s.exclusive + q[i]);
      cum[c] = value;
      if (x[i] > 0.0f) {
        positive = c;
        if (value > target && candidate == INT_MAX) candidate = c;
      }
    }
    candidate = block_min(candidate, sh);  // its barriers also publish cum[]
    positive = block_max(positive, sh);
    if (positive >= 0) last_positive = first + positive;
    if (candidate != INT_MAX) {
      chosen = first + candidate;
      base = candidate > 0 ? cum[candidate - 1] : prev_cum;
    }
    prev_cum = cum[kScanTile - 1];
    carry = carry + s.total;
    __syncthreads();  // cum[] is rewritten by the next chunk
  }
  const bool passed = chosen >= 0;
  if (!passed) chosen = last_positive;

  // The token inside it: the first positive weight whose cumulative value passes the target.
  float w[kScanPerThread], q[kScanPerThread];
  load_tile_weights<kVec>(r, vocab, chosen, mode, w);
  running_partials(w, q);
  const BlockScan s = block_scan<true>(q[kScanPerThread - 1], sh);
  int32_t candidate = INT_MAX, positive = -1;
#pragma unroll
  for (int i = 0; i < kScanPerThread; ++i) {
    const int32_t v = kScanPerThread * threadIdx.x + i;
    if (w[i] > 0.0f) {
      positive = v;
      if (passed && base + (s.exclusive + q[i]) > target && candidate == INT_MAX) candidate = v;
    }
  }
  candidate = block_min(candidate, sh);
  positive = block_max(positive, sh);
  return chosen * kScanTile + (candidate != INT_MAX ? candidate : positive);
}

// One block per batch row: writes the accepted prefix, samples the token at the stop position.
template <typename DraftT, bool kVec>
__global__ void __launch_bounds__(kThreads) spec_sampling_resample_kernel(SamplingVerifyArgs a) {
  __shared__ ScanShared sh;
  __shared__ float cum[kScanTile];
  __shared__ int64_t shared_k;
  const int64_t b = blockIdx.x;
  const int64_t k = stop_position<DraftT>(a, launch_rng(a), b, shared_k);
  const DraftT* d = static_cast<const DraftT*>(a.draft) + b * a.n;
  int32_t* tokens = a.tokens + b * (a.n + 1);
  for (int64_t j = threadIdx.x; j <= a.n; j += kThreads)
    if (j != k) tokens[j] = j < k ? static_cast<int32_t>(d[j]) : -1;
  if (threadIdx.x == 0) a.num_emitted[b] = static_cast<int32_t>(k + 1);

  const StopRow r = block_stop_row<DraftT>(a, b, k);
  const int64_t tiles = scan_tiles(a.vocab);
  float* totals = a.tile_totals + b * tiles;
  const Rng rng = launch_rng(a);  // read again here: not live across the stop-row setup (no stack)
  const float u = philox_uniform(rng.seed, rng.offset, static_cast<uint32_t>(b), static_cast<uint32_t>(k), Draw::kSample);
  int64_t token = sample_from_tile_totals<kVec>(r, totals, tiles, a.vocab, u, WeightMode::kResidual, sh, cum);
  if (token < 0) {
    // Rare (rounding, or rows that are not distributions): redo the sums with p_k itself, here.
    for (int64_t c = 0; c < tiles; ++c) {
      float w[kScanPerThread], q[kScanPerThread];
      load_tile_weights<kVec>(r, a.vocab, c, WeightMode::kTarget, w);
      running_partials(w, q);
      const BlockScan s = block_scan<false>(q[kScanPerThread - 1], sh);
      if (threadIdx.x == 0) totals[c] = s.total;
    }
    __syncthreads();  // the sums are read by every thread next
    token = sample_from_tile_totals<kVec>(r, totals, tiles, a.vocab, u, WeightMode::kTarget, sh, cum);
  }
  if (threadIdx.x == 0) tokens[k] = static_cast<int32_t>(token < 0 ? 0 : token);
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename DraftT, typename T>
cudaError_t launch_greedy_typed(const GreedyVerifyArgs& a, cudaStream_t stream) {
  constexpr int kVec = 16 / sizeof(T);
  const dim3 grid(static_cast<unsigned>(a.batch * (a.n + 1)), static_cast<unsigned>(std::min(a.splits, kMaxGridY)));
  if ((a.vocab * int64_t{sizeof(T)}) % 16 == 0 && aligned16(a.logits))
    spec_greedy_split_argmax_kernel<T, kVec><<<grid, kThreads, 0, stream>>>(a);
  else
    spec_greedy_split_argmax_kernel<T, 1><<<grid, kThreads, 0, stream>>>(a);
  spec_greedy_accept_kernel<DraftT><<<static_cast<unsigned>(a.batch), 32, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename DraftT>
cudaError_t launch_greedy_draft(const GreedyVerifyArgs& a, cudaStream_t stream) {
  switch (a.logits_dtype) {
    case DType::kFloat32: return launch_greedy_typed<DraftT, float>(a, stream);
    case DType::kFloat16: return launch_greedy_typed<DraftT, __half>(a, stream);
    case DType::kBFloat16: return launch_greedy_typed<DraftT, __nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename DraftT, bool kVec>
cudaError_t launch_sampling_typed(const SamplingVerifyArgs& a, int sm_count, cudaStream_t stream) {
  const int64_t tiles = scan_tiles(a.vocab);
  // Few tiles in all: one tile per block, to spread the row over the GPU; many: four per block,
  // so each thread has 16-32 loads in flight.
  const bool wide = a.batch * tiles >= 16 * int64_t{sm_count};
  const int64_t per_block = wide ? 4 : 1;
  const dim3 grid(static_cast<unsigned>(a.batch), static_cast<unsigned>(std::min(ceil_div(tiles, per_block), kMaxGridY)));
  if (wide)
    spec_sampling_tile_totals_kernel<DraftT, kVec, 4><<<grid, kThreads, 0, stream>>>(a);
  else
    spec_sampling_tile_totals_kernel<DraftT, kVec, 1><<<grid, kThreads, 0, stream>>>(a);
  spec_sampling_resample_kernel<DraftT, kVec><<<static_cast<unsigned>(a.batch), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename DraftT>
cudaError_t launch_sampling_draft(const SamplingVerifyArgs& a, int sm_count, cudaStream_t stream) {
  const bool vec = a.vocab % 4 == 0 && aligned16(a.target_probs) && (!a.draft_probs || aligned16(a.draft_probs));
  return vec ? launch_sampling_typed<DraftT, true>(a, sm_count, stream)
             : launch_sampling_typed<DraftT, false>(a, sm_count, stream);
}

}  // namespace

cudaError_t launch_spec_verify_greedy(const GreedyVerifyArgs& a, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  return a.draft_int64 ? launch_greedy_draft<int64_t>(a, stream) : launch_greedy_draft<int32_t>(a, stream);
}

cudaError_t launch_spec_verify_sampling(const SamplingVerifyArgs& a, int sm_count, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  return a.draft_int64 ? launch_sampling_draft<int64_t>(a, sm_count, stream)
                       : launch_sampling_draft<int32_t>(a, sm_count, stream);
}

}  // namespace glm52::spec
