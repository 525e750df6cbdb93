// Speculative verification math shared by the CPU twins and the CUDA kernels (DESIGN §2.1):
// the argmax order, greedy and sampled acceptance, the residual weights, and the one summation
// order the inverse-CDF sampler uses on both devices, so they emit the same tokens.
// Framework-free (host and device).
//
// Layout for one batch row b: draft [n] tokens d_0..d_{n-1}; target row j in [0, n] scores the
// token after d_{j-1} (row 0: after the last verified token); draft_probs row j in [0, n).
#pragma once

#include "common/host_device.h"
#include "spec/spec_philox.h"

#include <cfloat>
#include <cmath>

namespace glm52::spec {

// ---- greedy ------------------------------------------------------------------------------------

// The argmax order: larger value first, ties to the lower index, NaN above everything (the
// first NaN wins, like torch.argmax). A total order, so any reduction tree gives the same index.
GLM52_HD bool argmax_better(float v, int64_t i, float best_v, int64_t best_i) {
  const bool v_nan = v != v, best_nan = best_v != best_v;
  if (v_nan || best_nan) return v_nan && (!best_nan || i < best_i);
  return v > best_v || (v == best_v && i < best_i);
}

// Greedy acceptance once tokens[0..n] hold the target argmax a_0..a_n: d_j is accepted while
// d_j == a_j; the first mismatch emits a_j, otherwise the bonus a_n. tokens after the last
// emitted become -1. Returns the number emitted, in [1, n + 1].
template <typename DraftT>
GLM52_HD int32_t greedy_accept(const DraftT* draft, int32_t* tokens, int64_t n) {
  int64_t k = 0;
  while (k < n && static_cast<int64_t>(draft[k]) == tokens[k]) ++k;
  for (int64_t j = k + 1; j <= n; ++j) tokens[j] = -1;
  return static_cast<int32_t>(k + 1);
}

// ---- sampling: acceptance ----------------------------------------------------------------------

GLM52_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// Accept d with probability min(1, p / q): always when p >= q, else when u * q < p (u in [0, 1)),
// so p == q never rejects through rounding. A NaN p never accepts.
GLM52_HD bool accept_draft(float p, float q, float u) { return p >= q || mul_rn(u, q) < p; }

// Whether draft position j of a batch row passes its accept test (each position draws its own
// uniform, so the tests are independent: a warp can run them side by side). draft_probs ==
// nullptr means a deterministic draft (q = 1 at d_j). A token outside [0, V) is never accepted
// (it has no probability under the target).
template <typename DraftT>
GLM52_HD bool draft_accepted(const DraftT* draft, const float* draft_probs, const float* target_probs, int64_t j,
                             int64_t vocab, uint64_t seed, uint64_t offset, uint32_t b) {
  const int64_t d = static_cast<int64_t>(draft[j]);
  if (d < 0 || d >= vocab) return false;
  const float p = target_probs[j * vocab + d];
  const float q = draft_probs ? draft_probs[j * vocab + d] : 1.0f;
  return accept_draft(p, q, philox_uniform(seed, offset, b, static_cast<uint32_t>(j), Draw::kAccept));
}

// Number of accepted draft tokens k in [0, n]: the first position that fails its test.
template <typename DraftT>
GLM52_HD int64_t accepted_prefix(const DraftT* draft, const float* draft_probs, const float* target_probs, int64_t n,
                                 int64_t vocab, uint64_t seed, uint64_t offset, uint32_t b) {
  for (int64_t j = 0; j < n; ++j)
    if (!draft_accepted(draft, draft_probs, target_probs, j, vocab, seed, offset, b)) return j;
  return n;
}

// ---- sampling: what is sampled at the stop position k ------------------------------------------

// Sampled from weights w(v) >= 0 (unnormalized): after a rejection at k < n the residual
// max(p_k - q_k, 0) (q_k one-hot at d_k for a deterministic draft), after n acceptances the
// bonus p_n (q = 0). If the residual has no usable mass (only through rounding, or for probability
// rows that are not distributions), p_k itself; if that has none either, token 0.
enum class WeightMode : int { kResidual = 0, kTarget = 1 };

GLM52_HD float sample_weight(float p, float q, WeightMode mode) {
  return fmaxf(mode == WeightMode::kResidual ? p - q : p, 0.0f);  // fmaxf maps NaN to 0
}

GLM52_HD bool usable_mass(float total) { return total > 0.0f && total <= FLT_MAX; }

// Where the weights of the stop position k of one batch row come from.
struct StopRow {
  const float* p;  // [V] target probs at k
  const float* q;  // [V] draft probs at k, or nullptr (deterministic draft, or the bonus k == n)
  int64_t onehot;  // the deterministic draft's token d_k (q one-hot there), or -1
};

// draft_row [n], draft_probs_row [n, V] or nullptr, target_probs_row [n + 1, V].
template <typename DraftT>
GLM52_HD StopRow stop_row(const DraftT* draft_row, const float* draft_probs_row, const float* target_probs_row,
                          int64_t k, int64_t n, int64_t vocab) {
  const bool rejected = k < n;
  return {target_probs_row + k * vocab, rejected && draft_probs_row ? draft_probs_row + k * vocab : nullptr,
          rejected && !draft_probs_row ? static_cast<int64_t>(draft_row[k]) : -1};
}

// w(v) given p(v) and, when the row has draft probs, q(v) as loaded.
GLM52_HD float stop_weight(const StopRow& row, int64_t v, float p, float q_loaded, WeightMode mode) {
  return sample_weight(p, row.q ? q_loaded : (v == row.onehot ? 1.0f : 0.0f), mode);
}

// ---- sampling: the inverse-CDF summation order -------------------------------------------------
//
// A row of V weights is cut into tiles of 1024 (the last one zero-padded). A tile is summed as a
// 256-thread CUDA block sums it, and the CPU twin replays exactly that tree:
//   thread t owns x[4t..4t+3] and forms the running partials q_{t,i} = ((x0 + x1) + x2) + ...;
//   P_t = q_{t,3}; I = inclusive Kogge-Stone scan of P inside each warp of 32 (offsets 1..16,
//   I_l = I_{l-off} + I_l), then over the 8 warp totals the same way (offsets 1, 2, 4), and each
//   warp w > 0 adds warp w-1's scanned total: I_t = W_{w-1} + I_t;
//   element 4t+i has the inclusive value e = E_t + q_{t,i} with E_t = I_{t-1} (E_0 = 0);
//   the tile total is W_7, the last scanned warp total (every thread of the block holds it).
// The tile totals T_c are scanned by the same rule in chunks of 1024 tiles with a running carry:
// cum(c) = carry + e_c, carry += chunk total; S = the final carry; target = u * S.
// The sampled tile is the first c with T_c > 0 and cum(c) > target (none: the last c with
// T_c > 0); within it, with base = cum(c - 1) (0 for c = 0), the first v with w(v) > 0 and
// base + e_v > target (none: the last v with w(v) > 0). A zero-weight token is never sampled.
constexpr int kScanThreads = 256;
constexpr int kScanPerThread = 4;
constexpr int kScanTile = kScanThreads * kScanPerThread;
constexpr int kScanWarps = kScanThreads / 32;

GLM52_HD int64_t scan_tiles(int64_t n) { return ceil_div(n, kScanTile); }

// The most splits the greedy kernel cuts a logits row into: never fewer than 2048 logits per
// block, at most 65535 (the grid's y). Bounds its workspace whatever the GPU's SM count.
GLM52_HD int64_t greedy_max_splits(int64_t vocab) {
  return vocab / 2048 > 65535 ? 65535 : (vocab / 2048 > 1 ? vocab / 2048 : 1);
}

// Bytes of device workspace the verification kernels use at most (a caller may preallocate it):
// greedy, per logits row and split, an fp32 maximum and its int32 index; sampling, per batch row
// the fp32 total of each scan tile. Each part starts 16-byte aligned.
GLM52_HD int64_t spec_verify_workspace_bytes(int64_t batch, int64_t n, int64_t vocab, bool sampling) {
  if (sampling) return batch * scan_tiles(vocab) * 4;
  const int64_t part = ceil_div(batch * (n + 1) * greedy_max_splits(vocab) * 4, 16) * 16;
  return 2 * part;
}

// Host replay of the block scan: s[256] holds the thread partials P_t and becomes I_t; returns W_7.
inline float scan_block_partials_host(float* s) {
  for (int w = 0; w < kScanWarps; ++w)
    for (int off = 1; off < 32; off *= 2)
      for (int lane = 31; lane >= off; --lane) s[32 * w + lane] = s[32 * w + lane - off] + s[32 * w + lane];
  float totals[kScanWarps];
  for (int w = 0; w < kScanWarps; ++w) totals[w] = s[32 * w + 31];
  for (int off = 1; off < kScanWarps; off *= 2)
    for (int w = kScanWarps - 1; w >= off; --w) totals[w] = totals[w - off] + totals[w];
  for (int w = 1; w < kScanWarps; ++w)
    for (int lane = 0; lane < 32; ++lane) s[32 * w + lane] = totals[w - 1] + s[32 * w + lane];
  return totals[kScanWarps - 1];
}

// Host replay of one tile: x[1024] -> the inclusive values e[1024] (when e != nullptr) and the total.
inline float scan_tile_host(const float* x, float* e) {
  float partial[kScanThreads];
  for (int t = 0; t < kScanThreads; ++t) {
    const float* xt = x + kScanPerThread * t;
    partial[t] = ((xt[0] + xt[1]) + xt[2]) + xt[3];
  }
  const float total = scan_block_partials_host(partial);
  if (e != nullptr)
    for (int t = 0; t < kScanThreads; ++t) {
      const float* xt = x + kScanPerThread * t;
      const float excl = t == 0 ? 0.0f : partial[t - 1];
      float q = xt[0];
      e[4 * t] = excl + q;
      for (int i = 1; i < kScanPerThread; ++i) {
        q = q + xt[i];
        e[4 * t + i] = excl + q;
      }
    }
  return total;
}

// The host sampler: weight(v) -> w(v) >= 0 over [0, vocab), u in [0, 1). Returns the sampled
// index, or -1 when the weights have no usable mass (the caller then moves to the next mode).
// scratch: at least 2 * kScanTile + scan_tiles(vocab) floats.
template <class Weight>
int64_t sample_inverse_cdf_host(Weight&& weight, int64_t vocab, float u, float* scratch) {
  float* x = scratch;                  // one tile of weights (or of tile totals)
  float* e = scratch + kScanTile;      // its inclusive values
  float* tile_total = scratch + 2 * kScanTile;
  const int64_t tiles = scan_tiles(vocab);
  auto load = [&](const auto& value, int64_t first, int64_t count) {
    for (int64_t i = 0; i < kScanTile; ++i) x[i] = first + i < count ? value(first + i) : 0.0f;
  };
  for (int64_t c = 0; c < tiles; ++c) {
    load(weight, c * kScanTile, vocab);
    tile_total[c] = scan_tile_host(x, nullptr);
  }
  auto total_of = [&](int64_t c) { return tile_total[c]; };
  float carry = 0.0f;
  for (int64_t first = 0; first < tiles; first += kScanTile) {
    load(total_of, first, tiles);
    carry = carry + scan_tile_host(x, nullptr);
  }
  if (!usable_mass(carry)) return -1;
  const float target = mul_rn(u, carry);

  // The tile: first positive tile whose cumulative value passes the target.
  int64_t chosen = -1, last_positive = -1;
  float base = 0.0f, prev_cum = 0.0f;
  carry = 0.0f;
  for (int64_t first = 0; first < tiles && chosen < 0; first += kScanTile) {
    load(total_of, first, tiles);
    const float chunk_total = scan_tile_host(x, e);
    for (int64_t i = 0; i < kScanTile && first + i < tiles; ++i) {
      const float cum = carry + e[i];
      if (x[i] > 0.0f) {
        last_positive = first + i;
        if (cum > target) {
          chosen = first + i;
          base = prev_cum;
          break;
        }
      }
      prev_cum = cum;
    }
    carry = carry + chunk_total;
  }
  const bool passed = chosen >= 0;
  if (!passed) chosen = last_positive;

  // The token inside it: first positive weight whose cumulative value passes the target.
  load(weight, chosen * kScanTile, vocab);
  scan_tile_host(x, e);
  int64_t last = -1;
  for (int64_t i = 0; i < kScanTile; ++i) {
    if (x[i] > 0.0f) {
      if (passed && base + e[i] > target) return chosen * kScanTile + i;
      last = i;
    }
  }
  return chosen * kScanTile + last;
}

}  // namespace glm52::spec
