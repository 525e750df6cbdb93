// Counter-based Philox 4x32-10 (Salmon et al., SC'11; the Random123 definition), shared by the CPU
// twins and the CUDA kernels so both draw the same numbers: speculative sampling on either device
// gives the same tokens for the same (seed, offset). Framework-free (host and device).
#pragma once

#include "common/host_device.h"

namespace glm52::spec {

struct Philox4x32 {
  uint32_t x[4];
};

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // key schedule (Weyl)

GLM52_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t product = static_cast<uint64_t>(a) * b;
  lo = static_cast<uint32_t>(product);
  hi = static_cast<uint32_t>(product >> 32);
#endif
}

// Ten rounds; the key is bumped between rounds (Random123's philox4x32_R with R = 10).
GLM52_HD Philox4x32 philox4x32_10(Philox4x32 ctr, uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kPhiloxW0;
      k1 += kPhiloxW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kPhiloxM0, ctr.x[0], hi0, lo0);
    mulhilo32(kPhiloxM1, ctr.x[2], hi1, lo1);
    ctr = {{hi1 ^ ctr.x[1] ^ k0, lo1, hi0 ^ ctr.x[3] ^ k1, lo0}};
  }
  return ctr;
}

// What a uniform is drawn for; part of the counter, so the two never share a number.
enum class Draw : uint32_t { kAccept = 0, kSample = 1 };

// The uniform in [0, 1) for (row, position, purpose) of the call keyed by (seed, offset):
// key = seed (64 bits), counter = {row, 2 * position + purpose, offset low, offset high}; the top
// 24 bits of the first output word, so every value is an exact fp32 multiple of 2^-24.
GLM52_HD float philox_uniform(uint64_t seed, uint64_t offset, uint32_t row, uint32_t position, Draw draw) {
  const Philox4x32 ctr = {{row, 2u * position + static_cast<uint32_t>(draw), static_cast<uint32_t>(offset),
                           static_cast<uint32_t>(offset >> 32)}};
  const Philox4x32 out = philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  return static_cast<float>(out.x[0] >> 8) * 0x1p-24f;
}

}  // namespace glm52::spec
